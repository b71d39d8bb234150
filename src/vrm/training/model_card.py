"""The training output directory as a complete Hub-style model, and `vrm train`'s checks of unsupported options.

`write_training_outputs` writes, beside the final model, `train_results.json` (the train and eval metrics),
`trainer_state.json` (the loss history, also with `--save_strategy no`) and a `README.md` model card: base
model, head and its settings, objective names, data (pair and truncation counts), final metrics, intended use
and how to load it.

`check_train_options` refuses, before anything is loaded, the options `vrm train` would otherwise ignore or fail
on late: `--push_to_hub`, a `--report_to` integration whose package is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict
from typing import Any

from vrm.data.files import write_json
from vrm.models.config import HEAD_OPTIONS

# --report_to integrations and the packages they need (any one of them)
REPORT_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "neptune": ("neptune",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
    "codecarbon": ("codecarbon",),
    "azure_ml": ("azureml",),
}

OBJECTIVE_SETTINGS = (
    "beta_w",
    "beta_z",
    "beta_schedule",
    "attribute_weight",
    "objective_label_weight",
    "attribute_target",
    "rating_weight_coef",
    "center_rewards_coefficient",
)


def check_train_options(training_args) -> None:
    """One clear `ValueError` for a `vrm train` option that would be ignored or fail after minutes of loading."""
    if getattr(training_args, "push_to_hub", False):
        raise ValueError(
            "--push_to_hub is not supported: push the output directory with "
            "`huggingface-cli upload REPO_ID OUTPUT_DIR` (it is a complete model, with its README.md card)"
        )
    report_to = training_args.report_to or []
    for name in [report_to] if isinstance(report_to, str) else report_to:
        packages = REPORT_PACKAGES.get(name)
        if packages and not any(importlib.util.find_spec(package) for package in packages):
            raise ValueError(f"--report_to {name} needs the {packages[0]} package: pip install {packages[0]}")


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "~", "/"))


def _number(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [
        f"| {key} | {json.dumps(value) if isinstance(value, list | dict) else value} |" for key, value in rows
    ]
    return "\n".join(lines)


def model_card(
    output_dir: str,
    config,
    base: str,
    data_sources: dict[str, list[str]],
    training_args,
    train_stats,
    eval_stats,
    metrics: dict[str, Any],
    lora: bool = False,
    frozen_backbone: bool = False,
) -> str:
    """The `README.md` of a trained reward model directory (Hub model card: YAML metadata, then markdown).

    `base` is the backbone's name or path (a local path is shown by its directory name: the card travels with the
    model, the path does not), `data_sources` the names of the train and eval data."""
    base = base if _is_hub_id(base) else os.path.basename(os.path.normpath(base)) or base
    name = os.path.basename(os.path.normpath(output_dir)) or "vrm-reward-model"
    metadata = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    if _is_hub_id(base):
        metadata.append(f"base_model: {base}")
    metadata += ["tags:", "  - reward-model", "  - vrm", f"  - {config.head_type}", "---"]
    head = [
        (key, getattr(config, key, None)) for key in HEAD_OPTIONS if getattr(config, key, None) is not None
    ]
    objective = [
        (key, getattr(training_args, key)) for key in OBJECTIVE_SETTINGS if hasattr(training_args, key)
    ]
    names = config.objective_names or [f"objective {k}" for k in range(config.num_objectives)]
    data = [
        ("training data", data_sources.get("train") or "none"),
        ("eval data", data_sources.get("eval") or "none"),
    ]
    for split, stats in (("train", train_stats), ("eval", eval_stats)):
        if stats is not None:
            data += [(f"{split} {key.replace('_', ' ')}", value) for key, value in asdict(stats).items()]
    # training rows that feed each auxiliary term (vrm.training.auxiliary_terms)
    if metrics.get("auxiliary_terms"):
        data.append(("train rows feeding the auxiliary terms", metrics["auxiliary_terms"]))
    tokenization = getattr(config, "tokenization", None) or {}
    data += [("max_length", training_args.max_length), ("truncation", training_args.truncation)]
    if tokenization.get("input_format"):
        data.append(("input format", tokenization["input_format"]))
    # total_flos is 0 where transformers cannot count a model's FLOPs: not a measurement, left out
    shown = [
        (key, _number(value))
        for key, value in sorted(metrics.items())
        if not isinstance(value, dict | list) and not (key == "total_flos" and not value)
    ]
    training = [
        ("learning_rate", training_args.learning_rate),
        ("head_learning_rate", training_args.head_learning_rate or "10 x learning_rate"),
        ("per_device_train_batch_size", training_args.per_device_train_batch_size),
        (
            "length",
            f"{training_args.max_steps} optimizer steps"
            if training_args.max_steps > 0
            else f"{training_args.num_train_epochs:g} epochs",
        ),
        ("LoRA", lora),
        ("frozen backbone", frozen_backbone),
        ("seed", training_args.seed),
    ]
    body = f"""
