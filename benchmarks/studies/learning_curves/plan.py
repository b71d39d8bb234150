"""The study's YAML file as dataclasses: its settings, each with sizes, seeds, a training schedule and heads.

Every number a run depends on is here (or in the data recipe it names), so the run's key (`RunSpec.key`, a hash
of its options) changes with any of them and a finished run is never retrained for another configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from benchmarks.studies.spec import RunSpec, check_name, read_yaml_config

KINDS = ("realdata", "synthetic", "realdata_finetune")
ALL = "all"  # a training size: every training pair
# the training pool of the frozen real-data setting: the real-data study's whole training file (its run key
# names it, so runs on another pool are never taken for these)
REALDATA_POOL = "train"
# the fine-tuned setting's pool: the whole of the study's 1,000-pair fine-tuning sample `ft_train` (itself the
# first 1,000 pairs of the training file); a backbone pass per step keeps it that small on a CPU
FINETUNE_POOL = 1000


@dataclass
class HeadPlan:
    """One model of the curves: a head preset, its learning rate and beta, whether it reads the setting's labels
    (objective labels on real data, per-objective ratings in the synthetic world), and any further training
    options (`vrm train` names: `objective_label_weight`, `rating_weight_coef`, `ensemble_members`, ...)."""

    name: str
    head_type: str
    learning_rate: float
    beta: float = 0.01
    labels: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedule:
    """Optimizer steps of a run of n pairs: max(ceil(epochs * n / batch_size), min_steps), so the smallest
    subsets are trained to convergence rather than for a handful of steps."""

    epochs: float = 4.0
    min_steps: int = 200
    batch_size: int = 64

    def steps(self, n: int) -> int:
        return max(math.ceil(self.epochs * n / self.batch_size), self.min_steps)


@dataclass
class SettingPlan:
    name: str
    kind: str  # realdata (frozen MiniLM), synthetic (frozen MiniLM), realdata_finetune (MiniLM end to end)
    sizes: list[int | str]
    seeds: list[int]
    heads: list[HeadPlan]
    schedule: Schedule = field(default_factory=Schedule)
    train_pairs: int = 5000  # synthetic only: the world's training pairs (its "all")
    test_pairs: int = 400  # synthetic only: pairs per test split
    notes: str = ""


@dataclass
class StudyPlan:
    settings: list[SettingPlan]
    data_dir: str = "../shared/data"  # relative to the repository root
    notes: str = ""


def load_plan(path: str) -> StudyPlan:
    """Read and check the YAML; an error names the file and the field."""
    plan = read_yaml_config(path, StudyPlan, "learning-curve study")
    names = [s.name for s in plan.settings]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: setting names must be distinct, got {names}")
    for setting in plan.settings:
        check_name(setting.name, "setting name", path)
        if setting.kind not in KINDS:
            raise ValueError(
                f"{path}: setting {setting.name}: kind must be one of {KINDS}, got {setting.kind!r}"
            )
        for size in setting.sizes:
            if not (size == ALL or (isinstance(size, int) and size > 0)):
                raise ValueError(
                    f"{path}: setting {setting.name}: size {size!r} is not a positive int or 'all'"
                )
        heads = [h.name for h in setting.heads]
        if len(set(heads)) != len(heads):
            raise ValueError(f"{path}: setting {setting.name}: head names must be distinct, got {heads}")
        for head in heads:
            check_name(head, "head name", path)
    return plan


def size_value(size: int | str, available: int) -> int:
    """The number of training pairs of a size ('all': every one); a size above what exists is an error."""
    if size == ALL:
        return available
    if size > available:
        raise ValueError(f"training size {size} is more than the {available} training pairs")
    return int(size)


def run_spec(setting: SettingPlan, head: HeadPlan, n: int, seed: int) -> RunSpec:
    """The run of `head` on the first `n` pairs of seed `seed`'s ordering (its key hashes every option)."""
    options = {
        "setting": setting.name,
        "kind": setting.kind,
        "n": n,
        "head_type": head.head_type,
        "learning_rate": head.learning_rate,
        "beta": head.beta,
        "labels": head.labels,
        "steps": setting.schedule.steps(n),
        "batch_size": setting.schedule.batch_size,
        **head.options,
    }
    if setting.kind == "synthetic":
        options["world"] = [setting.train_pairs, setting.test_pairs]
    if setting.kind == "realdata":
        options["pool"] = REALDATA_POOL
    if setting.kind == "realdata_finetune":
        options["pool"] = f"ft_train[:{FINETUNE_POOL}]"
    return RunSpec(head.name, seed, options)
