"""Bad input files and rows: a one-line error naming file:line:field, never a traceback or a silent result;
non-finite numbers never get in."""

import gzip
import json
import math

import pytest

from vrm.data.files import DataFormatError, finite_number
from vrm.data.rows import load_preferences, parse_row
from vrm.evaluation.benchmark_rules import detect_format
from vrm.evaluation.best_of_n import read_pool
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file

ROW = {"prompt": "p", "chosen": "a good answer", "rejected": "a bad answer"}


def _truncated_gz(path):
    data = gzip.compress((json.dumps(ROW) + "\n").encode() * 3000)
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_margin_is_an_error_naming_the_row(tmp_path, value):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW)[:-1] + f', "margin": {value}}}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: 'margin' must be a number \(not NaN"):
        load_preferences(str(path))


def test_non_finite_margin_in_csv_and_blank_margin(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b,\np,a,b,inf\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv:4: 'margin' must be a number"):
        load_preferences(str(path))
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b,\n")
    assert [e.margin for e in load_preferences(str(path))] == [1.5, None]


def test_finite_number_helper_for_ratings():
    assert finite_number("3", "f:1", "help_chosen") == 3.0
    assert math.isnan(finite_number(None, "f:1", "help_chosen", missing=math.nan))  # not rated
    assert finite_number(" ", "f:1", "help_chosen") is None  # a blank CSV cell
    for bad in (float("nan"), float("inf"), "inf", True, "good", [1], 10**400):
        with pytest.raises(DataFormatError, match=r"^f:1: 'help_chosen' must be a number"):
            finite_number(bad, "f:1", "help_chosen")


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("x.csv", lambda p: p.write_text("prompt,chosen,rejected\np,a,b,extra\n"), r"x\.csv:2: 1 more field"),
        ("x.csv", lambda p: p.write_text('prompt,chosen,rejected\np,"a,b\n'), r"x\.csv:2: invalid CSV"),
        ("x.csv", lambda p: p.write_text('prompt,chosen,rejected\np,"a"b,c\n'), r"x\.csv:2: invalid CSV"),
        ("x.jsonl.gz", _truncated_gz, r"x\.jsonl\.gz:\d+: the compressed file is truncated"),
        ("x.jsonl.gz", lambda p: p.write_text(json.dumps(ROW) + "\n"), r"x\.jsonl\.gz: not a gzip file"),
        (
            "x.jsonl",
            lambda p: p.write_bytes(json.dumps(ROW).encode() + b'\n{"prompt": "\xff"}\n'),
            r"x\.jsonl:2: not UTF-8 text \(byte 0xff",
        ),
        ("x.json", lambda p: p.write_bytes(b'[{"prompt": "\xfe"}]'), r"x\.json:1: not UTF-8"),
        ("x.jsonl", lambda p: p.write_text("[" * 100_000 + "]" * 100_000 + "\n"), r"x\.jsonl:1: JSON nested"),
        ("x.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), r"x\.json: JSON nested too deeply"),
        (
            "x.csv",
            lambda p: p.write_text("prompt,chosen,rejected\n" + "[" * 100_000 + ",a,b\n"),
            r"x\.csv:2: 'prompt' holds JSON nested too deeply",
        ),
        ("x.parquet", lambda p: p.write_text("not parquet"), r"x\.parquet: not a readable parquet file"),
    ],
    ids=[
        "csv-extra-field",
        "csv-unterminated-quote",
        "csv-bad-quote",
        "gz-truncated",
        "gz-not-gzip",
        "jsonl-not-utf8",
        "json-not-utf8",
        "jsonl-deep",
        "json-deep",
        "csv-deep-cell",
        "parquet-garbage",
    ],
)
def test_unreadable_files_raise_one_line_errors(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataFormatError, match=message) as caught:
        load_preferences(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "row, field",
    [
        ({**ROW, "chosen": "good \ud800 answer"}, "'chosen' is not valid Unicode"),
        ({**ROW, "prompt": "p\udfff"}, "'prompt' is not valid Unicode"),
        ({**ROW, "prompt": [{"role": "user", "content": "\ud800"}]}, r"'prompt\[0\]\.content' is not valid"),
    ],
)
def test_lone_surrogates_are_rejected_when_parsed(row, field):
    with pytest.raises(DataFormatError, match=rf"^f:3: {field}"):
        parse_row(row, "f:3")


def test_subset_must_be_a_name():
    with pytest.raises(DataFormatError, match=r"^f:1: 'subset' must be a name"):
        parse_row({**ROW, "subset": {"a": 1}}, "f:1")
    assert parse_row({**ROW, "subset": 3}, "f:1").subset == "3"
    assert detect_format([{**ROW, "subset": {"a": 1}}]) == "pairwise"  # no TypeError (unhashable)


def test_the_benchmark_corpus_is_refused_with_the_messages_it_expects(tmp_path, tiny_model):
    """`benchmarks/robustness/` replays this corpus against the commands; in-process, each file and row must
    already give the error its pattern names (keeps the corpus and the messages in step)."""
    from bad_inputs import pool_files, preference_files, score_files

    for item in preference_files():
        attributes = item.args[1:] if item.args[:1] == ("--attribute_names",) else ()
        if item.also_accepted:
            continue
        with pytest.raises(DataFormatError, match=item.message):
            load_preferences(item.write(str(tmp_path)), attribute_names=attributes)
    for item in pool_files():
        with pytest.raises(DataFormatError, match=item.message):
            read_pool(item.write(str(tmp_path)), "gold")
    model, tokenizer, _ = tiny_model("llama_chat")
    pipeline = RewardPipeline(model, tokenizer)
    for item in score_files():
        with pytest.raises(DataFormatError, match=item.message):
            output = str(tmp_path / f"{item.case}.out")
            score_file(pipeline, item.write(str(tmp_path)), output, progress=False)