# {name}

A reward model trained with vrm (Variational Reward Models): head `{config.head_type}`
on the backbone `{base}`. It scores a (prompt, response) pair with a scalar reward; vrm and moe heads also give
the weights of {config.num_objectives} objective{"s" if config.num_objectives != 1 else ""} ({", ".join(map(str, names))}), the per-objective scores and
(vrm) the reward's posterior standard deviation `reward_std`.

## Intended use

Scoring responses for RLHF (PPO / GRPO rewards, best-of-n selection, rejection sampling) and evaluating
responses to prompts like the training data's. It learned the preferences in its training data only: check
it on your own held-out pairs (`vrm eval`) before optimizing a policy against it, and watch for reward hacking
(`vrm bench bon`). Not meant for decisions about people.

## How to use

```python
# with vrm installed: reward, reward_std, objective weights and scores
from vrm import RewardPipeline

rm = RewardPipeline.from_pretrained("{output_dir}")   # device / dtype: auto (CUDA + bfloat16 if available)
print(rm("How do I sort a list in Python?", "Use sorted(xs)."))

# without vrm: transformers loads the model's own code; logits[:, 0] is the reward
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{output_dir}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{output_dir}")
```

Or from the shell: `vrm score --model {output_dir} --input rows.jsonl --output scores.jsonl`,
`vrm serve --model {output_dir}` (OpenRLHF `/get_reward`).

## Model

{_table([("base model", base), *head])}

Objectives: {", ".join(f"`{n}`" for n in names)}.

## Training objective

{_table(objective)}

## Data

{_table(data)}

## Training

{_table(training)}

## Results

{_table(shown) if shown else "No metrics were recorded."}

`train_results.json` holds these metrics, `trainer_state.json` the loss history.
"""
    return "\n".join(metadata) + "\n" + body


def write_training_outputs(
    trainer, output_dir: str, base: str, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]
) -> None:
    """`train_results.json`, `trainer_state.json` and `README.md` in the output directory (main process);
    `trainer` is a `vrm.training.VRMTrainer`."""
    metrics = {**(train_metrics or {}), **(eval_metrics or {})}
    metrics = {key: value for key, value in metrics.items() if isinstance(value, int | float | str)}
    if getattr(trainer, "auxiliary_terms", None) is not None:
        metrics["auxiliary_terms"] = trainer.auxiliary_terms.as_dict()
    write_json(metrics, os.path.join(output_dir, "train_results.json"))
    trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
    model = trainer.model
    lora = hasattr(model, "peft_config")
    config = model.get_base_model().config if lora else model.config
    card = model_card(
        output_dir,
        config,
        base,
        trainer.data_sources,
        trainer.args,
        trainer.train_stats,
        trainer.eval_stats,
        metrics,
        lora=lora,
        frozen_backbone=trainer.frozen_backbone,
    )
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
