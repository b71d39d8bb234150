"""`vrm eval`'s terminal table and markdown: objective weights by name, "–" where a model has no posterior std."""

from __future__ import annotations

from vrm.evaluation.markdown import markdown_summary
from vrm.evaluation.table import format_report


def _metrics(weights: list[float], std: float) -> dict:
    return {
        "pairs": 10,
        "accuracy": 0.7,
        "ties": 0,
        "mean_margin": 0.4,
        "nll": 0.6,
        "brier": 0.2,
        "ece": 0.05,
        "mean_reward_std": std,
        "objective_weights": weights,
    }


def _report(head: str, names, weights, std) -> dict:
    return {
        "model": f"runs/{head}",
        "head_type": head,
        "num_objectives": len(weights),
        "objective_names": names,
        "datasets": {
            "prefs.jsonl": {"convention": "pairwise", "overall": _metrics(weights, std), "subsets": {}}
        },
    }


def test_weights_are_printed_by_objective_name():
    text = format_report(_report("vrm", ["helpful", "safe"], [0.63, 0.37], 0.2))
    assert "helpful 0.63" in text and "safe 0.37" in text
    unnamed = format_report(_report("moe", None, [0.5, 0.25, 0.25], 0.0))
    assert all(f"objective_{k} {w}" in unnamed for k, w in enumerate(["0.50", "0.25", "0.25"]))
    weights = [0.01] * 16
    weights[5], weights[9] = 0.6, 0.26
    many = format_report(_report("vrm-paper", None, weights, 0.2))  # K = 16: the largest three, then a count
    assert "objective_5 0.60" in many and "objective_9 0.26" in many and "+13 more" in many


def test_a_head_without_a_posterior_shows_a_dash_not_zero_std():
    bt = _report("bt", None, [1.0], 0.0)
    table = format_report(bt)
    row = next(line for line in table.splitlines() if "prefs.jsonl" in line)
    assert "0.000" not in row.split("│")[-3] and "–" in row
    summary = markdown_summary([bt])
    lines = summary.splitlines()
    header = next(line for line in lines if "mean reward_std" in line)
    column = [cell.strip() for cell in header.split("|")].index("mean reward_std")
    row = lines[lines.index(header) + 2]  # past the alignment row
    assert row.split("|")[column].strip() == "–"
