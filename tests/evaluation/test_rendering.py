"""Rendering `vrm eval` reports (hand-built reports, no model needed): plots, the markdown summary and the
terminal table."""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("matplotlib")

from vrm.evaluation.markdown import markdown_summary, write_markdown
from vrm.evaluation.plots import (
    objective_weights_heatmap,
    reliability_diagram,
    reliability_figure,
    weights_figure,
    write_plots,
)
from vrm.evaluation.table import format_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _bins(shift: float) -> list[dict]:
    return [
        {"low": 0.5, "high": 0.6, "count": 40, "confidence": 0.55, "accuracy": 0.52 + shift},
        {"low": 0.7, "high": 0.8, "count": 25, "confidence": 0.74, "accuracy": 0.70 + shift},
        {"low": 0.9, "high": 1.0, "count": 10, "confidence": 0.95, "accuracy": 0.90 + shift},
    ]


def _metrics(accuracy: float, k: int, auroc: float, weights: list[float] | None = None) -> dict:
    return {
        "pairs": 75,
        "accuracy": accuracy,
        "ties": 1,
        "accuracy_ties_half": accuracy + 0.005,
        "mean_margin": 0.42,
        "nll": 0.581,
        "brier": 0.201,
        "ece": 0.034 if k > 1 else 0.071,
        "calibration_bins": _bins(0.01 if k > 1 else -0.03),
        "mean_reward_std": 0.25 if k > 1 else 0.0,
        "objective_weights": weights or [round(1 / k, 4)] * k,
        "selective_accuracy": {"curve": {"1": accuracy, "0.5": accuracy + 0.05}, "area": 0.845},
        "uncertainty_error_auroc": auroc,
        "length_bias": {
            "spearman_reward_length": 0.137,
            "accuracy_chosen_longer": 0.9,
            "accuracy_chosen_shorter": 0.3,
            "pairs_chosen_longer": 45,
            "pairs_chosen_shorter": 30,
            "longer_wins_accuracy": 0.6,
        },
    }


def _rm_bench(easy: float) -> dict:
    scores = {"easy": easy, "normal": 0.654, "hard": 0.321, "average": 0.587, "prompts": 12}
    return {"convention": "rm-bench", "overall": scores, "subsets": {"chat": dict(scores)}}


@pytest.fixture
def reports() -> list[dict]:
    vrm = {
        "model": "runs/vrm-k3/",
        "head_type": "vrm",
        "num_objectives": 3,
        "objective_names": ["helpful", "harmless", "honest"],
        "datasets": {
            "data/prefs.jsonl": {
                "convention": "pairwise",
                "overall": _metrics(0.812, 3, 0.66),
                "subsets": {
                    "chat": _metrics(0.83, 3, 0.7, weights=[0.6, 0.3, 0.1]),
                    "code": {"pairs": 0},
                },
            },
            "data/rewardbench.jsonl": {
                "convention": "rewardbench",
                "overall": _metrics(0.75, 3, 0.61),
                "subsets": {"alpacaeval-easy": _metrics(0.9, 3, 0.5, weights=[0.2, 0.5, 0.3])},
                "rewardbench": {"sections": {"Chat": 0.9, "Safety": 0.777}, "score": 0.838},
            },
            "data/rmb.jsonl": _rm_bench(0.876),
        },
    }
    bt = {
        "model": "runs/bt-base",
        "head_type": "bt",
        "num_objectives": 1,
        "objective_names": None,
        "datasets": {
            "data/prefs.jsonl": {
                "convention": "pairwise",
                "overall": _metrics(0.61, 1, math.nan),
                "subsets": {"chat": _metrics(0.62, 1, math.nan), "code": {"pairs": 0}},
            },
            "data/rmb.jsonl": _rm_bench(0.765),
        },
    }
    return [vrm, bt]


def _assert_png(path: str) -> None:
    assert os.path.isfile(path)
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > 5000


def _no_staging_files(directory: str) -> bool:
    return not [name for name in os.listdir(directory) if name.startswith(".tmp-")]


def test_reliability_diagram_is_written_as_a_png(tmp_path, reports):
    path = str(tmp_path / "rel.png")
    assert reliability_diagram(reports, path) == path
    _assert_png(path)
    assert _no_staging_files(str(tmp_path))


def test_reliability_diagram_without_bins_is_still_a_png(tmp_path, reports):
    only_rm_bench = [{**r, "datasets": {"data/rmb.jsonl": r["datasets"]["data/rmb.jsonl"]}} for r in reports]
    _assert_png(reliability_diagram(only_rm_bench, str(tmp_path / "empty.png")))


def test_weights_heatmap_only_for_models_with_objective_weights(tmp_path, reports):
    vrm, bt = reports
    path = str(tmp_path / "w.png")
    assert objective_weights_heatmap(vrm, path) == path
    _assert_png(path)
    skipped = str(tmp_path / "bt.png")
    assert objective_weights_heatmap(bt, skipped) is None
    assert not os.path.exists(skipped)
    no_weights = {**vrm, "datasets": {"data/rmb.jsonl": vrm["datasets"]["data/rmb.jsonl"]}}
    assert objective_weights_heatmap(no_weights, str(tmp_path / "none.png")) is None


