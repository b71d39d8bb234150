"""Reading preference rows (`vrm.data.rows`): every format and file type, ratings and objective labels, and
clear errors for malformed rows."""

import gzip
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from preference_formats import CHOSEN, FORMATS, PROMPT, REJECTED, conversational
from tiny_models import make_llama_tokenizer

from vrm.data.collate import PreferenceCollator
from vrm.data.files import DataFormatError
from vrm.data.ratings import rating_ranges
from vrm.data.rows import load_preferences, parse_row
from vrm.data.tokenization import PreferenceTokenizer


def test_standard_implicit_prompt_is_the_common_prefix():
    example = parse_row({"chosen": f"{PROMPT} {CHOSEN}", "rejected": f"{PROMPT} {REJECTED}"}, "row")
    assert example.prompt == PROMPT + " "
    assert (example.chosen, example.rejected) == (CHOSEN, REJECTED)
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(chat=False), max_length=128)
    implicit = tokenizer.tokenize_pairs([example])[0][0]
    explicit = tokenizer.tokenize_pairs([parse_row(FORMATS["standard_explicit"], "ref")])[0][0]
    assert implicit.prompt_length == explicit.prompt_length + 1  # the trailing space stays with the prompt


def test_file_types_parse_to_the_same_examples(tmp_path):
    rows = [
        dict(FORMATS["standard_explicit"], margin=0.5, subset="s"),
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "margin": None, "subset": None},
    ]
    paths = []
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    paths.append(tmp_path / "d.jsonl")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    paths.append(tmp_path / "d.jsonl.gz")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    paths.append(tmp_path / "d.json")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    paths.append(tmp_path / "d.parquet")
    reference = load_preferences(str(paths[0]))
    assert reference[0].margin == 0.5 and reference[0].subset == "s" and reference[1].margin is None
    for path in paths[1:]:
        loaded = load_preferences(str(path))
        assert [(e.prompt, e.chosen, e.rejected, e.margin, e.subset) for e in loaded] == [
            (e.prompt, e.chosen, e.rejected, e.margin, e.subset) for e in reference
        ], path


def test_csv_with_message_columns(tmp_path):
    path = tmp_path / "d.csv"
    row = conversational()
    path.write_text(
        "prompt,chosen,rejected\n"
        + ",".join('"' + json.dumps(row[c]).replace('"', '""') + '"' for c in row)
        + "\n"
    )
    (example,) = load_preferences(str(path))
    assert example.prompt == row["prompt"] and example.chosen == row["chosen"]


def test_ratings_and_objective_column_become_attribute_targets():
    row = {
        "prompt": "p",
        "chosen": "a",
        "rejected": "b",
        "help_chosen": 5,
        "help_rejected": 3,
        "honesty_chosen": 2,
        "honesty_rejected": 2,
        "objective": "safety",
    }
    example = parse_row(
        row, "r", attribute_names=["help", "honesty", "safety", "style"], objective_column="objective"
    )
    targets = example.attribute_targets  # help: 5 > 3; honesty: tie; safety: named by the objective column
    assert targets[0] == 1.0 and math.isnan(targets[1]) and targets[2] == 1.0 and math.isnan(targets[3])
    assert example.objective_label == 2
    names = ["help", "honesty", "safety", "style"]
    unlabelled = parse_row(
        dict(row, objective=None), "r", attribute_names=names, objective_column="objective"
    )
    assert unlabelled.objective_label == -1  # a labelled dataset's row without a label: masked, not dropped
    assert parse_row(row, "r", attribute_names=names).objective_label is None  # no objective column asked for
    with pytest.raises(DataFormatError, match="r: 'objective' is 'tone'"):
        parse_row(dict(row, objective="tone"), "r", attribute_names=["help"], objective_column="objective")


