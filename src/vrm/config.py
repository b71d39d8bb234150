"""Configuration: the model config (`VRMConfig`) and the head presets that make bt / ib / moe / vrm.

Everything that shapes the model lives in `VRMConfig`, which is saved as `config.json` next to the weights.
What a training run needs besides lives in three dataclasses parsed by `HfArgumentParser` (`vrm train`):
`ModelArguments`, `DataArguments` and `VRMTrainingArguments` (a `transformers.TrainingArguments`). Flag names
follow `trl reward` where the meaning is the same (`--model_name_or_path`, `--dataset_name`, `--max_length`,
`--use_peft`, `--lora_r`, `--center_rewards_coefficient`, ...).

The four heads differ only in how the objective weights `w` and the semantic features `z` are produced:

| head  | objective weights `w`            | semantic features `z`              | default K |
|-------|----------------------------------|------------------------------------|-----------|
| `bt`  | none (K = 1, w = 1)              | identity: `z = h_xy`               | 1         |
| `ib`  | none (K = 1, w = 1)              | Gaussian `N(mu(h_xy), sigma^2)`    | 1         |
| `moe` | softmax gate `softmax(G h_x)`    | deterministic projection `W h_xy`  | 4         |
| `vrm` | `Dirichlet(alpha(h_x))`          | Gaussian `N(mu(h_xy), sigma^2)`    | 4         |
| `vrm-paper` | `Dirichlet(alpha(h_x))`    | Gaussian `N(mu(h_xy), sigma^2)`    | 16 (d = 4) |

In every case `reward = w . g(z)` with a decoder `g` from features to K per-objective scores. `vrm` has K = 4
objectives over d = 16 features; `vrm-paper` (added 2026-12-02) takes the VRM paper's proportions, many
objective weights over few semantic features (K = 16, d = 4): the first K_a objectives are tied to rated
attributes (`--attribute_names`), the others are free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, PretrainedConfig, TrainingArguments
from transformers.configuration_utils import SubConfigSpec

from .trl_args import MODEL_DTYPES, TRLDataArguments, TRLModelArguments

HEAD_TYPES = ("bt", "ib", "moe", "vrm", "vrm-paper")
WEIGHT_POSTERIORS = ("none", "softmax", "dirichlet", "logistic_normal")
FEATURE_POSTERIORS = ("identity", "deterministic", "gaussian")
POOLINGS = ("auto", "last", "mean", "cls")
DTYPES = ("float32", "bfloat16", "float16")
TRUNCATIONS = ("prompt_left", "drop")  # vrm.data.TRUNCATION_POLICIES
INPUT_FORMATS = ("auto", "chat", "pair", "plain")  # vrm.data.INPUT_FORMATS
BETA_SCHEDULES = ("constant", "linear", "cyclical")  # vrm.losses.BETA_SCHEDULES (losses imports config)
ATTRIBUTE_TARGETS = ("sign", "graded")  # vrm.losses.ATTRIBUTE_TARGETS
MIN_REWARD_SCALE = 1e-6  # a smaller reward_scale (degenerate reference rewards) blows rewards up

# The `ModelArguments` / `VRMConfig` fields that shape the reward head (grouped in `vrm train --help`, listed in
# the model card).
HEAD_OPTIONS = (
    "head_type",
    "num_objectives",
    "objective_names",
    "weight_posterior",
    "feature_posterior",
    "feature_dim",
    "decoder_hidden_size",
    "prior_concentration",
    "num_samples",
    "pooling",
    "prompt_state_gradient",
    "ensemble_members",
)

HEAD_PRESETS: dict[str, dict[str, Any]] = {
    "bt": {
        "weight_posterior": "none",
        "feature_posterior": "identity",
        "num_objectives": 1,
        "feature_dim": 16,
    },
    "ib": {
        "weight_posterior": "none",
        "feature_posterior": "gaussian",
        "num_objectives": 1,
        "feature_dim": 16,
    },
    "moe": {
        "weight_posterior": "softmax",
        "feature_posterior": "deterministic",
        "num_objectives": 4,
        "feature_dim": 16,
    },
    "vrm": {
        "weight_posterior": "dirichlet",
        "feature_posterior": "gaussian",
        "num_objectives": 4,
        "feature_dim": 16,
    },
    "vrm-paper": {
        "weight_posterior": "dirichlet",
        "feature_posterior": "gaussian",
        "num_objectives": 16,
        "feature_dim": 4,
    },
}


TOKENIZATION_KEYS = (
    "max_length",
    "max_prompt_length",
    "truncation",
    "input_format",
    "response_marker_ids",
    "pair_layout",  # how training laid out pairs (vrm.pair_layout); encoders are scored in the same layout
)
LEGACY_TOKENIZATION_FIELDS = ("max_length", "input_format", "response_marker_ids")


def record_tokenization(config: PretrainedConfig, settings: dict[str, Any]) -> None:
    """Write tokenization settings (a subset of `TOKENIZATION_KEYS`) into `config.tokenization`.

    The one writer of the block: training, every final save (plain, LoRA merged, FSDP / DeepSpeed) and
    `RewardPipeline.save_pretrained` go through it, so a checkpoint always says how to tokenize for it.
    """
    unknown = sorted(set(settings) - set(TOKENIZATION_KEYS))
    if unknown:
        raise ValueError(f"unknown tokenization settings {unknown}; known: {TOKENIZATION_KEYS}")
    block = dict(getattr(config, "tokenization", None) or {})
    for key, value in settings.items():
        if key in ("max_length", "max_prompt_length") and value is not None:
            value = int(value)
        elif key == "response_marker_ids" and value is not None:
            value = [int(token) for token in value]
        block[key] = value
    config.tokenization = {key: block[key] for key in TOKENIZATION_KEYS if key in block} or None


def _tokenization_accessors(key: str):
    def get(self):
        return (self.tokenization or {}).get(key)

    def set(self, value):
        record_tokenization(self, {key: value})

    return get, set


class VRMConfig(PretrainedConfig):
    """Configuration of a `VRMForSequenceClassification`: a backbone config plus the reward head.

    Args:
        text_config: config of the transformer backbone (any `AutoModel` architecture).
        head_type: one of `bt`, `ib`, `moe`, `vrm`, `vrm-paper`; fills in `weight_posterior`,
            `feature_posterior`, `num_objectives` and `feature_dim` when they are None.
        weight_posterior: `none` | `softmax` | `dirichlet` | `logistic_normal` — how objective weights come from
            the prompt state (`logistic_normal`: w = softmax(u), u Gaussian; the softmax-Gaussian ablation).
        feature_posterior: `identity` | `deterministic` | `gaussian` — how features come from the response state.
        num_objectives: K, the number of objectives (1 for bt/ib).
        objective_names: optional names of the K objectives (the first ones may be tied to rating columns).
        feature_dim: d, the dimension of the semantic features (ignored for `identity`; default from the preset).
        decoder_hidden_size: 0 for a linear decoder `g(z) = A z` (exact closed-form `reward_std`), else
            the width of a one-hidden-layer MLP decoder (Monte-Carlo `reward_std`).
        prior_concentration: alpha0 of the prior `Dirichlet(alpha0 * 1)`.
        concentration_min / concentration_max: clamp of the posterior concentrations.
        feature_logvar_min / feature_logvar_max: clamp of the posterior log-variances of z.
        num_samples: M, reparameterized samples per pair during training.
        num_eval_samples: Monte-Carlo samples for `reward_std` when it has no closed form.
        pooling: how the response state `h_xy` is read from the backbone: `last` token (causal backbones),
            `mean` over tokens or `cls`; `auto` picks `last` for causal and `mean` for bidirectional backbones.
        is_causal: whether the backbone attends causally; None = infer from the architecture.
        prompt_state_gradient: whether the objective-weight network trains the backbone through the prompt
            state h_x. False detaches h_x (the weight network still learns, on the backbone's current states):
            an encoder's prompt-only pass then runs forward only, which cuts vrm's extra cost over bt on
            bidirectional backbones to about a third; a causal backbone reads h_x from the shared pass anyway.
        tokenization: how texts became tokens at training time, one block written by `record_tokenization`
            (every save path) and read back by `vrm.data.PreferenceTokenizer.from_model_config` (every load
            path): `max_length`, `max_prompt_length`, `truncation` (policy), `input_format` (`chat`, `plain`
            or `pair`) and `response_marker_ids` (the token ids that end every prompt, e.g. the chat
            template's assistant header; they find the prompt/response boundary when `forward` gets no
            `prompt_lengths`). `config.max_length`, `config.input_format` and `config.response_marker_ids`
            read and write their entry of the block; checkpoints that stored them as top-level fields (before
            the block) load into it.
        reward_mean / reward_scale: affine normalization applied to the output `logits`:
            `logits = (reward - reward_mean) / reward_scale`.
        calibration_temperature: T of the predictive preference probability
            `sigmoid((mu+ - mu-) / (T sqrt(1 + pi s^2 / 8)))` on the output scale, fitted by `vrm calibrate`
            (`vrm.calibration`); 1 = uncalibrated. Rewards themselves do not change.
        ensemble_members: N, independent heads of the chosen type on the shared backbone (`vrm.ensemble`);
            1 (the default) is the single head, with the same weights and checkpoint format as before.
    """

    model_type = "vrm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PretrainedConfig | None = None
    head_type: str = "vrm"
    weight_posterior: str | None = None
    feature_posterior: str | None = None
    num_objectives: int | None = None
    objective_names: list[str] | None = None
    feature_dim: int | None = None
    decoder_hidden_size: int = 0
    prior_concentration: float = 1.0
    concentration_min: float = 0.05
    concentration_max: float = 1000.0
    feature_logvar_min: float = -12.0
    feature_logvar_max: float = 4.0
    num_samples: int = 4
    num_eval_samples: int = 64
    pooling: str = "auto"
    is_causal: bool | None = None
    prompt_state_gradient: bool = True
    tokenization: dict[str, Any] | None = None
    reward_mean: float = 0.0
    reward_scale: float = 1.0
    calibration_temperature: float = 1.0
    ensemble_members: int = 1

    # entries of the tokenization block, readable and writable as attributes (and as top-level keys of
    # checkpoints saved before the block existed)
    max_length = property(*(_tokenization_accessors("max_length")))
    input_format = property(*(_tokenization_accessors("input_format")))
    response_marker_ids = property(*(_tokenization_accessors("response_marker_ids")))

    def __post_init__(self, **kwargs):
        # The base class resets the attention implementation of sub-configs; keep a loaded backbone's choice.
        backbone_attention = getattr(self.text_config, "_attn_implementation_internal", None)
        # top-level fields of older checkpoints (the base class would drop `max_length`, a generation parameter)
        legacy = {key: kwargs.pop(key) for key in LEGACY_TOKENIZATION_FIELDS if key in kwargs}
        super().__post_init__(**kwargs)
        block = {key: value for key, value in legacy.items() if value is not None}
        record_tokenization(self, {**block, **(self.tokenization or {})})  # the block wins over old fields
        if backbone_attention is not None and "attn_implementation" not in kwargs:
            self.text_config._attn_implementation_internal = backbone_attention
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        preset = HEAD_PRESETS[self.head_type]
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.weight_posterior not in WEIGHT_POSTERIORS:
            raise ValueError(
                f"weight_posterior must be one of {WEIGHT_POSTERIORS}, got {self.weight_posterior!r}"
            )
        if self.feature_posterior not in FEATURE_POSTERIORS:
            raise ValueError(
                f"feature_posterior must be one of {FEATURE_POSTERIORS}, got {self.feature_posterior!r}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
        if self.num_objectives < 1:
            raise ValueError(f"num_objectives must be >= 1, got {self.num_objectives}")
        if self.weight_posterior == "logistic_normal" and self.num_objectives < 2:
            raise ValueError("weight_posterior 'logistic_normal' needs num_objectives >= 2")
        if self.objective_names is not None and len(self.objective_names) != self.num_objectives:
            raise ValueError(
                f"objective_names has {len(self.objective_names)} names but num_objectives={self.num_objectives}"
            )
        if isinstance(self.ensemble_members, bool) or not isinstance(self.ensemble_members, int):
            raise ValueError(f"ensemble_members must be an integer >= 1, got {self.ensemble_members!r}")
        if self.ensemble_members < 1:
            raise ValueError(f"ensemble_members must be >= 1, got {self.ensemble_members}")
        if self.prior_concentration <= 0:
            raise ValueError(f"prior_concentration must be > 0, got {self.prior_concentration}")
        for name in ("reward_mean", "reward_scale"):  # NaN / inf here make every reward NaN / inf
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        temperature = self.calibration_temperature
        valid = not isinstance(temperature, bool) and isinstance(temperature, int | float)
        if not (valid and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"calibration_temperature must be a finite number > 0, got {temperature!r}")
        if self.reward_scale < MIN_REWARD_SCALE:
            raise ValueError(f"reward_scale must be >= {MIN_REWARD_SCALE}, got {self.reward_scale}")
        # A reward model has one output: keep `num_labels` consistent for code that reads it.
        self.num_labels = 1

    def _get_generation_parameters(self) -> dict[str, Any]:
        # `max_length` is the tokenization budget (an entry of the block), not a generation parameter
        params = super()._get_generation_parameters()
        params.pop("max_length", None)
        return params

    @property
    def is_stochastic(self) -> bool:
        """True when the head has a posterior to sample from (so KL terms and `reward_std` are meaningful)."""
        return (
            self.weight_posterior in ("dirichlet", "logistic_normal") or self.feature_posterior == "gaussian"
        )


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
        metadata={"help": "Override the head's semantic features (ablations).", "choices": FEATURE_POSTERIORS},
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
        metadata={"help": "Over-long pairs: truncate the prompt from the left, or drop.", "choices": TRUNCATIONS},
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
            "dropped) or 'graded' ((1 + delta) / 2 with delta the rating difference over the rating range)."
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
