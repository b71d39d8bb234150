"""`vrm recipe`: turn a public feedback dataset into vrm preference files (`vrm.data.recipes`)."""

from __future__ import annotations

import argparse

HELP = "turn a public feedback dataset into preference files (`vrm recipe finegrained-qa`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vrm.data.recipes import RATINGS

    parser.add_argument(
        "recipe", choices=["finegrained-qa"], help="FineGrainedRLHF QA-Feedback (jsonl[.gz])."
    )
    parser.add_argument("--input", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split by question.")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--rating", choices=RATINGS, default="error_share")
    parser.add_argument("--no_passages", action="store_true", help="Prompt = the question only.")
    parser.add_argument(
        "--corrections", action="store_true", help="Add (human correction > prediction 1) pairs."
    )


def run(args: argparse.Namespace) -> int:
    from vrm.data.recipes import finegrained_qa_to_preferences

    summary = finegrained_qa_to_preferences(
        args.input,
        args.output_dir,
        seed=args.seed,
        fractions=args.fractions,
        rating=args.rating,
        include_passages=not args.no_passages,
        include_corrections=args.corrections,
    )
    for name, split in summary["splits"].items():
        print(
            f"[vrm] {name}: {split['pairs']} pairs ({split['rated_both_sides']} rated on both sides), "
            f"{split['questions']} questions -> {split['path']}"
        )
    if not args.corrections:
        print(
            "[vrm] ratings exist for prediction 1 only, so no preference pair is rated on both sides: the rating "
            "terms (--attribute_names, --rating_weight_coef) need such pairs; pass --corrections to add one per "
            "question (human correction > prediction 1)"
        )
    print(
        f"[vrm] {summary['ties_skipped']} tied comparisons skipped; summary: {args.output_dir}/summary.json"
    )
    return 0
