"""What a run of the real-data study is (`RunSpec`, with its resumable key) and which runs it makes, as data.

The study's `RunSpec` names a run by typed fields (setting, backbone, head, the head's hyperparameters); its key
hashes the fields that differ from their defaults (`benchmarks.studies.spec.run_key`), and `runner.train_options`
turns it into the training options of `benchmarks.studies.training`.

The sweep grids, the ablations of vrm and the variants of the fine-tuned setting are declarative: each is a
set of `RunSpec` field changes (`Variant`), applied to the configuration the sweep chose for its head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from benchmarks.studies.spec import run_key

from .config import HEADS


@dataclass(frozen=True)
class RunSpec:
    """One training run and its evaluation. `learning_rate` is the head's (frozen) or the backbone's (finetune)."""

    setting: str  # frozen | frozen_subset | finetune
    backbone: str
    head: str
    seed: int
    learning_rate: float
    group: str = "main"  # sweep | main | shift | ablation
    train: str = "train"
    beta: float = 0.01  # beta_w = beta_z
    num_objectives: int | None = None
    feature_dim: int = 16
    num_samples: int = 4
    prior_concentration: float = 1.0
    weight_posterior: str | None = None
    objective_labels: bool = True  # moe / vrm: supervise the first two objectives with RMB's `objective`
    epochs: float = 4.0
    batch_size: int = 64
    use_peft: bool = False  # LoRA (r 16) instead of full fine-tuning
    prompt_state_gradient: bool = True  # False: --no_prompt_state_gradient (h_x detached)
    objective_label_weight: float = 0.0  # > 0: the `objective` label also trains the weights (-E_q[log w_o])
    bf16: bool = False
    max_length: int | None = None  # None: the study's max_length
    label: str = ""  # a readable name for tables (e.g. "K=8")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        """A spec from a result file: fields added since it was written get their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"run spec with unknown fields {sorted(unknown)}: {values}")
        return cls(**values)

    @property
    def uses_objectives(self) -> bool:
        return self.head in ("moe", "vrm") and self.objective_labels

    @property
    def key(self) -> str:
        """Hash of the fields that differ from their defaults: a new option never renames earlier runs."""
        defaults = RunSpec(setting="", backbone="", head="", seed=0, learning_rate=0.0)
        values = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("group", "label")
            and (k in ("setting", "backbone", "head", "seed", "learning_rate") or v != getattr(defaults, k))
        }
        return run_key(self.head, self.seed, values)

    @property
    def config(self) -> str:
        """The hyperparameters that define a configuration (everything but the seed, group and label)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("seed", "group", "label")}
        return json.dumps(values, sort_keys=True)

    @property
    def variant(self) -> str:
        """The model's name in tables: the head, and the label where there is one."""
        return self.head + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class Variant:
    """A model derived from a head's chosen configuration: `changes` to its spec; `labelled_train`: trained on
    the all-labelled copy of the setting's training set (`config.ALL_LABELLED`); `scales`: the fine-tuned
    scales it runs at."""

    head: str
    changes: dict[str, Any] = field(default_factory=dict)
    labelled_train: bool = False
    scales: tuple[str, ...] = ("cpu", "gpu")

    def apply(self, chosen: RunSpec, seed: int, group: str = "main") -> RunSpec:
        train = f"{chosen.train}_labelled" if self.labelled_train else chosen.train
        return replace(chosen, **{"seed": seed, "group": group, "train": train, **self.changes})


def sweep_grid(head: str, setting: str, backbone: str, train: str = "train") -> list[RunSpec]:
    """Six configurations per head (the same tuning effort): learning rates, and beta where the head has a KL.

    (A first pass with four configurations each chose learning rates at the top of the grids, so both grids
    were extended upwards by one step; every configuration tried is reported.)
    """
    base = dict(setting=setting, backbone=backbone, head=head, seed=0, group="sweep", train=train)
    if head in ("ib", "vrm"):
        return [
            RunSpec(learning_rate=lr, beta=beta, **base) for lr in (1e-3, 3e-3, 1e-2) for beta in (0.01, 0.1)
        ]
    return [RunSpec(learning_rate=lr, **base) for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)]


