"""`vrm eval`: evaluate reward models on pairwise files, RewardBench (v1, 2), RM-Bench and best-of-k files."""

from __future__ import annotations

import argparse

from vrm.cli.options import add_device_arguments, check_device

HELP = "evaluate trained reward models on preference data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="Override the training max_length (cut to the backbone's max_position_embeddings).",
    )
    parser.add_argument("--plots", default=None, help="Write a reliability diagram and weight heatmaps here.")
    parser.add_argument("--markdown", default=None, help="Write a side-by-side markdown summary here.")
    parser.add_argument(
        "--html",
        default=None,
        help="Write one self-contained HTML report here: the summary's tables and the plots, inlined.",
    )
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    parser.add_argument(
        "--embedding_cache",
        default=None,
        help="For models trained with --freeze_backbone: read (and store) backbone states here.",
    )
    add_device_arguments(parser)


def check_html_path(args: argparse.Namespace) -> None:
    """A usage error, before any model loads, unless --html names a file this run can write: not a directory,
    not another output of the run, in a directory that exists and takes a new file or that can be made."""
    import os
    import tempfile

    path = args.html
    if path is None:
        return
    if os.path.isdir(path):
        args.parser.error(f"--html {path} is a directory; name the HTML file to write")
    for flag in ("output", "markdown"):
        other = getattr(args, flag)
        if other and os.path.realpath(other) == os.path.realpath(path):
            args.parser.error(f"--html and --{flag} are the same file ({path}); give each its own")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        args.parser.error(f"--html {path}: {parent} is not a directory")
    if parent == os.path.dirname(os.path.abspath(path)):
        try:  # root passes os.access checks that the file system then refuses
            tempfile.NamedTemporaryFile(dir=parent, prefix=".vrm-html-check-").close()
        except OSError as err:
            args.parser.error(
                f"--html {path}: cannot write in {parent} ({type(err).__name__}: {err.strerror})"
            )


def run(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 1:
        args.parser.error(f"--max_length must be >= 1 (tokens), got {args.max_length}")
    check_html_path(args)
    check_device(args)
    from vrm.scoring.data_parallel import ScoringWorld

    world = ScoringWorld.detect()  # several processes under torchrun / accelerate launch: each scores a part
    if world.distributed and args.embedding_cache:
        args.parser.error(
            f"--embedding_cache with {world.size} processes: the ranks would write the same cache files; "
            "run in one process to use the cache"
        )
    if args.ensemble and len(args.model) < 2:
        args.parser.error("--ensemble needs at least two --model (the models of the deep ensemble)")
    from vrm.evaluation.pairwise import evaluate_model
    from vrm.evaluation.report import write_reports
    from vrm.evaluation.table import format_report

    reports = []
    for model_path in [args.model] if args.ensemble else args.model:
        report = evaluate_model(
            model_path,
            args.dataset,
            split=args.split,
            batch_size=args.batch_size,
            max_rows=args.max_rows,
            max_length=args.max_length,
            progress=not args.no_progress and world.is_main,
            embedding_cache=args.embedding_cache,
            sample=args.sample,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            world=world,
        )
        if world.is_main:
            print(format_report(report))
        reports.append(report)
    if not world.is_main:  # every rank holds the same reports: rank 0 writes them
        return 0
    if args.output:
        write_reports(reports, args.output)
        print(f"[vrm] report written to {args.output}")
    if args.plots or args.markdown:
        from vrm.evaluation.markdown import write_markdown
        from vrm.evaluation.plots import write_plots

        if args.plots:
            for path in write_plots(reports, args.plots):
                print(f"[vrm] plot written to {path}")
        if args.markdown:
            print(f"[vrm] summary written to {write_markdown(reports, args.markdown)}")
    if args.html:
        from vrm.evaluation.html_report import write_html

        print(f"[vrm] HTML report written to {write_html(reports, args.html)}")
    return 0
