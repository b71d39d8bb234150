"""`python -m benchmarks.studies.realdata [CONFIG.yaml] [--stages ...]`: see the package's docstring."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

from benchmarks.studies.report import command_line, run_main
from benchmarks.studies.spec import read_yaml_config

from . import __doc__ as STUDY_DOC
from .config import HERE, StudyConfig
from .data import prepare_data, record_manifest, recorded_manifest
from .report import write_report
from .settings import FROZEN_PARTS, finetune_setting, frozen_setting
from .specs import FINETUNE_VARIANTS

MODULE = "benchmarks.studies.realdata"
STAGES = ["prepare", "frozen", "frozen_subset", "finetune", "report"]
REPOSITORY = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(HERE, "experiments", "realdata.yaml")


@dataclass
class StudyPlan:
    """The study's YAML file: its sizes and what each stage runs (command-line flags override them)."""

    data_dir: str = "../shared/data"  # relative to the repository root
    sizes: dict = field(default_factory=dict)  # `config.StudyConfig` fields
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    backbones: list[str] = field(default_factory=lambda: ["minilm"])
    subset_backbones: list[str] = field(default_factory=lambda: ["minilm", "smollm2"])
    frozen_parts: list[str] = field(default_factory=lambda: list(FROZEN_PARTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ablation_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune_learning_rates: list[float] = field(default_factory=lambda: [2e-5, 5e-5, 1e-4, 2e-4, 5e-4])
    finetune_variants: list[str] = field(default_factory=lambda: list(FINETUNE_VARIANTS))
    finetune_scale: str = "cpu"
    notes: str = ""

    def study_config(self) -> StudyConfig:
        known = {f.name for f in fields(StudyConfig)}
        unknown = sorted(set(self.sizes) - known)
        if unknown:
            raise ValueError(f"sizes: unknown fields {unknown} (known: {sorted(known)})")
        return StudyConfig(**self.sizes)


def load_plan(path: str) -> StudyPlan:
    """Read and check the study's YAML; errors name the file and the field."""
    plan = read_yaml_config(path, StudyPlan, "study")
    for name, allowed in (
        ("stages", STAGES),
        ("frozen_parts", FROZEN_PARTS),
        ("finetune_variants", FINETUNE_VARIANTS),
    ):
        wrong = sorted(set(getattr(plan, name)) - set(allowed))
        if wrong:
            raise ValueError(f"{path}: {name}: {wrong} are not among {list(allowed)}")
    if plan.finetune_scale not in ("cpu", "gpu"):
        raise ValueError(f"{path}: finetune_scale must be 'cpu' or 'gpu', got {plan.finetune_scale!r}")
    try:
        plan.study_config()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return plan


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, StudyPlan]:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=STUDY_DOC.split("\n\n")[0])
    parser.add_argument(
        "config", nargs="?", default=DEFAULT_CONFIG, help="the study's YAML (default: %(default)s)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="the shared data (YAML: relative to the repository root)"
    )
    parser.add_argument("--stages", nargs="+", default=None, choices=STAGES)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        help="minilm, smollm2 (pip-installed) or any local directory / hub id (e.g. with --finetune_scale gpu)",
    )
    parser.add_argument(
        "--subset_backbones", nargs="+", default=None, help="backbones of the frozen_subset stage"
    )
    parser.add_argument(
        "--frozen_parts",
        nargs="+",
        default=None,
        choices=FROZEN_PARTS,
        help="parts of the frozen stage: main (sweep and seeds), shift (helpfulness -> harmlessness), ablations",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--ablation_seeds", nargs="+", type=int, default=None)
    parser.add_argument("--finetune_seeds", nargs="+", type=int, default=None)
    parser.add_argument(
        "--finetune_learning_rates",
        nargs="+",
        type=float,
        default=None,
        help="backbone learning rates each head sweeps at seed 0 (one value: no sweep)",
    )
    parser.add_argument(
        "--finetune_variants",
        nargs="+",
        default=None,
        choices=FINETUNE_VARIANTS,
        help="models of the finetune stage (vrm-detached: vrm with --no_prompt_state_gradient, cpu scale only; "
        "*-labelled-weights: with --objective_label_weight 1; *-labelled-all: also on sets where AlpacaEval and "
        "UltraFeedback pairs are labelled helpfulness)",
    )
    parser.add_argument(
        "--finetune_scale",
        choices=["cpu", "gpu"],
        default=None,
        help="cpu: full fine-tuning on 1,000 pairs; gpu: LoRA + bf16 on all pairs, full test splits",
    )
    args = parser.parse_args(argv)
    plan = load_plan(args.config)
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    plan = StudyPlan(**{**asdict(plan), **overrides})
    return args, plan


def main(argv: list[str] | None = None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    _, plan = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = plan.study_config()
    stages = plan.stages
    if stages == ["report"]:  # the report describes the data the committed runs were made on
        manifest = recorded_manifest()
    else:
        manifest = prepare_data(os.path.join(REPOSITORY, plan.data_dir), cfg)
        record_manifest(manifest)
        print(f"[study] data: {manifest['counts']}", flush=True)
    for backbone in plan.backbones:
        if "frozen" in stages:
            frozen_setting(cfg, backbone, plan.seeds, plan.ablation_seeds, parts=tuple(plan.frozen_parts))
        if "finetune" in stages and (backbone == "minilm" or plan.finetune_scale == "gpu"):
            finetune_setting(
                cfg,
                backbone,
                plan.finetune_seeds,
                plan.finetune_learning_rates,
                plan.finetune_scale,
                tuple(plan.finetune_variants),
            )
    if "frozen_subset" in stages:
        for backbone in plan.subset_backbones:
            frozen_setting(cfg, backbone, plan.seeds, plan.ablation_seeds, subset=True)
    if "report" in stages:
        print("\n".join(write_report(manifest, command_line(MODULE, argv), started)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, MODULE))
