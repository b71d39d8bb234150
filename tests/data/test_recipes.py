import gzip
import json
import math
import re

import pytest

from vrm.cli.main import main
from vrm.data.files import DataFormatError
from vrm.data.recipes import (
    ASPECTS,
    CORRECTION_SUBSET,
    aspect_ratings,
    finegrained_qa_to_preferences,
    question_key,
    split_questions,
)
from vrm.data.rows import load_preferences

PRED1 = "AAAA BBBB CCCC DDDD"  # 19 characters


def fake_row(index: int, question: str | None = None, preference=(1, 2, 0, 1, 1, 2), errors=None) -> dict:
    """One row in the FineGrainedRLHF QA-Feedback schema."""
    if errors is None:
        errors = [
            {"error type": "Irrelevant", "explanation": "", "start": 0, "end": 4},
            {"error type": "Irrelevant", "explanation": "", "start": 2, "end": 9},  # overlaps the first
            {"error type": "Wrong-Grounding", "explanation": "passage 1", "start": 10, "end": 14},
        ]
    return {
        "question": question or f"Who wrote book number {index}?",
        "passages": [
            [f"Book {index}", f"Book {index}\n\nBook {index} is a novel.", "It was written in 1900."]
        ],
        "gold": "Someone.",
        "prediction 1": PRED1,
        "prediction 2": f"Answer two for {index}.",
        "prediction 3": f"Answer three for {index}.",
        "prediction 4": f"Answer four for {index}.",
        "feedback": {"errors": errors, "missing-info": [], "corrected-prediction": "CCCC DDDD"},
        "preference": list(preference),
    }


def write_rows(path, rows) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def source(tmp_path):
    rows = [fake_row(i) for i in range(5)]
    rows.append(
        fake_row(9, question="  who WROTE book number 0? ", preference=(0, 0, 1, 2, 2, 1))
    )  # same as 0
    return write_rows(tmp_path / "fgqa.jsonl.gz", rows)


def test_ratings_by_hand():
    spans = [("irrelevant", 0, 4), ("irrelevant", 2, 9), ("wrong_grounding", 10, 14)]
    share = aspect_ratings(PRED1, spans, "error_share")
    assert share["irrelevant"] == pytest.approx(-9 / 19, abs=1e-6)  # union [0, 9): 9 of 19 characters
    assert share["wrong_grounding"] == pytest.approx(-4 / 19, abs=1e-6)
    assert share["unverifiable"] == share["redundant"] == share["incoherent"] == 0.0
    count = aspect_ratings(PRED1, spans, "error_count")
    assert count == {
        "irrelevant": -2.0,
        "wrong_grounding": -1.0,
        "unverifiable": 0.0,
        "redundant": 0.0,
        "incoherent": 0.0,
    }


def test_rows_ties_and_ratings_in_files(source, tmp_path):
    summary = finegrained_qa_to_preferences(source, tmp_path / "out", fractions=(0.5, 0.25, 0.25))
    rows = [
        row
        for split in ("train", "validation", "test")
        for row in read_jsonl(tmp_path / "out" / f"{split}.jsonl")
    ]
    assert summary["ties_skipped"] == 5 * 1 + 2  # one tie in each of the 5 default rows, two in the last
    assert summary["comparisons"] == 36
    assert summary["pairs_written"] == len(rows) == 36 - 7
    assert summary["questions"] == 5 and summary["duplicate_question_rows"] == 1
    assert sum(split["pairs"] for split in summary["splits"].values()) == len(rows)

    # preference (1, 2, 0, 1, 1, 2) for 1v2, 1v3, 1v4, 2v3, 2v4, 3v4
    first = [row for row in rows if row["prompt"].endswith("Question: Who wrote book number 1?")]
    assert {(r["chosen_prediction"], r["rejected_prediction"]) for r in first} == {
        (1, 2),
        (3, 1),
        (2, 3),
        (2, 4),
        (4, 3),
    }
    won = next(r for r in first if r["chosen_prediction"] == 1)
    assert won["chosen"] == PRED1 and won["rejected"] == "Answer two for 1."
    assert won["irrelevant_chosen"] == pytest.approx(-9 / 19, abs=1e-6)
    assert won["wrong_grounding_chosen"] == pytest.approx(-4 / 19, abs=1e-6)
    assert won["unverifiable_chosen"] == 0.0
    assert all(won[f"{a}_rejected"] is None for a in ASPECTS)  # prediction 2 has no fine-grained feedback
    lost = next(r for r in first if r["rejected_prediction"] == 1)
    assert (
        lost["irrelevant_rejected"] == pytest.approx(-9 / 19, abs=1e-6) and lost["irrelevant_chosen"] is None
    )
    other = next(r for r in first if 1 not in (r["chosen_prediction"], r["rejected_prediction"]))
    assert all(other[f"{a}_chosen"] is None and other[f"{a}_rejected"] is None for a in ASPECTS)
    assert won["subset"] == "finegrained_qa"
    assert won["prompt"] == (
        "Passages:\n[1] Book 1: Book 1 is a novel. It was written in 1900.\n\nQuestion: Who wrote book number 1?"
    )

    # prediction 1 (irrelevant error in every row) wins 1v2 and loses 1v3 in rows 0-4, wins 1v4 in the last
    outcome = summary["prediction_1_outcomes"]["irrelevant"]
    assert outcome["pairs_with_error"] == 11 and outcome["win_rate_with_error"] == pytest.approx(
        6 / 11, abs=1e-4
    )
    assert outcome["pairs_without_error"] == 0 and outcome["win_rate_without_error"] is None
    assert summary["agreement"]["finegrained_qa"]["irrelevant"]["pairs_rated_both_sides"] == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["ties_skipped"] == 7


