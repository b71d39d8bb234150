"""One training run through `vrm.training.VRMTrainer`, from a dictionary of options (no command-line strings).

The options are field names of `vrm.training`'s argument dataclasses, as a study's YAML writes them:
`ModelArguments` (backbone, head, LoRA), `VRMTrainingArguments` (tokenization, ELBO, `TrainingArguments`) and
`DataArguments` (which rows to read). `build_arguments` sorts them into the three dataclasses (an unknown name
or a value outside an option's choices is an error naming it, as `vrm train` reports it); `train_model` runs the
sequence `vrm train` runs: read and check the data, `VRMTrainer(...).train()`, `evaluate()` when there is
evaluation data, `save_model()` (the final model and its card).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from benchmarks.studies.backbones import backbone_path
from benchmarks.studies.spec import RunSpec

# what every study run sets unless its options say otherwise: no checkpoints, no loggers, no progress bars
RUN_DEFAULTS = {"save_strategy": "no", "report_to": [], "disable_tqdm": True}


def _coerce(value: Any, default: Any) -> Any:
    """A YAML value as the field's type where YAML read it as text (`1e-3` is a string to YAML 1.1)."""
    if isinstance(value, str) and not isinstance(default, bool | str):
        if isinstance(default, int):
            try:
                return int(value)
            except ValueError:
                return float(value)
        if isinstance(default, float):
            return float(value)
    return value


def build_arguments(options: Mapping[str, Any]):
    """(ModelArguments, DataArguments, VRMTrainingArguments) of a run's options."""
    from vrm.cli.train import build_train_parser, check_config_values
    from vrm.training.arguments import DataArguments, ModelArguments, VRMTrainingArguments

    check_config_values(
        build_train_parser(), {k: v for k, v in options.items() if v is not None}, "run options"
    )
    values: list[dict[str, Any]] = [{}, {}, {}]
    classes = (ModelArguments, DataArguments, VRMTrainingArguments)
    for name, value in options.items():
        for index, kind in enumerate(classes):
            found = {f.name: f for f in dataclasses.fields(kind)}
            if name in found:
                default = found[name].default
                values[index][name] = _coerce(value, default)
                break
    return tuple(kind(**kwargs) for kind, kwargs in zip(classes, values, strict=True))


def train_model(options: Mapping[str, Any]) -> str:
    """Train one model (`model_name_or_path`, `dataset_name`, `output_dir` and any other options); returns the
    model directory."""
    from vrm.cli.train import train_from_arguments

    model_args, data_args, training_args = build_arguments({**RUN_DEFAULTS, **options})
    train_from_arguments(model_args, data_args, training_args)
    return training_args.output_dir


def run_options(
    spec: RunSpec, backbone: str, train: str | list[str], output_dir: str, embedding_cache: str | None = None
) -> dict[str, Any]:
    """The options of one run: the backbone resolved, its data, seed and output, then the spec's own options;
    the embedding cache only where the backbone is frozen (a fine-tuned backbone has no fixed states)."""
    options = {
        "model_name_or_path": backbone_path(backbone),
        "dataset_name": [train] if isinstance(train, str) else list(train),
        "output_dir": output_dir,
        "seed": spec.seed,
        **spec.options,
    }
    if embedding_cache and options.get("freeze_backbone"):
        options["embedding_cache"] = embedding_cache
    return options


def train_run(
    spec: RunSpec, backbone: str, train: str | list[str], output_dir: str, embedding_cache: str | None = None
) -> str:
    """Train the run `spec` on the pairs of `train`; returns the model directory."""
    return train_model(run_options(spec, backbone, train, output_dir, embedding_cache))
