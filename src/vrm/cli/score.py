"""`vrm score`: score every row of a file of (prompt, response) rows into a jsonl, resumably; launched with
`accelerate launch -m vrm score ...` or `torchrun -m vrm score ...`, each process scores a shard of the rows on its
own device and the output is the one a single process writes (`vrm.scoring.score_file`)."""

from __future__ import annotations

import argparse

from vrm.cli.options import add_device_arguments, add_model_arguments, check_device, model_paths

HELP = "score a file of (prompt, response) rows (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--input", required=True, help="jsonl/json/parquet/csv rows: prompt + response, or messages."
    )
    parser.add_argument("--output", required=True, help="jsonl output (resumed if it exists).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="Rows per batch at the longest length; shorter rows go in larger batches (a token budget).",
    )
    parser.add_argument("--chunk_size", type=int, default=256, help="Rows written (and fsync'ed) at a time.")
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="Override the training max_length (cut to the backbone's max_position_embeddings).",
    )
    parser.add_argument("--prompt_column", default="prompt")
    parser.add_argument("--response_column", default="response")
    parser.add_argument("--conservative_lambda", type=float, default=0.0, help="Also write reward - l * std.")
    parser.add_argument("--raw", action="store_true", help="Do not apply the stored reward normalization.")
    add_device_arguments(parser)
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Score from scratch into an --output made from another input, model or settings.",
    )


def run(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 1:
        args.parser.error(f"--max_length must be >= 1 (tokens), got {args.max_length}")
    check_device(args)
    paths = model_paths(args.parser, args)
    from vrm.scoring.data_parallel import ScoringWorld
    from vrm.scoring.loading import load_scorer
    from vrm.scoring.score_file import score_file

    world = ScoringWorld.detect()  # several processes under accelerate launch / torchrun: each scores a shard
    lengths = {"max_length": args.max_length} if args.max_length else {}
    pipeline = load_scorer(
        paths,
        device=world.device(args.device),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        normalize=not args.raw,
        conservative_lambda=args.conservative_lambda,
        **lengths,
    )
    stats = score_file(
        pipeline,
        args.input,
        args.output,
        chunk_size=args.chunk_size,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        world=world,
    )
    if not world.is_main:
        return 0
    print(
        f"[vrm] {stats['rows']} rows: {stats['scored']} scored, {stats['skipped']} already in {args.output}"
    )
    return 0