def test_split_by_question_disjoint_and_deterministic(source, tmp_path):
    finegrained_qa_to_preferences(source, tmp_path / "a", seed=3, fractions=(0.4, 0.2, 0.4))
    finegrained_qa_to_preferences(source, tmp_path / "b", seed=3, fractions=(0.4, 0.2, 0.4))
    seen = {}
    for split in ("train", "validation", "test"):
        a, b = (tmp_path / d / f"{split}.jsonl" for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
        for row in read_jsonl(a):
            question = question_key(row["prompt"].split("Question: ")[-1])
            assert seen.setdefault(question, split) == split  # no question in two splits
    assert len(seen) == 5  # the duplicate question (other case and spaces) went with its twin

    keys = [f"question {i}" for i in range(40)]
    first = split_questions(keys, (0.7, 0.1, 0.2), seed=0)
    assert first == split_questions(list(reversed(keys)), (0.7, 0.1, 0.2), seed=0)  # order does not matter
    assert first != split_questions(keys, (0.7, 0.1, 0.2), seed=1)
    assert [list(first.values()).count(s) for s in ("train", "validation", "test")] == [28, 4, 8]
    with pytest.raises(ValueError, match="fractions"):
        split_questions(keys, (0.7, 0.2, 0.2), seed=0)


def test_files_load_with_ratings_and_corrections(source, tmp_path):
    summary = finegrained_qa_to_preferences(
        source, tmp_path / "out", rating="error_count", include_passages=False, include_corrections=True
    )
    assert summary["correction_pairs_written"] == 6 and summary["corrections_skipped_identical"] == 0
    paths = [str(tmp_path / "out" / f"{split}.jsonl") for split in ("train", "validation", "test")]
    examples = load_preferences([p for p in paths if read_jsonl(p)], attribute_names=list(ASPECTS))
    assert len(examples) == summary["pairs_written"] + 6
    plain = [e for e in examples if e.subset == "finegrained_qa"]
    assert all(all(math.isnan(t) for t in e.attribute_targets) for e in plain)  # one side rated at most
    assert plain[0].prompt.startswith("Who wrote book number")  # no passages
    corrections = [e for e in examples if e.subset == CORRECTION_SUBSET]
    assert corrections[0].chosen == "CCCC DDDD" and corrections[0].rejected == PRED1
    targets = corrections[0].attribute_targets
    assert targets[:2] == [1.0, 1.0] and all(
        math.isnan(t) for t in targets[2:]
    )  # irrelevant, wrong_grounding
    agreement = summary["agreement"][CORRECTION_SUBSET]
    assert agreement["irrelevant"] == {
        "pairs_rated_both_sides": 6,
        "chosen_higher": 1.0,
        "chosen_lower": 0.0,
        "equal": 0.0,
    }
    assert agreement["redundant"]["equal"] == 1.0


@pytest.mark.parametrize(
    "line, change, message",
    [
        (3, {"preference": [1, 2, 0, 1, 1]}, ":3: field 'preference'"),
        (2, {"prediction 3": ""}, ":2: field 'prediction 3'"),
        (
            4,
            {"feedback": {"errors": [{"error type": "Irrelevant", "start": 5, "end": 40}]}},
            ":4: field 'feedback.errors[0].start/end'",
        ),
        (
            1,
            {"feedback": {"errors": [{"error type": "Typo", "start": 0, "end": 2}]}},
            ":1: field 'feedback.errors[0].error type'",
        ),
        (2, {"passages": "text"}, ":2: field 'passages'"),
        (3, {"question": "why\ud800?"}, ":3: 'question' is not valid Unicode text (lone surrogate"),
    ],
)
def test_malformed_row_names_file_line_field(tmp_path, line, change, message):
    rows = [fake_row(i) for i in range(4)]
    rows[line - 1].update(change)
    path = write_rows(tmp_path / "bad.jsonl.gz", rows)
    with pytest.raises(DataFormatError, match=re.escape(f"bad.jsonl.gz{message}")):
        finegrained_qa_to_preferences(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing is written before every row is checked


def test_recipe_command_writes_the_splits_and_names_a_missing_input(source, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            [
                "recipe",
                "finegrained-qa",
                "--input",
                source,
                "--output_dir",
                str(out),
                "--seed",
                "1",
                "--no_passages",
            ]
        )
        == 0
    )
    assert "tied comparisons skipped" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["seed"] == 1 and summary["include_passages"] is False and summary["rating"] == "error_share"
    )
    assert all((out / f"{split}.jsonl").exists() for split in ("train", "validation", "test"))
    assert (
        main(
            ["recipe", "finegrained-qa", "--input", str(tmp_path / "missing.jsonl"), "--output_dir", str(out)]
        )
        == 1
    )
    assert "file not found" in capsys.readouterr().err


def test_recipe_says_how_many_pairs_are_rated_on_both_sides_and_how_to_get_more(source, tmp_path, capsys):
    base = ["recipe", "finegrained-qa", "--input", source, "--no_passages"]
    assert main([*base, "--output_dir", str(tmp_path / "plain")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert sum(split["rated_both_sides"] for split in summary["splits"].values()) == 0
    assert "(0 rated on both sides)" in out and "pass --corrections" in out
    assert main([*base, "--output_dir", str(tmp_path / "corrected"), "--corrections"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "corrected" / "summary.json").read_text())
    assert sum(split["rated_both_sides"] for split in summary["splits"].values()) == 6  # one per question row
    assert "pass --corrections" not in out
