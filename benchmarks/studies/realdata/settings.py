"""Which runs each stage makes: the frozen settings (sweep, seeds, shift, ablations) and the fine-tuned one.

Each head's sweep (`specs.sweep_grid`) runs at seed 0 and is chosen on validation accuracy (`stats.select`);
the chosen configuration then runs at every seed, and the variants of `specs` are derived from it.
"""

from __future__ import annotations

from dataclasses import replace

from .aggregate import select
from .config import HEADS, StudyConfig, data_file, eval_set_files
from .runner import execute, load_results
from .specs import (
    ABLATIONS,
    FINETUNE_EXTRAS,
    FINETUNE_SCALES,
    FINETUNE_VARIANTS,
    FROZEN_MAIN_VARIANTS,
    HELP_ONLY,
    RunSpec,
    Variant,
    sweep_grid,
)

FROZEN_PARTS = ("main", "shift", "ablations")


def frozen_setting(
    cfg: StudyConfig,
    backbone: str,
    seeds: list[int],
    ablation_seeds: list[int],
    subset: bool = False,
    parts: tuple[str, ...] = FROZEN_PARTS,
) -> None:
    """Heads on cached states: the sweep and seeds (`main`), the helpfulness -> harmlessness shift, the
    ablations of vrm. `subset`: the fine-tuned setting's data (frozen_subset), main table only."""
    setting, prefix, train = ("frozen_subset", "ft_", "ft_train") if subset else ("frozen", "", "train")
    eval_sets = eval_set_files(prefix)
    validation = f"{prefix}val"
    tokenized: dict = {}
    best: dict[str, RunSpec] = {}
    for head in HEADS:
        sweep = [
            execute(spec, cfg, eval_sets, tokenized) for spec in sweep_grid(head, setting, backbone, train)
        ]
        best[head] = select(sweep, validation).spec
        for seed in seeds:
            execute(replace(best[head], seed=seed, group="main"), cfg, eval_sets, tokenized)
    for variant in FROZEN_MAIN_VARIANTS:
        for seed in seeds:
            execute(variant.apply(best[variant.head], seed), cfg, eval_sets, tokenized)
    if subset:
        return
    if "shift" in parts:  # helpfulness -> harmlessness: trained without a single harmlessness pair
        shift_sets = {"val": eval_sets["val"], "rmb_harm_all": data_file("rmb_harm_all")}
        for head in HEADS:
            for seed in ablation_seeds:
                execute(Variant(head, HELP_ONLY).apply(best[head], seed, "shift"), cfg, shift_sets, {})
    if "ablations" in parts:
        for variant in ABLATIONS:
            for seed in ablation_seeds:
                execute(variant.apply(best["vrm"], seed, "ablation"), cfg, eval_sets, tokenized)


def frozen_betas(backbone: str) -> dict[str, float]:
    """The beta the frozen sweep chose for each head (its main-table runs, on `backbone` else on MiniLM);
    0.01 without either."""
    betas: dict[str, float] = {}
    for name in (backbone, "minilm"):
        for result in load_results("frozen", name):
            if result.spec.group == "main" and not result.spec.label:
                betas.setdefault(result.spec.head, result.spec.beta)
    return {head: betas.get(head, 0.01) for head in HEADS}


def finetune_setting(
    cfg: StudyConfig,
    backbone: str,
    seeds: list[int],
    learning_rates: list[float],
    scale: str = "cpu",
    variants: tuple[str, ...] = FINETUNE_VARIANTS,
) -> None:
    """End-to-end fine-tuning for one epoch; each head keeps the beta its frozen sweep chose (`frozen_betas`).

    With several `learning_rates`, each head first sweeps them at seed 0 (the same tuning effort for every head,
    chosen on validation accuracy; the winner's sweep run is also its seed 0), then trains the other seeds.
    `specs.FINETUNE_EXTRAS` are variants of a head at that head's chosen learning rate.
    """
    prefix, run = FINETUNE_SCALES[scale]["prefix"], FINETUNE_SCALES[scale]["run"]
    eval_sets = eval_set_files(prefix)
    tokenized: dict = {}
    extras = [v for name, v in FINETUNE_EXTRAS.items() if name in variants and scale in v.scales]
    heads = [h for h in HEADS if h in variants or any(v.head == h for v in extras)]
    betas = frozen_betas(backbone)
    best: dict[str, RunSpec] = {}
    for head in heads:
        group = "sweep" if len(learning_rates) > 1 else "main"
        grid = [
            RunSpec("finetune", backbone, head, 0, lr, group=group, beta=betas[head], **run)
            for lr in learning_rates
        ]
        if len(grid) > 1:
            best[head] = select(
                [execute(spec, cfg, eval_sets, tokenized) for spec in grid], f"{prefix}val"
            ).spec
        else:
            best[head] = grid[0]
    # seeds in the outer loop: an interrupted study still has every head at the first seeds
    for seed in seeds:
        for head in heads:
            if head in variants:
                execute(replace(best[head], seed=seed, group="main"), cfg, eval_sets, tokenized)
    for variant in extras:
        for seed in seeds:
            execute(variant.apply(best[variant.head], seed), cfg, eval_sets, tokenized)
