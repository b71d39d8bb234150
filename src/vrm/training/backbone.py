"""Loading the backbone and its tokenizer, building the reward model on it, wrapping it in LoRA (or QLoRA).

`vrm train` loads the tokenizer and the backbone with the same `backbone_load_kwargs` (`trust_remote_code`,
`gguf_file`, `revision` = `--model_revision`); the backbone alone also gets `--attn_implementation` and, with
`--load_in_4bit` / `--load_in_8bit`, a bitsandbytes `BitsAndBytesConfig` (as TRL's `get_quantization_config`
builds it). It builds a new `VRMForSequenceClassification` (or continues a vrm checkpoint), and with
`--use_peft` wraps the backbone in LoRA adapters (`--use_dora`, `--use_rslora`, `--lora_task_type`) while the
head trains fully; a quantized backbone is first prepared by `peft.prepare_model_for_kbit_training`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from vrm.models.config import HEAD_OPTIONS
from vrm.models.integrity import load_checked
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.arguments import ModelArguments


def check_model_source(name_or_path: str) -> None:
    """A path-like `--model_name_or_path` that does not exist is a clear error, not a hub lookup failure."""
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1  # hub ids: org/name
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"--model_name_or_path {name_or_path}: no such directory")


def backbone_load_kwargs(model_args: ModelArguments) -> dict[str, Any]:
    """What both the tokenizer and the backbone are loaded with."""
    kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
    if model_args.model_revision and model_args.model_revision != "main":
        kwargs["revision"] = model_args.model_revision
    if model_args.gguf_file:
        kwargs["gguf_file"] = model_args.gguf_file
    return kwargs


def quantization_kwargs(model_args: ModelArguments, dtype) -> dict[str, Any]:
    """`from_pretrained` arguments of a quantized backbone (TRL's `get_quantization_config` and
    `get_kbit_device_map`): {} without `--load_in_4bit` / `--load_in_8bit`."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    if model_args.load_in_4bit:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": PartialState().local_process_index}}


def load_tokenizer(model_args: ModelArguments):
    check_model_source(model_args.model_name_or_path)
    return AutoTokenizer.from_pretrained(model_args.model_name_or_path, **backbone_load_kwargs(model_args))


def build_model(model_args: ModelArguments) -> VRMForSequenceClassification:
    """A new reward model on the backbone, or a vrm checkpoint to continue training."""
    backbone_kwargs = backbone_load_kwargs(model_args)
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **backbone_kwargs)
    if model_args.attn_implementation:
        backbone_kwargs["attn_implementation"] = model_args.attn_implementation
    if config.model_type == "vrm":
        if model_args.load_in_4bit or model_args.load_in_8bit:
            raise ValueError(
                "--load_in_4bit / --load_in_8bit start from a backbone, not from a vrm checkpoint"
            )
        extra = {k: v for k, v in backbone_kwargs.items() if k in ("revision", "attn_implementation")}
        return load_checked(VRMForSequenceClassification, model_args.model_name_or_path, dtype=dtype, **extra)
    backbone_kwargs.update(quantization_kwargs(model_args, dtype))
    # every `HeadConfig` field; None leaves the head preset's value
    head_kwargs = {name: getattr(model_args, name) for name in HEAD_OPTIONS if name != "head_type"}
    head_kwargs = {name: value for name, value in head_kwargs.items() if value is not None}
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
    """Wrap the model in LoRA adapters on the backbone; the head is trained fully and saved with the adapter.

    The adapter has no peft task type (`--lora_task_type SEQ_CLS`, TRL's reward-model value, is accepted): peft's
    task classes call `forward` with arguments a vrm model does not take, its task-agnostic `PeftModel` does not.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = model_args.lora_target_modules
    if targets is None:
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.text_config.model_type)
    if targets is None:
        raise ValueError(
            f"no default LoRA target modules for {model.config.text_config.model_type!r}; pass --lora_target_modules"
        )
    if model_args.lora_task_type not in ("SEQ_CLS", None, ""):
        raise ValueError(
            f"--lora_task_type {model_args.lora_task_type}: a reward model's adapter is SEQ_CLS (the only value vrm "
            "takes; TRL's default CAUSAL_LM is for language models)"
        )
    if getattr(model.backbone, "is_loaded_in_4bit", False) or getattr(
        model.backbone, "is_loaded_in_8bit", False
    ):
        prepare_model_for_kbit_training(model.backbone, use_gradient_checkpointing=False)
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=list(targets),
        modules_to_save=["head", *(model_args.lora_modules_to_save or [])],
        use_dora=model_args.use_dora,
        use_rslora=model_args.use_rslora,
    )
    return get_peft_model(model, lora_config)