def test_write_plots_writes_one_file_per_plot(tmp_path, reports):
    directory = tmp_path / "plots" / "nested"
    paths = write_plots(reports, str(directory))
    assert [os.path.basename(p) for p in paths] == ["reliability.png", "weights_vrm-k3.png"]
    for path in paths:
        _assert_png(path)
    assert sorted(os.listdir(directory)) == ["reliability.png", "weights_vrm-k3.png"]


def test_markdown_summary_has_every_table_and_warning(reports):
    text = markdown_summary(reports)
    for name in ("vrm-k3", "bt-base", "prefs.jsonl", "rewardbench.jsonl", "rmb.jsonl"):
        assert name in text
    assert "0.812" in text
    assert "| longer wins | – | 0.600 |" in text
    assert "nan" in text  # the bt model's uncertainty AUROC
    row = next(line for line in text.splitlines() if line.startswith("| bt-base | 75 |"))
    assert "| nan |" in row
    # RM-Bench difficulties
    for value in ("0.876", "0.765", "0.654", "0.321", "0.587"):
        assert value in text
    # RewardBench sections
    assert "Safety" in text and "0.777" in text and "0.838" in text
    # per-subset table: empty subset shown as missing
    code_row = next(line for line in text.splitlines() if line.startswith("| code |"))
    assert code_row == "| code | 0 | – | – |"
    warnings = next(line for line in text.splitlines() if line.startswith("**Warnings:**"))
    assert "bt-base on prefs.jsonl" in warnings and "accuracy explained by length?" in warnings
    assert "vrm-k3 on prefs.jsonl" not in warnings
    assert "prefs.jsonl / code: 0 pairs" in warnings
    assert warnings.count("code: 0 pairs") == 1


def test_write_markdown_writes_the_summary_without_staging_leftovers(tmp_path, reports):
    path = str(tmp_path / "out" / "summary.md")
    assert write_markdown(reports, path) == path
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == markdown_summary(reports)
    assert _no_staging_files(str(tmp_path / "out"))


def _report(k: int, subsets: list[str], accuracy: float = 0.3) -> dict:
    metrics = {
        "pairs": 10,
        "accuracy": accuracy,
        "ties": 0,
        "mean_margin": 0.1,
        "nll": 0.7,
        "ece": 0.1,
        "mean_reward_std": 0.2,
        "objective_weights": [1 / k] * k,
        "calibration_bins": [{"confidence": 0.8, "accuracy": 0.2, "count": 10}],
    }
    return {
        "model": "runs/a-model-with-a-rather-long-name-k3",
        "head_type": "vrm",
        "num_objectives": k,
        "objective_names": None,
        "datasets": {
            "rmb_bestofn_pairs.jsonl.gz": {
                "convention": "pairwise",
                "overall": metrics,
                "subsets": {s: metrics for s in subsets},
            }
        },
    }


def test_reliability_diagram_shows_accuracy_from_0_to_1():
    figure = reliability_figure([_report(3, ["a"])])
    assert figure.axes[0].get_ylim() == (0.0, 1.0)


def test_weights_heatmap_is_readable_for_small_k():
    subsets = [f"Helpfulness/Translation/GeneralExcerpt Language Translation {i}" for i in range(30)]
    figure = weights_figure(_report(3, subsets))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    dpi = figure.dpi
    cells = figure.axes[0].get_window_extent(renderer)
    assert cells.width / 3 >= 0.7 * dpi and cells.height / 30 >= 0.3 * dpi  # each cell at least 0.7 x 0.3 in
    whole = figure.bbox
    for text in [figure._suptitle, *figure.axes[0].get_yticklabels()]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= whole.width and box.y1 <= whole.height, text.get_text()


def test_long_subset_names_do_not_wrap_in_the_terminal_table():
    long_name = "Helpfulness/Translation/GeneralExcerpt Language Translation and much more besides"
    text = format_report(_report(2, [long_name, "b"]))
    lines = [line for line in text.splitlines() if "Helpfulness" in line]
    # one row in the pairwise table and one in the error-detection table, each cut on one line
    assert len(lines) == 2 and all("…" in line for line in lines)
    assert long_name in markdown_summary([_report(2, [long_name, "b"])])  # full names in the markdown


def test_a_head_without_a_posterior_shows_no_reward_std_in_the_terminal_table(
    tiny_model, tmp_path, write_pairs
):
    from vrm.evaluation.pairwise import evaluate_model

    model, tokenizer, _ = tiny_model("llama_chat", head_type="bt")
    model.save_pretrained(str(tmp_path / "bt"))
    tokenizer.save_pretrained(str(tmp_path / "bt"))
    data = write_pairs(str(tmp_path / "pairs.jsonl"))
    text = format_report(evaluate_model(str(tmp_path / "bt"), [data], progress=False))
    row = next(line for line in text.splitlines() if "pairs.jsonl" in line)
    assert "–" in row and "0.000 " not in row.split("│")[-3]
