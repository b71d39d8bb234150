"""Options shared by several `vrm` commands: the model(s) to score, and where and in which precision they run.

Nothing here imports torch or transformers: building a parser must stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_model_arguments(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    """A repeatable `--model` and `--ensemble` (several models scored as one deep ensemble)."""
    parser.add_argument(
        flag,
        action="append",
        required=True,
        help="Model directory (repeat it, with --ensemble, for an ensemble).",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help=f"Score the {flag} directories as one deep ensemble: mean reward, std across models.",
    )


def model_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, flag: str = "--model"):
    """One model directory, or the list of a deep ensemble's (`--ensemble`); anything else: a usage error."""
    from vrm.scoring.deep_ensemble import ensemble_paths

    try:
        return ensemble_paths(getattr(args, flag.lstrip("-")), args.ensemble, flag)
    except ValueError as err:
        parser.error(str(err))


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype` and `--trust_remote_code` of the scoring commands."""
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="Weights dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.",
    )
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Allow the own code of a reward model that is not vrm's (as in transformers).",
    )


def check_device(args: argparse.Namespace) -> None:
    """A bad `--device` / `--dtype` fails (a `ValueError` naming it) before any model loads."""
    from vrm.scoring.device import resolve

    resolve(args.device, args.dtype)


def pop_option(argv: Sequence[str], flag: str, what: str) -> tuple[str | None, list[str]]:
    """`flag`'s value (None when absent) and the other arguments, for options handled before argument parsing."""
    argv = list(argv)
    if flag not in argv:
        return None, argv
    position = argv.index(flag)
    if position + 1 >= len(argv):
        raise ValueError(f"{flag} needs {what}")
    return argv[position + 1], argv[:position] + argv[position + 2 :]
