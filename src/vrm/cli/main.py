"""The `vrm` command: one `argparse` parser, one sub-command per module of this package.

    vrm train --config cfg.yaml [--key value ...]     # flags override the YAML; names as in `trl reward`
    vrm eval --model DIR --dataset FILE [FILE ...] [--output report.json]
    vrm score --model DIR --input rows.jsonl --output scores.jsonl
    vrm serve --model DIR --port 8000
    vrm calibrate --model DIR --dataset VAL.jsonl
    vrm bench bon --pool POOL --proxy DIR --gold_column gold
    vrm synth --output_dir DIR
    vrm recipe finegrained-qa --input FILE --output_dir DIR

Only the chosen command's options are built (`add_arguments`), so `vrm --help` imports neither torch nor
transformers. A bad path, model or row ends in one line `vrm <command>: error: ...` and exit status 1; a usage
error in argparse's message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vrm import __version__
from vrm.cli import bench, calibrate, evaluate, recipe, score, serve, synth, train

COMMANDS = {
    "train": train,
    "eval": evaluate,
    "calibrate": calibrate,
    "score": score,
    "serve": serve,
    "bench": bench,
    "synth": synth,
    "recipe": recipe,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `vrm` parser; the options of `command` (one of `COMMANDS`) are added, the others' are not built."""
    parser = argparse.ArgumentParser(
        prog="vrm",
        description="Variational Reward Models: train, evaluate, score and serve reward models.",
        epilog="Run `vrm <command> --help` for the options of a command.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"vrm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, module in COMMANDS.items():
        own = getattr(module, "PARSES_ITS_OWN_ARGUMENTS", False)
        sub = commands.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            add_help=not own,
            formatter_class=argparse.RawDescriptionHelpFormatter
            if own
            else argparse.ArgumentDefaultsHelpFormatter,
        )
        sub.set_defaults(parser=sub)
        if name == command:
            module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(command)
    except ImportError as err:  # fastapi / uvicorn are the optional `serve` extra
        print(f"vrm {command}: error: {err} (pip install 'vrm[serve]')", file=sys.stderr)
        return 1
    if not argv:
        parser.print_help()
        return 2
    if command is not None and getattr(COMMANDS[command], "PARSES_ITS_OWN_ARGUMENTS", False):
        args = argparse.Namespace(command=command, parser=None)
    else:
        args = parser.parse_args(argv)
    args.argv = argv[1:]
    try:
        return COMMANDS[command].run(args)
    except ImportError as err:
        if command != "serve":
            raise
        print(f"vrm {command}: error: {err} (pip install 'vrm[serve]')", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # bad paths, unloadable models, malformed data: one clear line
        # (DataFormatError, ModelLoadError and NonFiniteError are ValueErrors; a lone surrogate in a message
        # must not make printing it fail)
        message = " ".join(str(err).split()) or type(err).__name__
        print(
            f"vrm {command}: error: {message}".encode("utf-8", "backslashreplace").decode(), file=sys.stderr
        )
        return 1
