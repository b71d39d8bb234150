"""Loading the backbone and its tokenizer, building the reward model on it, wrapping it in LoRA.

`vrm train` loads the tokenizer and the backbone with the same `backbone_load_kwargs` (`trust_remote_code`,
`gguf_file`), builds a new `VRMForSequenceClassification` (or continues a vrm checkpoint), and with `--use_peft`
wraps the backbone in LoRA adapters while the head trains fully.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from .config import ModelArguments
from .integrity import load_checked
from .modeling import VRMForSequenceClassification


def check_model_source(name_or_path: str) -> None:
    """A path-like `--model_name_or_path` that does not exist is a clear error, not a hub lookup failure."""
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1  # hub ids: org/name
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"--model_name_or_path {name_or_path}: no such directory")


def backbone_load_kwargs(model_args: ModelArguments) -> dict[str, Any]:
    """What both the tokenizer and the backbone are loaded with."""
    kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
    if model_args.gguf_file:
        kwargs["gguf_file"] = model_args.gguf_file
    return kwargs


def load_tokenizer(model_args: ModelArguments):
    check_model_source(model_args.model_name_or_path)
    return AutoTokenizer.from_pretrained(model_args.model_name_or_path, **backbone_load_kwargs(model_args))


def build_model(model_args: ModelArguments) -> VRMForSequenceClassification:
    """A new reward model on the backbone, or a vrm checkpoint to continue training."""
    backbone_kwargs = backbone_load_kwargs(model_args)
    dtype = getattr(torch, model_args.dtype)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **backbone_kwargs)
    if config.model_type == "vrm":
        return load_checked(VRMForSequenceClassification, model_args.model_name_or_path, dtype=dtype)
    head_kwargs: dict[str, Any] = {
        "num_objectives": model_args.num_objectives,
        "objective_names": model_args.objective_names,
        "feature_dim": model_args.feature_dim,
        "decoder_hidden_size": model_args.decoder_hidden_size,
        "prior_concentration": model_args.prior_concentration,
        "num_samples": model_args.num_samples,
        "pooling": model_args.pooling,
        "prompt_state_gradient": model_args.prompt_state_gradient,
    }
    for key in ("weight_posterior", "feature_posterior"):  # ablations: override the head preset
        if getattr(model_args, key) is not None:
            head_kwargs[key] = getattr(model_args, key)
    if model_args.objective_names and model_args.num_objectives is None:
        head_kwargs["num_objectives"] = len(model_args.objective_names)
    return VRMForSequenceClassification.from_backbone(
        model_args.model_name_or_path,
        head_type=model_args.head_type,
        dtype=dtype,
        backbone_kwargs=backbone_kwargs,
        **head_kwargs,
    )


def apply_lora(model: VRMForSequenceClassification, model_args: ModelArguments):
    """Wrap the model in LoRA adapters on the backbone; the head is trained fully and saved with the adapter."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = model_args.lora_target_modules
    if targets is None:
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.text_config.model_type)
    if targets is None:
        raise ValueError(
            f"no default LoRA target modules for {model.config.text_config.model_type!r}; pass --lora_target_modules"
        )
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=list(targets),
        modules_to_save=["head"],
    )
    return get_peft_model(model, lora_config)
