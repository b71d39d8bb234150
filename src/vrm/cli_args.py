"""Argument parsing of the `vrm` commands: `vrm train`'s parser and the options shared by the scoring commands.

`parse_train_args` builds `vrm train`'s `HfArgumentParser` over `vrm.arguments` (`build_train_parser`: vrm's
options in help groups, then the Trainer's), reads an optional `--config` YAML as defaults (its values checked
against the options' choices, as flags are) and lets flags override it. transformers is imported inside the
functions: `vrm --help` must not wait for it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any


def pop_option(argv: Sequence[str], flag: str, what: str) -> tuple[str | None, list[str]]:
    """`flag`'s value (None when absent) and the other arguments, for options handled before argument parsing."""
    argv = list(argv)
    if flag not in argv:
        return None, argv
    position = argv.index(flag)
    if position + 1 >= len(argv):
        raise ValueError(f"{flag} needs {what}")
    return argv[position + 1], argv[:position] + argv[position + 2 :]


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
        help=f"Score the {flag} directories as one deep ensemble: mean reward, std across models "
        "(vrm.deep_ensemble).",
    )


def model_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, flag: str = "--model"):
    """One model directory, or the list of a deep ensemble's (`--ensemble`); anything else: a usage error."""
    from .deep_ensemble import ensemble_paths

    try:
        return ensemble_paths(getattr(args, flag.lstrip("-")), args.ensemble, flag)
    except ValueError as err:
        parser.error(str(err))


def build_train_parser():
    """`vrm train`'s parser: vrm's options first in groups (model / head / data / training), then Trainer's."""
    import dataclasses

    from transformers import HfArgumentParser, TrainingArguments

    from .arguments import DataArguments, ModelArguments, VRMTrainingArguments
    from .config import HEAD_OPTIONS

    parser = HfArgumentParser((ModelArguments, DataArguments, VRMTrainingArguments), prog="vrm train")
    parser.add_argument("--config", default=None, help="YAML file of arguments (flags override it).")
    parser.add_argument(
        "--accelerate_config",
        default=None,
        help="Run under `accelerate launch --config_file FILE` (several GPUs; see examples/accelerate/).",
    )
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    own_training = set(VRMTrainingArguments.__dataclass_fields__) - inherited
    own_training |= set(VRMTrainingArguments.__dict__.get("__annotations__", {}))
    model_fields = {f.name for f in dataclasses.fields(ModelArguments)} - set(HEAD_OPTIONS)
    groups = [
        ("model", "the backbone (a hub name or directory), its dtype, LoRA", model_fields),
        ("head", "the reward head: objective weights w, features z, decoder", set(HEAD_OPTIONS)),
        ("data", "preference files and tokenization", {f.name for f in dataclasses.fields(DataArguments)}),
        ("training (vrm)", "the ELBO terms and vrm's training settings", own_training),
        ("training (transformers.TrainingArguments)", "the Trainer's own options", inherited - own_training),
    ]
    general = parser._optionals
    general.title = "options"
    placed = []
    for title, description, names in groups:
        group = parser.add_argument_group(title, description)
        for action in list(general._group_actions):
            if action.dest in names:
                general._group_actions.remove(action)
                group._group_actions.append(action)
        placed.append(group)
    parser._action_groups = [parser._positionals, general, *placed]
    return parser


def check_choices(parser, values: dict[str, Any], source: str) -> None:
    """Values given in a YAML file must be among an option's choices, as flags are (argparse skips defaults)."""
    for action in parser._actions:
        if action.choices is not None and action.dest in values and values[action.dest] not in action.choices:
            choices = ", ".join(map(str, action.choices))
            parser.error(f"{source}: {action.dest} {values[action.dest]!r} is not one of: {choices}")


def parse_train_args(argv: Sequence[str]):
    """Parse `vrm train` arguments: an optional `--config` YAML gives defaults, flags override them."""
    import yaml

    parser = build_train_parser()
    try:
        config_path, argv = pop_option(argv, "--config", "a YAML file path")
    except ValueError as err:
        parser.error(str(err))
    if config_path is not None:
        if not os.path.exists(config_path):
            parser.error(f"--config {config_path}: file not found")
        with open(config_path, encoding="utf-8") as handle:
            try:
                values: dict[str, Any] = yaml.safe_load(handle) or {}
            except yaml.YAMLError as err:
                parser.error(f"--config {config_path}: invalid YAML ({err})")
        if not isinstance(values, dict):
            parser.error(f"--config {config_path}: expected a mapping of argument names to values")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"--config {config_path}: unknown arguments {unknown}")
        check_choices(parser, values, f"--config {config_path}")
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args
