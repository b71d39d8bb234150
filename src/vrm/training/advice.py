"""One line of advice at the start of training: which head the committed evidence recommends for this data.

`head_advice` reads the chosen head, the number of training pairs and whether the pairs carry per-objective
ratings or objective labels, and returns a sentence when the evidence of `docs/which_head.md` recommends another
head (None otherwise). It is advice, never a refusal: training goes on with the chosen head. Each rule is a row
of that page's table, and each constant names the committed result file it comes from:

* no ratings and no objective labels, a head with objective weights (moe, vrm, vrm-paper) -> bt: without them
  the weights stay near uniform and the head was no better than bt (`NO_LABELS_EVIDENCE`);
* ratings or objective labels and fewer than `SMALL_DATA_PAIRS` pairs, moe -> vrm: on the learning curves vrm
  read them better than moe's gate when pairs were few (`SMALL_DATA_EVIDENCE`);
* ratings, bt -> a head that reads them (vrm, moe): under a distribution shift both held up better than bt at
  every size tested (`LABELS_EVIDENCE`);
* objective labels only, bt -> vrm: on prompt categories it was not trained on vrm was ahead of bt at every size
  tested (125 to 5,391 pairs) where moe, reading the same labels, was not; in distribution neither was better
  (`LABELS_EVIDENCE`).

The data size is no reason on its own to leave bt: on real data vrm's held-out accuracy was not better than bt's
at any size tested (125 to 5,400 pairs), and its smaller train − held-out gap came from fitting the training
pairs less. Ratings and labels count only where training reads them (`--attribute_names`, `--objective_column`):
data whose rating columns were not named is data without ratings here.
"""

from __future__ import annotations

from vrm.training.auxiliary_terms import known_values

WEIGHTED_HEADS = ("moe", "vrm", "vrm-paper")

# benchmarks/results/learning_curves.json (paired_tests_vrm_vs_moe): vrm ahead of moe at 125-500 pairs, level at
# 1,000
SMALL_DATA_PAIRS = 1000
SMALL_DATA_EVIDENCE = "benchmarks/results/learning_curves.json"
# benchmarks/results/synthetic_world.json (vrm_noratings vs bt) and study.json (frozen: vrm (no labels) vs bt)
NO_LABELS_EVIDENCE = "benchmarks/results/synthetic_world.json, benchmarks/results/study.json"
# learning_curves.json (shifted sets, every size: synthetic vrm and moe ahead of bt; real data vrm ahead, moe
# within ±0.016 of bt), study.json (frozen: held-out harmlessness categories +, AlpacaEval −)
LABELS_EVIDENCE = "benchmarks/results/learning_curves.json, benchmarks/results/study.json"


def head_advice(
    head_type: str, train_pairs: int | None, has_ratings: bool, has_objective_labels: bool
) -> str | None:
    """A one-line recommendation when the evidence favours another head for this data; None when the chosen
    head is the recommended one (or no rule applies). See the module docstring for the rules."""
    labelled = has_ratings or has_objective_labels
    if head_type in WEIGHTED_HEADS and not labelled:
        return (
            f"--head_type {head_type} without per-objective ratings or objective labels was no better than bt "
            f"in the committed comparisons ({NO_LABELS_EVIDENCE}); bt is the simpler head (see "
            "docs/which_head.md)"
        )
    if head_type == "moe" and train_pairs is not None and train_pairs < SMALL_DATA_PAIRS:
        return (
            f"with {train_pairs} training pairs (< {SMALL_DATA_PAIRS}) vrm read ratings and labels better than "
            f"moe on the learning curves ({SMALL_DATA_EVIDENCE}); consider --head_type vrm (see "
            "docs/which_head.md)"
        )
    if head_type == "bt" and has_ratings:
        return (
            "the data carries per-objective ratings: heads that read them (vrm, moe) held up better than bt "
            f"under a distribution shift, though not in distribution ({LABELS_EVIDENCE}; see docs/which_head.md)"
        )
    if head_type == "bt" and has_objective_labels:
        return (
            "the data carries objective labels: vrm, reading them, held up better than bt on prompt categories "
            f"it was not trained on (moe did not), though not in distribution ({LABELS_EVIDENCE}; see "
            "docs/which_head.md)"
        )
    return None


def examples_advice(head_type: str, examples) -> str | None:
    """`head_advice` of read training examples (`vrm.data.PreferenceExample`): their count, and whether any
    carries a known rating (a rating or a rating difference that is not NaN) or an objective label."""
    # known values only: with --attribute_names every row carries rating lists, NaN where a rating is missing,
    # and an objective label alone sets an attribute target (1 on its objective) without being a rating
    has_ratings = any(known_values(e.rating_differences) or known_values(e.ratings_chosen) for e in examples)
    has_labels = any(e.objective_label is not None and e.objective_label >= 0 for e in examples)
    return head_advice(head_type, len(examples), has_ratings, has_labels)
