"""The typed `vrm eval` report: round trip, old files, unknown metrics, bad files, the committed reports."""

from __future__ import annotations

import json
import math
import os

import pytest

from vrm.data.files import finite_or_none
from vrm.evaluation.report import (
    SCHEMA_VERSION,
    BestOfKMetrics,
    EvalReport,
    PairwiseMetrics,
    ReportFormatError,
    RMBenchScores,
    read_reports,
    report_files,
    write_reports,
)

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results")


def _pairwise(accuracy: float) -> dict:
    return {
        "pairs": 4,
        "accuracy": accuracy,
        "ties": 0,
        "accuracy_ties_half": accuracy,
        "mean_margin": 0.3,
        "nll": 0.6,
        "brier": 0.2,
        "ece": 0.05,
        "calibration_bins": [{"low": 0.5, "high": 0.6, "count": 4, "confidence": 0.55, "accuracy": 0.5}],
        "mean_reward_std": 0.1,
        "objective_weights": [0.7, 0.3],
        "error_auroc": {"margin": 0.6, "std": 0.55, "flip": 0.58},
        "selective_accuracy": {"curve": {"1": accuracy, "0.5": 1.0}, "area": 0.9},
        "uncertainty_error_auroc": 0.55,
        "length_bias": {"spearman_reward_length": math.nan, "longer_wins_accuracy": 0.5},
    }


def _report_dict() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": "runs/vrm",
        "head_type": "vrm",
        "num_objectives": 2,
        "objective_names": ["help", "harm"],
        "datasets": {
            "prefs.jsonl": {
                "convention": "pairwise",
                "overall": _pairwise(0.75),
                "subsets": {"a": _pairwise(0.5), "empty": {"pairs": 0}},
                "tokenization": {
                    "pairs": 4,
                    "kept": 4,
                    "prompt_truncated": 1,
                    "response_truncated": 0,
                    "dropped_too_long": 0,
                    "dropped_identical": 0,
                    "marker_mismatch": 0,
                },
                "invalid_rows": {"count": 1, "rows": [{"location": "prefs.jsonl:3", "reason": "no text"}]},
                "max_rows": None,
                "sample": 10,
                "seed": 0,
            },
            "rm.jsonl": {
                "convention": "rm-bench",
                "overall": {"easy": 1.0, "normal": 0.5, "hard": 0.25, "average": 0.583, "prompts": 2},
                "subsets": {},
                "invalid_rows": {"count": 0, "rows": []},
                "max_rows": None,
                "sample": None,
                "seed": 0,
            },
            "bok.jsonl": {
                "convention": "rewardbench2",
                "overall": {
                    "prompts": 2,
                    "accuracy": 0.5,
                    "ties": 0,
                    "accuracy_ties_shared": 0.5,
                    "chance": 0.25,
                    "mean_candidates": 4.0,
                    "pairs": 6,
                    "pairwise_accuracy": 0.5,
                    "mean_margin": 0.1,
                },
                "subsets": {"Focus": {"prompts": 0}},
                "rewardbench2": {
                    "subsets": {"Focus": 0.5},
                    "details": {},
                    "score": None,
                    "partial_mean": 0.5,
                    "note": "partial: 1 of 6 subsets",
                },
                "invalid_rows": {"count": 0, "rows": []},
                "max_rows": 5,
                "sample": None,
                "seed": 0,
            },
        },
    }


def _same(a, b) -> bool:  # JSON equality with NaN equal to NaN
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_round_trip_keeps_every_key_and_types_each_convention(tmp_path):
    original = _report_dict()
    report = EvalReport.from_dict(original)
    datasets = report.datasets
    assert isinstance(datasets["prefs.jsonl"].overall, PairwiseMetrics)
    assert datasets["prefs.jsonl"].overall.length_bias.longer_wins_accuracy == 0.5
    assert datasets["prefs.jsonl"].tokenization.prompt_truncated == 1
    assert datasets["prefs.jsonl"].invalid_rows.rows[0].location == "prefs.jsonl:3"
    assert (
        isinstance(datasets["rm.jsonl"].overall, RMBenchScores) and datasets["rm.jsonl"].overall.hard == 0.25
    )
    assert isinstance(datasets["bok.jsonl"].overall, BestOfKMetrics)
    assert datasets["bok.jsonl"].rewardbench2.score is None
    path = report.to_json(str(tmp_path / "report.json"))
    again = EvalReport.from_json(path)
    assert _same(again.to_dict(), report.to_dict())  # (NaN != NaN: dataclass == would not do)
    with open(path, encoding="utf-8") as handle:
        # the JSON users read is unchanged, key for key, but strict: NaN is written as null
        assert _same(json.load(handle), finite_or_none(original))
    assert _same(datasets["prefs.jsonl"].subsets["empty"].to_dict(), {"pairs": 0})  # absent stays absent


def test_a_metric_this_version_does_not_know_is_kept(tmp_path):
    values = _report_dict()
    values["datasets"]["prefs.jsonl"]["overall"]["future_metric"] = 0.42
    values["datasets"]["prefs.jsonl"]["conservative"] = {"k": 1}
    report = EvalReport.from_dict(values)
    assert report.datasets["prefs.jsonl"].overall.extra == {"future_metric": 0.42}
    assert _same(report.to_dict(), values)


def test_old_report_without_version_loads_and_is_written_with_one(tmp_path):
    values = _report_dict()
    del values["schema_version"]
    for entry in values["datasets"].values():  # reports before invalid rows and sampling were recorded
        for key in ("invalid_rows", "max_rows", "sample", "seed"):
            del entry[key]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(values))
    report = EvalReport.from_json(str(path))
    assert report.datasets["rm.jsonl"].invalid_rows.count == 0
    assert report.to_dict()["schema_version"] == SCHEMA_VERSION


def test_several_models_are_written_and_read_as_models(tmp_path):
    first = EvalReport.from_dict(_report_dict())
    second = EvalReport.from_dict({**_report_dict(), "model": "runs/bt"})
    path = write_reports([first, second], str(tmp_path / "both.json"))
    assert [r.model for r in read_reports(path)] == ["runs/vrm", "runs/bt"]
    with pytest.raises(ReportFormatError, match="2 model reports"):
        EvalReport.from_json(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v.update(schema_version=SCHEMA_VERSION + 1), "newer than this vrm reads"),
        (lambda v: v.pop("datasets"), "missing field 'datasets'"),
        (
            lambda v: v["datasets"]["rm.jsonl"].update(overall=[1]),
            r"datasets\.rm\.jsonl\.overall: expected an object",
        ),
        (
            lambda v: v["datasets"]["prefs.jsonl"]["subsets"]["a"].pop("pairs"),
            r"subsets\.a: missing field 'pairs'",
        ),
    ],
)
def test_bad_reports_fail_with_the_file_and_field(tmp_path, change, message):
    values = _report_dict()
    change(values)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ReportFormatError, match=message):
        EvalReport.from_json(str(path))


def test_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model": "m",\n  "datasets": {,}}')
    with pytest.raises(ReportFormatError, match=r"broken\.json:2: not JSON"):
        EvalReport.from_json(str(path))


def test_every_committed_eval_report_loads():
    paths = report_files(RESULTS)
    assert any(p.endswith("eval_quickstart_models.json") for p in paths)
    for path in paths:
        reports = read_reports(path)
        assert reports and all(r.datasets for r in reports), path
        for report in reports:
            again = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
            assert _same(again.to_dict(), report.to_dict()), path
