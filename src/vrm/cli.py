"""The `vrm` command: `vrm train`, `vrm eval`, `vrm score`, `vrm serve`, `vrm synth`.

vrm train --config cfg.yaml [--key value ...]     # flags override the YAML; names as in `trl reward`
vrm eval --model DIR --dataset FILE [FILE ...] [--output report.json]
vrm calibrate --model DIR --dataset VAL.jsonl       # fit and store the preference probability's temperature
vrm synth --output_dir DIR                          # write the synthetic preference world (quickstart data)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from .cli_args import (  # noqa: F401 - re-exported: `from vrm.cli import parse_train_args` keeps working
    add_model_arguments,
    build_train_parser,
    check_choices,
    model_paths,
    parse_train_args,
    pop_option,
)
from .runtime import add_device_arguments, resolve

USAGE = """usage: vrm <command> [options]

commands:
  train   train a reward model (bt, ib, moe or vrm head) on preference data
  eval    evaluate trained reward models on preference data
  calibrate  fit the temperature of a model's preference probability on validation pairs
  score   score a file of (prompt, response) rows (resumable)
  serve   serve a reward model over HTTP (OpenRLHF /get_reward, /score)
  bench   benchmarks: `vrm bench bon` (Best-of-N overoptimization against a gold scorer)
  synth   write the synthetic preference world used by the quickstart
  recipe  turn a public feedback dataset into preference files (`vrm recipe finegrained-qa`)
  experiment  run a declarative experiment (YAML: variants x seeds, chosen on validation, paired tests)

Run `vrm <command> --help` for the options of a command; `vrm --version` prints the version."""


def launch_with_accelerate(config_file: str, train_argv: Sequence[str]) -> int:
    """`vrm train --accelerate_config FILE ...` = `accelerate launch --config_file FILE -m vrm train ...`."""
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"--accelerate_config {config_file}: file not found")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    command += ["-m", "vrm", "train", *train_argv]
    print(f"[vrm] launching: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command)


def cmd_train(argv: Sequence[str]) -> int:
    config_file, rest = pop_option(
        argv, "--accelerate_config", "an accelerate config file (see examples/accelerate/)"
    )
    if config_file is not None:
        return launch_with_accelerate(config_file, rest)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            # several processes and no GPU: without this accelerate would run each process alone, silently.
            # Set before the arguments are parsed: TrainingArguments sets up the distributed state there.
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    model_args, data_args, training_args = parse_train_args(
        argv
    )  # --help and bad choices: before torch loads

    from .train_job import run_training

    result = run_training(model_args, data_args, training_args)
    if result.is_main_process:
        if result.metrics:
            shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float)}
            print(f"[vrm] eval metrics: {shown}")
        print(f"[vrm] model saved to {result.output_dir}")
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    from .evalreport import write_reports
    from .evaluate import evaluate_model, format_report

    parser = argparse.ArgumentParser(
        prog="vrm eval",
        description="Evaluate reward models: pairwise files, RewardBench (v1, 2), RM-Bench, best-of-k files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", action="append", required=True, help="Model directory (repeatable).")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="Evaluate the --model directories as one deep ensemble (mean reward, std across models) "
        "instead of side by side.",
    )
    parser.add_argument("--dataset", nargs="+", required=True, help="Preference files or datasets names.")
    parser.add_argument("--split", default="test", help="Split of a datasets name.")
    parser.add_argument("--output", default=None, help="Write the JSON report here.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--max_rows",
        type=int,
        default=None,
        help="Evaluate the first rows only, at most this many per dataset.",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="Evaluate a random sample of this many rows, stratified by subset.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of --sample (the same seed, the same rows)."
    )
    parser.add_argument("--max_length", type=int, default=None, help="Override the training max_length.")
    parser.add_argument("--plots", default=None, help="Write a reliability diagram and weight heatmaps here.")
    parser.add_argument("--markdown", default=None, help="Write a side-by-side markdown summary here.")
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    parser.add_argument(
        "--embedding_cache",
        default=None,
        help="For models trained with --freeze_backbone: read (and store) backbone states here.",
    )
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    resolve(args.device, args.dtype)  # a bad --device / --dtype fails before any model loads
    if args.ensemble and len(args.model) < 2:
        parser.error("--ensemble needs at least two --model (the models of the deep ensemble)")
    reports = []
    for model_path in [args.model] if args.ensemble else args.model:
        report = evaluate_model(
            model_path,
            args.dataset,
            split=args.split,
            batch_size=args.batch_size,
            max_rows=args.max_rows,
            max_length=args.max_length,
            progress=not args.no_progress,
            embedding_cache=args.embedding_cache,
            sample=args.sample,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
        print(format_report(report))
        reports.append(report)
    if args.output:
        write_reports(reports, args.output)
        print(f"[vrm] report written to {args.output}")
    if args.plots or args.markdown:
        from .report import write_markdown, write_plots

        if args.plots:
            for path in write_plots(reports, args.plots):
                print(f"[vrm] plot written to {path}")
        if args.markdown:
            print(f"[vrm] summary written to {write_markdown(reports, args.markdown)}")
    return 0


def cmd_score(argv: Sequence[str]) -> int:
    from .pipeline import load_scorer, score_file

    parser = argparse.ArgumentParser(
        prog="vrm score",
        description="Score a file of (prompt, response) rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--input", required=True, help="jsonl/json/parquet/csv rows: prompt + response, or messages."
    )
    parser.add_argument("--output", required=True, help="jsonl output (resumed if it exists).")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--chunk_size", type=int, default=256, help="Rows written (and fsync'ed) at a time.")
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
    args = parser.parse_args(argv)
    resolve(args.device, args.dtype)  # a bad --device / --dtype fails before any model loads
    pipeline = load_scorer(
        model_paths(parser, args),
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        normalize=not args.raw,
        conservative_lambda=args.conservative_lambda,
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
    )
    print(
        f"[vrm] {stats['rows']} rows: {stats['scored']} scored, {stats['skipped']} already in {args.output}"
    )
    return 0


def cmd_serve(argv: Sequence[str]) -> int:
    try:
        from .serve import serve_main
    except ImportError as err:  # fastapi / uvicorn are the optional `serve` extra
        print(f"vrm serve: error: {err}", file=sys.stderr)
        return 1
    return serve_main(argv)


BENCH_USAGE = """usage: vrm bench <benchmark> [options]

