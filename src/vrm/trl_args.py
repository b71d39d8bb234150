"""The options of TRL's `ModelConfig`, `ScriptArguments` and `RewardConfig` that vrm implements, with TRL's names.

`ModelArguments` and `DataArguments` (`vrm.arguments`) inherit them, so a `trl reward` YAML config runs with
`vrm train --config`: `model_revision`, `attn_implementation`, `dtype` / `torch_dtype`, LoRA's `lora_task_type`,
`use_rslora`, `use_dora`, `lora_modules_to_save`, QLoRA's `load_in_4bit` / `load_in_8bit` (bitsandbytes, CUDA),
`dataset_config` and `dataset_num_proc`. Their effects live in `vrm.backbone` (loading, LoRA, quantization),
`vrm.rows` (`dataset_config`) and `vrm.tokenization_cache` (`dataset_num_proc`).

The fields are keyword-only: they follow the required `model_name_or_path` in the constructors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")  # vrm.config.DTYPES and TRL's "auto"


@dataclass(kw_only=True)
class TRLModelArguments:
    """TRL `ModelConfig` fields (same names, defaults and meaning). `lora_task_type` accepts `SEQ_CLS`, the value
    TRL documents for reward models, and is its default here; the adapter is saved without a task type, so that
    `PeftModel.from_pretrained` wraps it in peft's task-agnostic `PeftModel` (its `SEQ_CLS` class would call
    vrm's forward with arguments it does not take)."""

    torch_dtype: str | None = field(
        default=None, metadata={"help": "Old name of --dtype (TRL configs).", "choices": MODEL_DTYPES}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Backbone revision: branch, tag or commit."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "The backbone's attention (eager, sdpa, flash_attention_2, ...)."}
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: 4-bit backbone (bitsandbytes, CUDA)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit backbone (bitsandbytes, CUDA)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantization type.", "choices": ("fp4", "nf4")}
    )
    use_bnb_nested_quant: bool = field(
        default=False, metadata={"help": "Nested (double) 4-bit quantization."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved with the adapter, beside the head."}
    )
    lora_task_type: str = field(
        default="SEQ_CLS",
        metadata={"help": "SEQ_CLS (TRL's reward-model value) only: vrm saves a task-agnostic adapter."},
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Rank-stabilized LoRA (scale alpha / sqrt(r))."}
    )
    use_dora: bool = field(default=False, metadata={"help": "DoRA: weight-decomposed LoRA (peft use_dora)."})


@dataclass(kw_only=True)
class TRLDataArguments:
    """TRL `ScriptArguments` / `RewardConfig` data fields."""

    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration of a datasets name (`name` of datasets.load_dataset)."}
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Processes that tokenize the data (datasets.map num_proc)."}
    )
    tokenization_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory of tokenized pairs reused by later runs (default: HF_DATASETS_CACHE/vrm_tokenized;"
            " 'none': no cache)."
        },
    )

    def __post_init__(self) -> None:
        for name in ("dataset_name", "eval_dataset_name"):  # TRL names one dataset: a YAML string
            if isinstance(getattr(self, name, None), str):
                setattr(self, name, [getattr(self, name)])
