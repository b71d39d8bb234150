"""Evaluating reward models: pairwise accuracy and its breakdowns (`pairwise`), benchmark conventions
(RewardBench 1 / 2, RM-Bench: `benchmark_rules`), best-of-k sets (`best_of_k`), best-of-n curves against a gold
scorer (`best_of_n`), metrics on plain arrays (`metrics`), calibration of preference probabilities
(`calibration`), and the typed report (`report`) with its terminal table, markdown and plot writers."""

from vrm.evaluation.best_of_n import bon_curve, read_pool, score_pool
from vrm.evaluation.calibration import fit_temperature
from vrm.evaluation.checkpoint_calibration import calibrate_model
from vrm.evaluation.pairwise import evaluate_model, score_examples, score_pairs
from vrm.evaluation.report import EvalReport, write_reports
from vrm.evaluation.table import format_report

__all__ = [
    "EvalReport",
    "bon_curve",
    "calibrate_model",
    "evaluate_model",
    "fit_temperature",
    "format_report",
    "read_pool",
    "score_examples",
    "score_pairs",
    "score_pool",
    "write_reports",
]
