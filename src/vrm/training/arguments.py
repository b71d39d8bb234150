"""The arguments of a training run: three dataclasses, parsed by `HfArgumentParser` for `vrm train`.

* `ModelArguments`: the backbone (and how to load it), LoRA / QLoRA, and the reward head (`HeadConfig`'s
  fields, inherited) -- what TRL's `ModelConfig` holds, plus the head.
* `DataArguments`: which preference data to read -- what TRL's `ScriptArguments` holds.
* `VRMTrainingArguments`: a `transformers.TrainingArguments` plus how pairs become tokens and the weights of the
  ELBO terms -- what TRL's `RewardConfig` holds. `VRMTrainer` needs only this one (and a model).

Flag names follow `trl reward` where the meaning is the same (`--model_name_or_path`, `--dataset_name`,
`--max_length`, `--use_peft`, `--lora_r`, `--center_rewards_coefficient`, `--dataset_num_proc`, ...), so a
`trl reward` YAML config runs with `vrm train --config`. The choices come from the modules that implement them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from vrm.data.tokenization import INPUT_FORMATS, TRUNCATION_POLICIES
from vrm.models.config import HeadConfig
from vrm.training.losses import ATTRIBUTE_TARGETS, BETA_SCHEDULES
from vrm.training.model_card import check_train_options

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


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

    def __post_init__(self) -> None:
        for name in ("dataset_name", "eval_dataset_name"):  # TRL names one dataset: a YAML string
            if isinstance(getattr(self, name, None), str):
                setattr(self, name, [getattr(self, name)])


@dataclass
class ModelArguments(HeadConfig, TRLModelArguments):
    """The backbone and the head of a new reward model (or a vrm checkpoint to continue from): the head's
    options are `HeadConfig`'s fields, TRL's loading and LoRA options `TRLModelArguments`'."""

    _argument_group_name = "model: the backbone, its loading, LoRA, and the reward head"

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Backbone (a hub name or a local directory), or a vrm checkpoint."}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_name_or_path."})
    dtype: str = field(
        default="float32", metadata={"help": "Backbone weights dtype.", "choices": MODEL_DTYPES}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code of the backbone."})
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Train the reward head only, on fixed backbone states (see --embedding_cache)."},
    )
    use_peft: bool = field(
        default=False, metadata={"help": "Train LoRA adapters instead of the full backbone."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt (default: peft's choice for the architecture)."}
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("no backbone: pass --model_name_or_path (a hub name or a local directory)")
        if self.torch_dtype is not None:  # TRL's (and transformers 4's) name of dtype
            self.dtype, self.torch_dtype = self.torch_dtype, None
        self.check_head()
        self.check_quantization()
        if self.freeze_backbone and self.use_peft:
            raise ValueError("--freeze_backbone and --use_peft exclude each other (LoRA trains the backbone)")

    def check_quantization(self) -> None:
        """`--load_in_4bit` / `--load_in_8bit` need LoRA, a CUDA GPU and bitsandbytes: checked when the arguments
        are made, before any data or model is loaded, with one line saying what is missing."""
        if not (self.load_in_4bit or self.load_in_8bit):
            return
        import importlib.util

        import torch

        flag = "--load_in_4bit" if self.load_in_4bit else "--load_in_8bit"
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("--load_in_4bit and --load_in_8bit exclude each other")
        if not self.use_peft:
            raise ValueError(
                f"{flag} quantizes the backbone, which then trains through LoRA only: pass --use_peft"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} needs a CUDA GPU (bitsandbytes quantization); none is available")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes")


@dataclass
class DataArguments(TRLDataArguments):
    """Which preference pairs to read: files or `datasets` names, splits, how many rows (TRL's `ScriptArguments`)."""

    _argument_group_name = "data: which preference pairs to read"

    dataset_name: list[str] = field(
        default_factory=list,
        metadata={"help": "Training data: files (jsonl/json/parquet/csv[.gz]) or datasets names."},
    )
    eval_dataset_name: list[str] = field(
        default_factory=list, metadata={"help": "Evaluation data, same forms."}
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "Split of a datasets name for training."}
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split of a datasets name for evaluation."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})


@dataclass
class VRMTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus how preference pairs become tokens and the weights of the ELBO
    terms (`vrm.training.losses`): everything `VRMTrainer` needs besides a model and data."""

    _argument_group_name = "training: tokenization, the ELBO terms, and transformers.TrainingArguments"

    output_dir: str | None = field(default="runs/vrm", metadata={"help": "Checkpoints and the final model."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: vrm collates its own batches."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    # ----- how pairs become tokens (TRL's RewardConfig options) -----
    max_length: int = field(default=512, metadata={"help": "Token budget of prompt + response."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt tokens kept when responses are long (default max_length // 2)."},
    )
    truncation: str = field(
        default="prompt_left",
        metadata={
            "help": "Over-long pairs: truncate the prompt from the left, or drop.",
            "choices": TRUNCATION_POLICIES,
        },
    )
    input_format: str = field(
        default="auto",
        metadata={"help": "How texts become tokens (see vrm.data.tokenization).", "choices": INPUT_FORMATS},
    )
    pair_layout: str = field(
        default="auto",
        metadata={
            "help": "shared_prompt: one row [prompt | chosen | rejected] per pair, pairs packed without padding "
            "(exact on causal backbones; on encoders the prompt stops seeing the response, a changed model); "
            "separate: two sequences per pair; auto: shared_prompt on causal backbones, separate on encoders.",
            "choices": ("auto", "shared_prompt", "separate"),
        },
    )
    attribute_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Objectives with known judgements: columns {name}_chosen/{name}_rejected hold ratings."
        },
    )
    objective_column: str | None = field(
        default=None,
        metadata={
            "help": "Column naming the objective on which the chosen response is better: one of "
            "--attribute_names, or of the model's --objective_names when no --attribute_names are given (they "
            "then act as --attribute_names: a label is a score target of 1 on its objective for the attribute "
            "term, --attribute_weight, and {name}_chosen/{name}_rejected columns are read where present)."
        },
    )
    embedding_cache: str | None = field(
        default=None,
        metadata={
            "help": "With --freeze_backbone: directory where backbone states are computed once and reused "
            "(keyed by backbone, data, template and max_length; resumable)."
        },
    )
    embedding_batch_size: int = field(
        default=32, metadata={"help": "Sequences per backbone pass when filling the embedding cache."}
    )
    skip_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Skip (and count, by file and line) rows that cannot be used instead of stopping."},
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

    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "When VRMTrainer gets a model name: `ModelArguments` fields it is built with (head_type, "
            "dtype, use_peft, ...), as TRL's RewardConfig.model_init_kwargs."
        },
    )
    # ----- the objective -----
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the reward head (default: 10 x learning_rate)."}
    )
    beta_w: float = field(default=0.01, metadata={"help": "Weight of KL(q(w|x) || p(w))."})
    beta_z: float = field(
        default=0.01, metadata={"help": "Weight of KL(q(z|x,y) || N(0,I)), summed over dims."}
    )
    beta_schedule: str = field(
        default="linear", metadata={"help": "linear: warm-up of the KL weights.", "choices": BETA_SCHEDULES}
    )
    beta_warmup_ratio: float = field(
        default=0.1, metadata={"help": "Fraction of steps of the linear warm-up."}
    )
    beta_cycles: int = field(default=4, metadata={"help": "Number of cycles of the cyclical schedule."})
    attribute_weight: float = field(
        default=1.0, metadata={"help": "lambda_attr, for rows with known ratings."}
    )
    objective_label_weight: float = field(
        default=0.0,
        metadata={
            "help": "lambda_obj: weight of -E_q[log w_o], the objective label (--objective_column) as an "
            "observation of the objective weights; 0 leaves the weights to the preference likelihood alone."
        },
    )
    attribute_target: str = field(
        default="sign",
        metadata={
            "choices": ATTRIBUTE_TARGETS,
            "help": "Targets of the score term from ratings: 'sign' (1/0 by which response is rated higher, ties "
            "dropped) or 'graded' ((1 + delta) / 2 with delta the rating difference over the rating range).",
        },
    )
    rating_weight_coef: float = field(
        default=0.0,
        metadata={
            "help": "lambda_rw: weight of the ratings -> weights term -E_q[log sigmoid(tau w^T delta)] (see "
            "vrm.training.losses); the prompt's weights must explain the preference through the per-objective ratings."
        },
    )
    rating_temperature: float = field(
        default=10.0, metadata={"help": "tau of the ratings -> weights term (delta lies in [-1, 1])."}
    )
    ensemble_bootstrap: bool = field(
        default=True,
        metadata={
            "help": "With --ensemble_members > 1: weigh each pair by an independent Poisson(1) draw per member "
            "(seeded by --seed), so members disagree where data is thin; false gives every pair weight 1."
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "As in TRL: adds c * mean((r+ + r-)^2) to keep rewards centred."}
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Set every dropout of the model to 0 (as TRL's RewardTrainer does): faster, steadier."
        },
    )
    merge_lora_on_save: bool = field(
        default=True,
        metadata={"help": "Merge LoRA into the backbone in the final model (adapter kept apart)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        import torch

        if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator (else a warning per run)
        self.check_objective()
        check_train_options(self)

    def check_objective(self) -> None:
        """Settings of the objective that would silently do nothing (or nonsense) are errors, before any data is
        read or model loaded."""
        attribute_names = self.attribute_names or ()
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name} must be a positive number of tokens, got {value!r}")
        if self.attribute_target not in ATTRIBUTE_TARGETS:
            raise ValueError(
                f"--attribute_target must be one of {ATTRIBUTE_TARGETS}, got {self.attribute_target!r}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"--beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.attribute_target == "graded" and not attribute_names:
            raise ValueError("--attribute_target graded needs --attribute_names (the rated objectives)")
        if not self.rating_weight_coef >= 0:  # also refuses NaN
            raise ValueError(f"--rating_weight_coef must be >= 0, got {self.rating_weight_coef}")
        if self.rating_weight_coef > 0 and len(attribute_names) < 2:
            raise ValueError(
                "--rating_weight_coef needs --attribute_names with at least two rated objectives (columns "
                "{name}_chosen / {name}_rejected): with one, the renormalised weight is 1 and the term cannot "
                "teach the weights"
            )
        if not 0 < self.rating_temperature < math.inf:
            raise ValueError(f"--rating_temperature must be a positive number, got {self.rating_temperature}")
        if self.objective_label_weight > 0 and not self.objective_column:
            raise ValueError(
                "--objective_label_weight needs --objective_column (the column naming the objective of each row)"
            )
        # the objectives an --objective_column names: --attribute_names, else the model's --objective_names
        # (`label_objectives`, once the model is known)


def label_objectives(args: VRMTrainingArguments, objective_names: list[str] | None) -> None:
    """The objectives the values of `--objective_column` name: `--attribute_names` when given, else the model's
    `--objective_names` (set as `args.attribute_names`: labels index the model's first objectives). Neither is a
    `ValueError` naming both ways; called before any data is read."""
    if not args.objective_column or args.attribute_names:
        return
    if not objective_names:
        raise ValueError(
            f"--objective_column {args.objective_column} names objectives: pass --objective_names (the model's "
            "objectives) or --attribute_names (the first objectives, which its values name)"
        )
    args.attribute_names = list(objective_names)
