"""`vrm eval` reports are strict JSON: an undefined metric (NaN) is written as `null`, which any JSON parser
reads, and comes back from the file as the NaN the report holds (tables and markdown render it as before)."""

from __future__ import annotations

import json
import math

import pytest

from vrm.cli.main import main
from vrm.data.files import write_json
from vrm.evaluation.markdown import markdown_summary
from vrm.evaluation.report import EvalReport


def strict_load(path):
    """json.load as a strict parser (JavaScript, jq, Go) reads: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    with open(path, encoding="utf-8") as handle:
        return json.loads(handle.read(), parse_constant=refuse)


def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    path = str(tmp_path / "out.json")
    write_json({"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": (2, math.nan), "e": "NaN"}, path)
    assert strict_load(path) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, None], "e": "NaN"}
    write_json({"a": math.nan}, path, indent=None)
    assert strict_load(path) == {"a": None}


def test_a_report_without_shorter_chosen_answers_is_strict_json_and_reads_back_as_nan(
    tmp_path, saved_vrm_model, pairs_file, capsys
):
    # in every pair of the default file the chosen answer is the longer one: no "chosen shorter" accuracy
    output, summary = str(tmp_path / "report.json"), str(tmp_path / "summary.md")
    argv = ["eval", "--model", saved_vrm_model, "--dataset", pairs_file, "--no_progress"]
    assert main([*argv, "--output", output, "--markdown", summary]) == 0
    capsys.readouterr()

    written = strict_load(output)  # NaN would fail here
    length_bias = written["datasets"][pairs_file]["overall"]["length_bias"]
    assert length_bias["accuracy_chosen_shorter"] is None and length_bias["pairs_chosen_shorter"] == 0

    report = EvalReport.from_json(output)
    read_back = report.datasets[pairs_file].overall.length_bias
    assert math.isnan(read_back.accuracy_chosen_shorter)
    assert read_back.accuracy_chosen_longer == pytest.approx(length_bias["accuracy_chosen_longer"])
    # written again, the same strict file; the markdown of the file is the markdown vrm eval wrote
    again = report.to_json(str(tmp_path / "again.json"))
    assert strict_load(again) == written
    with open(summary, encoding="utf-8") as handle:
        text = handle.read()
    assert markdown_summary([report]) == text
    assert "| acc chosen-shorter |" in text
