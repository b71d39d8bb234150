"""`python -m benchmarks.study [--stages ...]` (from the repository root): see the package's docstring."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from . import __doc__ as STUDY_DOC
from .config import HERE, StudyConfig
from .data import prepare_data, record_manifest, recorded_manifest
from .report import write_report
from .settings import FROZEN_PARTS, finetune_setting, frozen_setting
from .specs import FINETUNE_VARIANTS

STAGES = ["prepare", "frozen", "frozen_subset", "finetune", "report"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study", description=STUDY_DOC.split("\n\n")[0]
    )
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["minilm"],
        help="minilm, smollm2 (pip-installed) or any local directory / hub id (e.g. with --finetune_scale gpu)",
    )
    parser.add_argument(
        "--subset_backbones",
        nargs="+",
        default=["minilm", "smollm2"],
        help="backbones of the frozen_subset stage",
    )
    parser.add_argument(
        "--frozen_parts",
        nargs="+",
        default=list(FROZEN_PARTS),
        choices=FROZEN_PARTS,
        help="parts of the frozen stage: main (sweep and seeds), shift (helpfulness -> harmlessness), ablations",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--ablation_seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--finetune_seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--finetune_learning_rates",
        nargs="+",
        type=float,
        default=[2e-5, 5e-5, 1e-4, 2e-4, 5e-4],
        help="backbone learning rates each head sweeps at seed 0 (one value: no sweep)",
    )
    parser.add_argument(
        "--finetune_variants",
        nargs="+",
        default=list(FINETUNE_VARIANTS),
        choices=FINETUNE_VARIANTS,
        help="models of the finetune stage (vrm-detached: vrm with --no_prompt_state_gradient, cpu scale only; "
        "*-labelled-weights: with --objective_label_weight 1; *-labelled-all: also on sets where AlpacaEval and "
        "UltraFeedback pairs are labelled helpfulness)",
    )
    parser.add_argument(
        "--finetune_scale",
        choices=["cpu", "gpu"],
        default="cpu",
        help="cpu: full fine-tuning on 1,000 pairs; gpu: LoRA + bf16 on all pairs, full test splits",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = StudyConfig()
    if args.stages == ["report"]:  # the report describes the data the committed runs were made on
        manifest = recorded_manifest()
    else:
        manifest = prepare_data(args.data_dir, cfg)
        record_manifest(manifest)
        print(f"[study] data: {manifest['counts']}", flush=True)
    for backbone in args.backbones:
        if "frozen" in args.stages:
            frozen_setting(cfg, backbone, args.seeds, args.ablation_seeds, parts=tuple(args.frozen_parts))
        if "finetune" in args.stages and (backbone == "minilm" or args.finetune_scale == "gpu"):
            finetune_setting(
                cfg,
                backbone,
                args.finetune_seeds,
                args.finetune_learning_rates,
                args.finetune_scale,
                tuple(args.finetune_variants),
            )
    if "frozen_subset" in args.stages:
        for backbone in args.subset_backbones:
            frozen_setting(cfg, backbone, args.seeds, args.ablation_seeds, subset=True)
    if "report" in args.stages:
        command = "python -m benchmarks.study " + shlex.join(argv)
        print("\n".join(write_report(manifest, command, started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