# moe / vrm with the objective label as an observation of the weights (`--objective_label_weight 1`, not tuned)
LABELLED_WEIGHTS = {"objective_label_weight": 1.0, "label": "labelled weights"}
# ... and trained on sets where AlpacaEval and UltraFeedback pairs are labelled helpfulness too
ALL_PAIRS_LABELLED = {"objective_label_weight": 1.0, "label": "labelled weights, all pairs"}
NO_LABELS = {"objective_labels": False, "label": "no labels"}

# the frozen main table beside the four heads: vrm without labels, moe / vrm with labelled weights
FROZEN_MAIN_VARIANTS = (
    Variant("vrm", NO_LABELS),
    Variant("moe", LABELLED_WEIGHTS),
    Variant("vrm", LABELLED_WEIGHTS),
    Variant("moe", ALL_PAIRS_LABELLED, labelled_train=True),
    Variant("vrm", ALL_PAIRS_LABELLED, labelled_train=True),
)
# ablations of vrm around its chosen setting (frozen MiniLM)
ABLATIONS = tuple(
    Variant("vrm", changes)
    for changes in (
        {"num_objectives": 2, "label": "K=2"},
        {"num_objectives": 8, "label": "K=8"},
        {"feature_dim": 4, "label": "d=4"},
        {"feature_dim": 64, "label": "d=64"},
        {"beta": 0.001, "label": "beta=0.001"},
        {"beta": 1.0, "label": "beta=1"},
        {"num_samples": 1, "label": "M=1"},
        {"num_samples": 16, "label": "M=16"},
        {"prior_concentration": 0.3, "label": "alpha0=0.3"},
        {"prior_concentration": 3.0, "label": "alpha0=3"},
        {"weight_posterior": "logistic_normal", "label": "softmax-Gaussian weights"},
        {"weight_posterior": "softmax", "label": "deterministic softmax weights"},
        {"objective_labels": False, "label": "no objective labels"},
    )
)
# the helpfulness -> harmlessness shift: each head's chosen configuration without a harmlessness pair
HELP_ONLY = {"train": "train_help_only"}
# variants of a head at that head's chosen learning rate in the fine-tuned setting
FINETUNE_EXTRAS = {
    "vrm-detached": Variant(
        "vrm", {"prompt_state_gradient": False, "label": "h_x detached"}, scales=("cpu",)
    ),
    "moe-labelled-weights": Variant("moe", LABELLED_WEIGHTS),
    "vrm-labelled-weights": Variant("vrm", LABELLED_WEIGHTS),
    "moe-labelled-all": Variant("moe", ALL_PAIRS_LABELLED, labelled_train=True),
    "vrm-labelled-all": Variant("vrm", ALL_PAIRS_LABELLED, labelled_train=True),
}
FINETUNE_VARIANTS = (*HEADS, *FINETUNE_EXTRAS)
# the fine-tuned scales: `cpu` full fine-tuning on 1,000 pairs and smaller test splits (what 2 cores allow);
# `gpu` LoRA (r 16) in bf16 on all training pairs, the full test splits, max_length 1024
FINETUNE_SCALES = {
    "cpu": {"prefix": "ft_", "run": {"train": "ft_train", "epochs": 1.0, "batch_size": 8}},
    "gpu": {
        "prefix": "",
        "run": {
            "train": "train",
            "epochs": 1.0,
            "batch_size": 16,
            "use_peft": True,
            "bf16": True,
            "max_length": 1024,
        },
    },
}
# the comparisons tested besides vrm − bt, where both ran
LABELLED_VRM, LABELLED_MOE = "vrm (labelled weights)", "moe (labelled weights)"
ALL_LABELLED_VRM = "vrm (labelled weights, all pairs)"
COMPARISONS = [
    (LABELLED_VRM, "bt"),
    (LABELLED_VRM, "vrm"),
    (LABELLED_MOE, "moe"),
    (ALL_LABELLED_VRM, "bt"),
    (ALL_LABELLED_VRM, LABELLED_VRM),
]
