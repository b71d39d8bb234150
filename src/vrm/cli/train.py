"""`vrm train`: a thin script over `vrm.training.VRMTrainer`, as TRL's `trl reward` is over `RewardTrainer`.

    vrm train --config cfg.yaml [--key value ...]      # flags override the YAML; names as in `trl reward`

The arguments are the three dataclasses of `vrm.training.arguments` (help grouped by dataclass); a `--config`
YAML gives their defaults. `--accelerate_config FILE` re-runs the command under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from vrm.cli.options import pop_option

HELP = "train a reward model (bt, ib, moe or vrm head) on preference data"
PARSES_ITS_OWN_ARGUMENTS = True  # the `HfArgumentParser` below, which imports transformers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Nothing: `vrm train`'s options are parsed by `parse_train_args` (importing transformers only then)."""


def build_train_parser():
    """`vrm train`'s `HfArgumentParser`: one help group per dataclass (model and head / data / training)."""
    from transformers import HfArgumentParser

    from vrm.training.arguments import DataArguments, ModelArguments, VRMTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, VRMTrainingArguments), prog="vrm train")
    parser.add_argument("--config", default=None, help="YAML file of arguments (flags override it).")
    parser.add_argument(
        "--accelerate_config",
        default=None,
        help="Run under `accelerate launch --config_file FILE` (several GPUs; see examples/accelerate/).",
    )
    return parser


HELP_WIDTH = 110  # columns of the generated help (`vrm.cli.train_help`)


def help_text() -> str:
    """`vrm train --help` as the real parser formats it, at `HELP_WIDTH` columns."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse reads the width from the terminal size
    try:
        return build_train_parser().format_help()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def write_help_module(path: str | None = None) -> str:
    """Regenerate `vrm/cli/train_help.py` from the real parser:
    `python -c "from vrm.cli.train import write_help_module; write_help_module()"`."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_help.py")
    text = help_text()
    source = (
        "# ruff: noqa: E501\n"
        '"""`vrm train --help`, generated from the real parser (`vrm.cli.train.build_train_parser`) so that help '
        "prints in\nmilliseconds without importing transformers. Do not edit: `vrm.cli.train.write_help_module()` "
        "rewrites it, and\ntests/cli/test_help.py fails when it differs from the parser.\n"
        '"""\n\n'
        f"TEXT = {text!r}\n"
    )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(source)
    return path


def print_generated_help() -> None:
    """`vrm train --help` from the generated text: the options of the three dataclasses, without importing them."""
    from vrm.cli.train_help import TEXT

    sys.stdout.write(TEXT)
    raise SystemExit(0)


def check_config_values(parser, values: dict[str, Any], source: str) -> None:
    """A YAML config's keys must be options of `parser`, and its values among an option's choices, as flags are
    (argparse checks the choices of flags only)."""
    options = {action.dest: action for action in parser._actions}  # read only
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ValueError(f"{source}: unknown arguments {unknown}")
    for name, value in values.items():
        choices = options[name].choices
        if choices is not None and value not in choices:
            raise ValueError(f"{source}: {name} {value!r} is not one of: {', '.join(map(str, choices))}")


def parse_train_args(argv: Sequence[str]):
    """`vrm train`'s (ModelArguments, DataArguments, VRMTrainingArguments): an optional `--config` YAML gives
    defaults, flags override them."""
    import yaml

    parser = build_train_parser()
    try:
        config_path, argv = pop_option(argv, "--config", "a YAML file path")
    except ValueError as err:
        parser.error(str(err))
    if config_path is not None:
        source = f"--config {config_path}"
        if not os.path.exists(config_path):
            parser.error(f"{source}: file not found")
        with open(config_path, encoding="utf-8") as handle:
            try:
                values: dict[str, Any] = yaml.safe_load(handle) or {}
            except yaml.YAMLError as err:
                parser.error(f"{source}: invalid YAML ({err})")
        if not isinstance(values, dict):
            parser.error(f"{source}: expected a mapping of argument names to values")
        try:
            check_config_values(parser, values, source)
        except ValueError as err:
            parser.error(str(err))
        parser.set_defaults(**values)
    else:
        values = {}
    named = any(arg.split("=")[0] in ("--model_name_or_path", "--model-name-or-path") for arg in argv)
    if not (named or values.get("model_name_or_path") or {"-h", "--help"} & set(argv)):
        parser.error("the following arguments are required: --model_name_or_path")
    model_args, data_args, training_args, _ = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def launch_with_accelerate(config_file: str, train_argv: Sequence[str]) -> int:
    """`vrm train --accelerate_config FILE ...` = `accelerate launch --config_file FILE -m vrm train ...`."""
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"--accelerate_config {config_file}: file not found")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    command += ["-m", "vrm", "train", *train_argv]
    print(f"[vrm] launching: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command)


def run(args: argparse.Namespace) -> int:
    argv = args.argv
    if {"-h", "--help"} & set(argv) and "--config" not in argv:  # a --config changes the defaults shown
        print_generated_help()
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
    trainer = train_from_arguments(model_args, data_args, training_args)
    if trainer.is_world_process_zero():
        if trainer.eval_metrics:
            shown = {k: round(v, 4) for k, v in trainer.eval_metrics.items() if isinstance(v, float)}
            print(f"[vrm] eval metrics: {shown}")
        print(f"[vrm] model saved to {training_args.output_dir}")
    return 0


def train_from_arguments(model_args, data_args, training_args):
    """What `vrm train` does with its three argument dataclasses: read and check the data (before the backbone
    loads: a bad row fails in seconds, not minutes), train, evaluate, save the final model. Returns the
    `VRMTrainer`."""
    from vrm.data.ratings import rating_ranges
    from vrm.training.advice import examples_advice
    from vrm.training.arguments import label_objectives
    from vrm.training.pair_data import preference_examples
    from vrm.training.trainer import VRMTrainer, check_cache_arguments

    check_cache_arguments(model_args, training_args)
    label_objectives(training_args, model_args.objective_names)  # before the data is read with them
    if not data_args.dataset_name:
        raise ValueError("no training data: pass --dataset_name FILE_OR_NAME [...]")
    train = preference_examples(
        data_args.dataset_name,
        "train",
        training_args,
        split=data_args.dataset_train_split,
        max_rows=data_args.max_train_samples,
        dataset_config=data_args.dataset_config,
    )
    advice = examples_advice(model_args.head_type, train)  # one line, never a refusal (docs/which_head.md)
    if advice and training_args.process_index == 0:
        print(f"[vrm] advice: {advice}", flush=True)
    evaluation = None
    if data_args.eval_dataset_name:
        scale = rating_ranges(train) if training_args.attribute_names else None  # the training data's scale
        evaluation = preference_examples(
            data_args.eval_dataset_name,
            "eval",
            training_args,
            split=data_args.dataset_test_split,
            max_rows=data_args.max_eval_samples,
            dataset_config=data_args.dataset_config,
            rating_scale=scale,
        )
    trainer = VRMTrainer(model=model_args, args=training_args, train_dataset=train, eval_dataset=evaluation)
    trainer.train()
    if evaluation is not None:
        trainer.evaluate()
    trainer.save_model()
    return trainer
