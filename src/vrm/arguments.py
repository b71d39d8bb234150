"""The arguments of a training run: three dataclasses parsed by `HfArgumentParser` (`vrm train`).

`ModelArguments` (the backbone and the head of a new reward model), `DataArguments` (the preference pairs and
their tokenization) and `VRMTrainingArguments` (a `transformers.TrainingArguments` plus the weights of the ELBO
terms). Flag names follow `trl reward` where the meaning is the same (`--model_name_or_path`, `--dataset_name`,
`--max_length`, `--use_peft`, `--lora_r`, `--center_rewards_coefficient`, ...); TRL's other options come from the
mixins of `vrm.trl_args`. The choices (`HEAD_TYPES`, `POOLINGS`, ...) are `vrm.config`'s, and `vrm.config`
re-exports the three classes. They live apart from `VRMConfig` because a checkpoint's copied code
(`trust_remote_code=True`) needs the model config only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .config import (
    ATTRIBUTE_TARGETS,
    BETA_SCHEDULES,
    FEATURE_POSTERIORS,
    HEAD_TYPES,
    INPUT_FORMATS,
    POOLINGS,
    TRUNCATIONS,
    WEIGHT_POSTERIORS,
)
from .trl_args import MODEL_DTYPES, TRLDataArguments, TRLModelArguments


@dataclass
class ModelArguments(TRLModelArguments):
    """The backbone and the head of a new reward model (or a vrm checkpoint to continue from); TRL's model
    options in `vrm.trl_args`."""

    model_name_or_path: str = field(metadata={"help": "Backbone: a hub name or a local directory."})
    head_type: str = field(default="vrm", metadata={"help": "The reward head.", "choices": HEAD_TYPES})
    num_objectives: int | None = field(
        default=None, metadata={"help": "K (default: 4 for vrm/moe, 16 for vrm-paper, 1 for bt/ib)."}
    )
    objective_names: list[str] | None = field(default=None, metadata={"help": "Names of the K objectives."})
    weight_posterior: str | None = field(
        default=None,
        metadata={"help": "Override the head's objective weights (ablations).", "choices": WEIGHT_POSTERIORS},
    )
    feature_posterior: str | None = field(
        default=None,
        metadata={
            "help": "Override the head's semantic features (ablations).",
            "choices": FEATURE_POSTERIORS,
        },
    )
    feature_dim: int | None = field(
        default=None,
        metadata={"help": "d, the dimension of the semantic features (default: 4 for vrm-paper, 16)."},
    )
    decoder_hidden_size: int = field(default=0, metadata={"help": "0: linear decoder g(z); >0: MLP width."})
    prior_concentration: float = field(default=1.0, metadata={"help": "alpha0 of the Dirichlet prior."})
    num_samples: int = field(default=4, metadata={"help": "M, reparameterized samples per pair."})
    pooling: str = field(default="auto", metadata={"help": "Response-state pooling.", "choices": POOLINGS})
    ensemble_members: int = field(
        default=1,
        metadata={
            "help": "N heads of the chosen type on one backbone, each trained on its own Poisson(1) bootstrap "
            "of the pairs: reward = member mean, reward_std splits into aleatoric and epistemic (1: one head)."
        },
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_name_or_path."})
    dtype: str = field(
        default="float32", metadata={"help": "Backbone weights dtype.", "choices": MODEL_DTYPES}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code of the backbone."})
    prompt_state_gradient: bool = field(
        default=True,
        metadata={
            "help": "Let the objective weights train the backbone through the prompt state. --no_prompt_state_"
            "gradient detaches it: on encoders the prompt-only pass then costs a forward pass only."
        },
    )
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
        if self.torch_dtype is not None:  # TRL's (and transformers 4's) name of dtype
            self.dtype, self.torch_dtype = self.torch_dtype, None


@dataclass
class DataArguments(TRLDataArguments):
    """Where the preference pairs come from and how they become tokens (TRL's data options: `vrm.trl_args`)."""

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
    max_length: int = field(default=512, metadata={"help": "Token budget of prompt + response."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt tokens kept when responses are long (default max_length // 2)."},
    )
    truncation: str = field(
        default="prompt_left",
        metadata={
            "help": "Over-long pairs: truncate the prompt from the left, or drop.",
            "choices": TRUNCATIONS,
        },
    )
    input_format: str = field(
        default="auto", metadata={"help": "How texts become tokens (see vrm.data).", "choices": INPUT_FORMATS}
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
        default=None, metadata={"help": "Column naming the objective on which the chosen response is better."}
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
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})
    skip_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Skip (and count, by file and line) rows that cannot be used instead of stopping."},
    )


@dataclass
class VRMTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` plus the weights of the ELBO terms (see `vrm.losses`)."""

    output_dir: str | None = field(default="runs/vrm", metadata={"help": "Checkpoints and the final model."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: vrm collates its own batches."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
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
            "vrm.losses); the prompt's weights must explain the preference through the per-objective ratings."
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
