"""Training rows that feed each auxiliary term: counted, printed before training, and a term with a coefficient
but no rows is refused (it would train at 0 every step)."""

from __future__ import annotations

import json
import math

import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.data.rows import parse_preferences
from vrm.training.auxiliary_terms import AuxiliaryTermCounts

NAN = math.nan


def examples(rows, **kwargs):
    return parse_preferences(((f"row {i}", row) for i, row in enumerate(rows)), "rows", **kwargs)


def test_counts_follow_what_each_term_can_learn_from():
    rows = [
        # rated on both sides, two objectives with different gaps: feeds the score and the ratings -> weights terms
        {
            "chosen": "a",
            "rejected": "b",
            "help_chosen": 2,
            "help_rejected": 0,
            "harm_chosen": 1,
            "harm_rejected": 1,
        },
        # one side rated only (a recipe without --corrections): feeds nothing
        {"chosen": "a", "rejected": "b", "help_chosen": 2, "harm_chosen": 1},
        # a tie on the one objective rated on both sides: nothing under sign targets, the score term when graded
        {"chosen": "a", "rejected": "b", "help_chosen": 1, "help_rejected": 1},
        # an objective label only
        {"chosen": "a", "rejected": "b", "objective": "harm"},
    ]
    read = examples(rows, attribute_names=["help", "harm"], objective_column="objective")
    assert AuxiliaryTermCounts.of(read) == AuxiliaryTermCounts(4, 1, 2, 1)
    assert AuxiliaryTermCounts.of(read, "graded").attribute_ratings == 3


def _train_argv(train_argv, backbone, data, output, **flags):
    return ["train", *train_argv(backbone, data, output, max_steps=1, **flags)]


@pytest.mark.parametrize(
    "flags, refused",
    [
        # ratings on one side only: the attribute term (default weight 1) has nothing to learn from
        ({"attribute_names": "help harm"}, "--attribute_names help, harm: none of the 6 training rows"),
        (
            {"attribute_names": "help harm", "attribute_weight": 0, "rating_weight_coef": 1},
            "--rating_weight_coef 1.0: none of the 6 training rows",
        ),
        (
            {
                "attribute_names": "help harm",
                "attribute_weight": 0,
                "objective_column": "objective",
                "objective_label_weight": 1,
            },
            "--objective_label_weight 1.0: none of the 6 training rows",
        ),
    ],
)
def test_a_term_that_no_row_feeds_is_refused_in_one_line(
    tmp_path, llama_backbone_dir, train_argv, write_pairs, capsys, one_line_error, flags, refused
):
    rows = [
        {"prompt": p, "chosen": c, "rejected": r, "help_chosen": 1.0, "harm_chosen": 0.5, "objective": None}
        for p, c, r in PAIRS
    ]
    data = write_pairs(str(tmp_path / "one_side.jsonl"), rows)
    argv = _train_argv(train_argv, llama_backbone_dir, data, str(tmp_path / "out"))
    for key, value in flags.items():
        argv += [f"--{key}", *str(value).split()]
    assert main(argv) == 1
    line = one_line_error("train")
    assert refused in line and "or pass --" in line
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.slow
def test_the_counts_are_printed_before_training_and_kept_in_train_results(
    tmp_path, llama_backbone_dir, train_argv, write_pairs, capsys
):
    rows = [
        {
            "prompt": p,
            "chosen": c,
            "rejected": r,
            "help_chosen": i % 3,
            "help_rejected": 1,
            "harm_chosen": 2,
            "harm_rejected": 0 if i % 2 else None,
        }
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    data = write_pairs(str(tmp_path / "rated.jsonl"), rows)
    output = tmp_path / "out"
    argv = _train_argv(train_argv, llama_backbone_dir, data, str(output), rating_weight_coef=1)
    assert main([*argv, "--attribute_names", "help", "harm"]) == 0
    expected = AuxiliaryTermCounts.of(examples(rows, attribute_names=["help", "harm"]))
    assert expected.ratings_to_weights > 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "auxiliary terms" in line]
    assert (
        len(lines) == 1
        and f"ratings -> weights {expected.ratings_to_weights} (--rating_weight_coef 1.0)" in lines[0]
    )
    results = json.loads((output / "train_results.json").read_text())
    assert results["auxiliary_terms"] == expected.as_dict()


@pytest.mark.slow
def test_objective_names_name_the_labels_of_an_objective_column(
    tmp_path, llama_backbone_dir, train_argv, write_pairs, capsys
):
    rows = [
        {"prompt": p, "chosen": c, "rejected": r, "objective": "safe" if i % 2 else "helpful"}
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    data = write_pairs(str(tmp_path / "labelled.jsonl"), rows)
    output = tmp_path / "out"
    argv = _train_argv(
        train_argv,
        llama_backbone_dir,
        data,
        str(output),
        objective_column="objective",
        objective_label_weight=1,
    )
    assert main([*argv, "--objective_names", "helpful", "safe"]) == 0
    results = json.loads((output / "train_results.json").read_text())
    assert results["auxiliary_terms"]["objective_labels"] == len(rows)
