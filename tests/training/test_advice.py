"""`vrm.training.advice.head_advice`: the one-line head recommendation printed at the start of training."""

from __future__ import annotations

import json

import pytest

from vrm.training.advice import SMALL_DATA_PAIRS, head_advice


@pytest.mark.parametrize("head", ["moe", "vrm", "vrm-paper"])
def test_a_weighted_head_without_ratings_or_labels_is_advised_bt(head):
    advice = head_advice(head, 5000, has_ratings=False, has_objective_labels=False)
    assert advice is not None and "bt" in advice and head in advice
    assert "\n" not in advice  # one line


def test_bt_with_ratings_or_labels_is_pointed_at_the_heads_that_read_them():
    rated = head_advice("bt", 5000, has_ratings=True, has_objective_labels=False)
    assert "per-objective ratings" in rated and "vrm, moe" in rated
    labelled = head_advice("bt", 5000, has_ratings=False, has_objective_labels=True)
    assert "objective labels" in labelled and "vrm" in labelled
    assert "moe did not" in labelled  # on real labels only vrm held up better than bt under the shift


def test_the_recommended_head_gets_no_advice():
    assert head_advice("bt", 50, has_ratings=False, has_objective_labels=False) is None
    assert head_advice("vrm", 50, has_ratings=True, has_objective_labels=False) is None  # size alone: no rule
    assert head_advice("moe", SMALL_DATA_PAIRS, has_ratings=False, has_objective_labels=True) is None
    assert head_advice("ib", 100, has_ratings=False, has_objective_labels=False) is None


def test_moe_on_few_labelled_pairs_is_advised_vrm_and_the_threshold_is_exclusive():
    few = head_advice("moe", SMALL_DATA_PAIRS - 1, has_ratings=True, has_objective_labels=False)
    assert few is not None and str(SMALL_DATA_PAIRS - 1) in few and "--head_type vrm" in few
    assert head_advice("moe", None, has_ratings=True, has_objective_labels=False) is None  # size unknown


def test_examples_advice_reads_ratings_and_labels_off_the_examples():
    from vrm.data.examples import PreferenceExample
    from vrm.training.advice import examples_advice

    plain = [PreferenceExample("p", "a", "b") for _ in range(3)]
    labelled = plain + [PreferenceExample("p", "a", "b", objective_label=1)]
    unknown_label = plain + [PreferenceExample("p", "a", "b", objective_label=-1)]
    rated = plain + [PreferenceExample("p", "a", "b", rating_differences=[0.5, float("nan")])]
    assert "bt" in examples_advice("vrm", plain)
    assert examples_advice("vrm", unknown_label) == examples_advice("vrm", plain)  # -1: no label
    assert "objective labels" in examples_advice("bt", labelled)
    assert "per-objective ratings" in examples_advice("bt", rated)
    assert examples_advice("bt", plain) is None


def test_vrm_train_prints_one_advice_line_and_still_trains(
    tmp_path, bert_backbone_dir, pairs_file, train_argv
):
    from vrm.cli.train import parse_train_args, train_from_arguments

    argv = train_argv(bert_backbone_dir, pairs_file, str(tmp_path / "out"), head_type="vrm", max_steps=1)
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_from_arguments(*parse_train_args(argv))
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[vrm] advice:")]
    assert len(lines) == 1 and "bt" in lines[0]
    assert (tmp_path / "out" / "config.json").exists()


def test_rating_columns_without_values_are_not_ratings(tmp_path):
    # with --attribute_names every row carries rating lists (NaN where unrated), and an objective label sets an
    # attribute target: neither is a rating
    from vrm.data.rows import load_preferences
    from vrm.training.advice import examples_advice

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "objective": "safe"} for i in range(5)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    labelled = load_preferences(str(path), attribute_names=["helpful", "safe"], objective_column="objective")
    assert "objective labels" in examples_advice("bt", labelled)
    unrated = load_preferences(str(path), attribute_names=["helpful", "safe"])
    assert "bt" in examples_advice("vrm", unrated)
