"""The study's sizes, names and paths (the defaults are the committed study; `realdata.yaml` sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from benchmarks.studies.backbones import backbone_label, backbone_path  # noqa: F401 (the study's names)

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
WORK = os.path.join(HERE, ".cache", "study")  # split files, embedding cache, model weights (not committed)
RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(RESULTS, "study_runs")  # every finished run's result.json and scores.npz (committed)
HEADS = ("bt", "ib", "moe", "vrm")
OBJECTIVES = [
    "helpfulness",
    "harmlessness",
]  # RMB's `objective` column; vrm / moe tie their first two objectives
# RMB categories never seen in training: the "shifted" test splits
HELD_OUT_HELPFULNESS = ("Code", "Summarization", "Role Playing")
HELD_OUT_HARMLESSNESS = ("S9", "S10", "multi")
REFERENCE_GENERATOR = "gpt4_1106_preview"  # AlpacaEval's reference: every judged pair is a model vs it
BON_NS = [1, 2, 4, 8, 16, 32]
FROZEN_SETTINGS = ("frozen", "frozen_subset")  # settings that train heads on cached states
SETTING_ORDER = (*FROZEN_SETTINGS, "finetune")
# pairwise test splits; the CPU fine-tuned setting and frozen_subset use `ft_`-prefixed samples of them
# (UltraFeedback eval is used whole everywhere)
PAIR_SETS = ("val", "rmb_id", "rmb_shift_help", "rmb_shift_harm", "alpaca_test")
DIAGNOSTIC_SET = "rmb_id"  # posterior diagnostics: the in-distribution RMB test pairs
# training sets where every pair carries an objective label (AlpacaEval / UltraFeedback pairs: helpfulness)
ALL_LABELLED = {"train_labelled": "train", "ft_train_labelled": "ft_train"}


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of the splits and the training budget."""

    seed: int = 0
    max_length: int = 192
    max_prompt_length: int = 64
    rmb_train: int = 3000
    alpaca_train: int = 1500
    uf_train: int = 900
    val_per_source: int = 300
    test_per_split: int = 600
    bon_prompts: int = 60
    finetune_train: int = 1000  # pairs of the fine-tuned setting (a sample of the frozen training set)
    finetune_test: int = 200  # pairs per test split in the fine-tuned setting
    finetune_rm_bench: int = 60
    finetune_bon_prompts: int = 20


def data_file(name: str, work: str = WORK) -> str:
    return os.path.join(work, "data", f"{name}.jsonl")


def pair_set_names(prefix: str) -> list[str]:
    """The pairwise evaluation sets of a setting (`prefix` is "" or "ft_")."""
    return [prefix + name for name in PAIR_SETS] + ["uf_eval"]


def eval_set_files(prefix: str, work: str = WORK) -> dict[str, str]:
    """Every evaluation set of a setting: the pairwise ones, RM-Bench and the Best-of-N pool."""
    names = pair_set_names(prefix) + [f"{prefix}rm_bench", f"{prefix}bon_pool"]
    return {name: data_file(name, work) for name in names}