def test_ratings_become_graded_differences_on_one_scale(tmp_path):
    """(rho+ - rho-) / range per objective, range from the rows read (or given: evaluation data takes the
    training data's scale); ties are 0 (kept), missing ratings nan; the batch carries them as a tensor."""
    rows = [
        {
            "prompt": "p",
            "chosen": "a",
            "rejected": "b",
            "help_chosen": 5,
            "help_rejected": 1,
            "tone_chosen": 2,
            "tone_rejected": 2,
        },
        {
            "prompt": "q",
            "chosen": "c",
            "rejected": "d",
            "help_chosen": 3,
            "help_rejected": 4,
            "tone_chosen": None,
            "tone_rejected": None,
        },
        {"prompt": "r", "chosen": "e", "rejected": "f"},
    ]
    path = tmp_path / "rated.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    first, second, third = load_preferences(str(path), attribute_names=["help", "tone"])
    help_range, tone_range = rating_ranges([first, second, third])
    assert help_range == 4.0 and math.isnan(tone_range)  # help spans 1..5; tone has one value (no spread: 1)
    assert first.rating_differences == [1.0, 0.0]
    assert second.rating_differences[0] == -0.25 and math.isnan(second.rating_differences[1])
    assert all(math.isnan(v) for v in third.rating_differences)
    assert math.isnan(first.attribute_targets[1])  # the sign target still drops the tie
    (rescaled, *_) = load_preferences(str(path), attribute_names=["help", "tone"], rating_scale=[8.0, 2.0])
    assert rescaled.rating_differences == [0.5, 0.0]
    for bad in (math.inf, "n/a", True):  # a rating that is there must be a finite number
        with pytest.raises(DataFormatError, match="f.jsonl:3: 'help_rejected' must be a number"):
            parse_row(dict(rows[0], help_rejected=bad), "f.jsonl:3", attribute_names=["help", "tone"])
    unrated = parse_row(dict(rows[0], help_rejected=math.nan), "r", attribute_names=["help"])  # NaN: missing
    assert math.isnan(unrated.ratings_rejected[0]) and math.isnan(unrated.attribute_targets[0])
    # evaluation data on the training scale; where training saw no spread (tone), the data's own spread
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text(
        json.dumps(dict(rows[0], help_rejected=3, tone_chosen=10, tone_rejected=0))
        + "\n"
        + json.dumps(dict(rows[0], help_chosen=9, help_rejected=-7, tone_chosen=5, tone_rejected=5))
    )
    near, far = load_preferences(
        str(eval_path), attribute_names=["help", "tone"], rating_scale=[4.0, math.nan]
    )
    assert near.rating_differences == [0.5, 1.0] and far.rating_differences == [1.0, 0.0]  # far: clamped to 1
    assert load_preferences(str(path))[0].rating_differences is None  # no attribute names: no ratings read
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=64)
    batch = PreferenceCollator(pad_token_id=0)(tokenizer.tokenize_pairs([first, second])[0])
    assert batch["rating_differences"][0].tolist() == [1.0, 0.0]
    assert batch["rating_differences"][1, 0] == -0.25 and torch.isnan(batch["rating_differences"][1, 1])


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "a"})
        + "\n"
    )
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: missing field 'rejected'"):
        load_preferences(str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{not json}\n', r"bad\.jsonl:2: invalid JSON"),
        ('["a", "b"]\n', r"bad\.jsonl:1: expected a JSON object"),
        (
            '{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}\n',
            r":1: 'prompt'\[0\] must be a message",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": ["x"]}\n', r":1: 'chosen' and 'rejected' must both be"),
        ('{"prompt": "p", "chosen": "", "rejected": "b"}\n', r":1: empty 'chosen' or 'rejected'"),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}\n',
            r":1: 'margin' must be a number",
        ),
        ("\n", r"no preference rows"),
    ],
)
def test_malformed_rows_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message):
        load_preferences(str(path))


def test_wrong_path_and_unknown_file_type(tmp_path):
    with pytest.raises(DataFormatError, match="missing.jsonl: file not found"):
        load_preferences(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataFormatError, match="unknown file type"):
        load_preferences(str(tmp_path / "data.txt"))


def test_a_local_datasets_directory_loads_by_split(tmp_path):
    """The `datasets` path (hub names) exercised offline: a local folder of data files is a datasets name."""
    folder = tmp_path / "my_prefs"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(FORMATS["standard_explicit"]) + "\n")
    (folder / "test.jsonl").write_text(
        json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n"
    )
    (train,) = load_preferences(str(folder), split="train")
    (test,) = load_preferences(str(folder), split="test")
    assert train.prompt == PROMPT and test.chosen == "Hello!"
    assert "my_prefs[test]: row 0" in test.location


def test_an_empty_response_names_the_row_the_flag_and_the_evaluation_rule(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(
        DataFormatError,
        match=r"pairs.jsonl:1: empty 'chosen' or 'rejected' response.*--skip_invalid_rows.*evaluation scores an empty answer",
    ):
        load_preferences(str(path))
    assert parse_row({"prompt": "p", "chosen": "a", "rejected": ""}, "x:1", allow_empty=True).rejected == ""