benchmarks:
  bon     Best-of-N overoptimization: the gold score of each proxy's best-of-n pick (Gao et al., 2022)

Run `vrm bench <benchmark> --help` for its options."""


def cmd_bench(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(BENCH_USAGE)
        return 0
    if not argv or argv[0] != "bon":
        print(BENCH_USAGE, file=sys.stderr)
        return 2
    from .bon import bon_main

    return bon_main(argv[1:])


def cmd_synth(argv: Sequence[str]) -> int:
    from .synthetic import WorldConfig, write_world

    parser = argparse.ArgumentParser(prog="vrm synth", description="Write the synthetic preference world.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_pairs", type=int, default=WorldConfig.train_pairs)
    parser.add_argument("--test_pairs", type=int, default=WorldConfig.test_pairs)
    parser.add_argument("--seed", type=int, default=WorldConfig.seed)
    args = parser.parse_args(argv)
    paths = write_world(
        args.output_dir, WorldConfig(train_pairs=args.train_pairs, test_pairs=args.test_pairs, seed=args.seed)
    )
    for name, path in paths.items():
        print(f"[vrm] {name}: {path}")
    return 0


def cmd_recipe(argv: Sequence[str]) -> int:
    from .recipes import RATINGS, finegrained_qa_to_preferences

    parser = argparse.ArgumentParser(
        prog="vrm recipe", description="Turn a public feedback dataset into vrm preference files."
    )
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
    args = parser.parse_args(argv)
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
        print(f"[vrm] {name}: {split['pairs']} pairs, {split['questions']} questions -> {split['path']}")
    print(
        f"[vrm] {summary['ties_skipped']} tied comparisons skipped; summary: {args.output_dir}/summary.json"
    )
    return 0


def cmd_calibrate(argv: Sequence[str]) -> int:
    from .calibrate import calibrate_main

    return calibrate_main(argv)


def cmd_experiment(argv: Sequence[str]) -> int:
    from .experiment import main as experiment_main

    return experiment_main(argv)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "calibrate": cmd_calibrate,
    "score": cmd_score,
    "serve": cmd_serve,
    "bench": cmd_bench,
    "synth": cmd_synth,
    "recipe": cmd_recipe,
    "experiment": cmd_experiment,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"vrm {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vrm: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except (OSError, ValueError) as err:  # bad paths, unloadable models, malformed data: one clear line
        # (DataFormatError, ModelLoadError and NonFiniteError are ValueErrors; a lone surrogate in a message
        # must not make printing it fail)
        message = " ".join(str(err).split()) or type(err).__name__
        print(
            f"vrm {command}: error: {message}".encode("utf-8", "backslashreplace").decode(), file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
