"""`vrm calibrate`: fit the temperature of a checkpoint's preference probability on validation pairs and store it
in its `config.json` (`vrm.evaluation.calibration`).

Fewer than 100 validation pairs, or a fit at a bound of the search interval (T = 0.01 or 100), is an error and
nothing is written; a fit whose validation NLL is worse than T = 1's is reported and not written."""

from __future__ import annotations

import argparse

from vrm.cli.options import check_device

HELP = "fit the temperature of a model's preference probability on validation pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Directory of a saved vrm model (updated in place).")
    parser.add_argument("--dataset", required=True, help="Validation preference file (any TRL format).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="Override the training max_length (cut to the backbone's max_position_embeddings).",
    )
    parser.add_argument("--embedding_cache", default=None, help="Backbone states of frozen-backbone models.")
    parser.add_argument("--dry_run", action="store_true", help="Report the fit without writing it.")
    parser.add_argument("--output", default=None, help="Also write the fit as JSON here.")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if available, else cpu), ..."
    )
    parser.add_argument(
        "--dtype", default="auto", help="Weights dtype: auto (bfloat16 on CUDA, float32 on CPU), ..."
    )


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        args.parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 1:
        args.parser.error(f"--max_length must be >= 1 (tokens), got {args.max_length}")
    check_device(args)
    from dataclasses import asdict

    from vrm.scoring.data_parallel import refuse_several_processes

    refuse_several_processes("vrm calibrate")

    from vrm.data.files import write_json
    from vrm.evaluation.checkpoint_calibration import calibrate_model, format_result

    result = calibrate_model(
        args.model,
        args.dataset,
        write=not args.dry_run,
        batch_size=args.batch_size,
        max_length=args.max_length,
        embedding_cache=args.embedding_cache,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    print(format_result(result, dry_run=args.dry_run))
    if args.output:
        write_json(asdict(result), args.output)
        print(f"[vrm] fit written to {args.output}")
    return 0
