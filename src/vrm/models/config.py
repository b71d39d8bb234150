"""Configuration: the model config (`VRMConfig`) and the head presets that make bt / ib / moe / vrm.

Everything that shapes the model lives in `VRMConfig`, which is saved as `config.json` next to the weights.
The reward head's options are one dataclass, `HeadConfig`: `VRMConfig` inherits its fields (so they are saved
in `config.json`) and so does `vrm.training.ModelArguments` (so `vrm train` and its YAML configs take them):
a new head option is one field here. This module is copied beside `trust_remote_code` checkpoints and imports
only transformers.

The four heads differ only in how the objective weights `w` and the semantic features `z` are produced:

| head  | objective weights `w`            | semantic features `z`              | default K |
|-------|----------------------------------|------------------------------------|-----------|
| `bt`  | none (K = 1, w = 1)              | identity: `z = h_xy`               | 1         |
| `ib`  | none (K = 1, w = 1)              | Gaussian `N(mu(h_xy), sigma^2)`    | 1         |
| `moe` | softmax gate `softmax(G h_x)`    | deterministic projection `W h_xy`  | 4         |
| `vrm` | `Dirichlet(alpha(h_x))`          | Gaussian `N(mu(h_xy), sigma^2)`    | 4         |
| `vrm-paper` | `Dirichlet(alpha(h_x))`    | Gaussian `N(mu(h_xy), sigma^2)`    | 16 (d = 4) |

In every case `reward = w . g(z)` with a decoder `g` from features to K per-objective scores. `vrm` has K = 4
objectives over d = 16 features; `vrm-paper` takes the VRM paper's proportions, many
objective weights over few semantic features (K = 16, d = 4): the first K_a objectives are tied to rated
attributes (`--attribute_names`), the others are free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

HEAD_TYPES = ("bt", "ib", "moe", "vrm", "vrm-paper")
WEIGHT_POSTERIORS = ("none", "softmax", "dirichlet", "logistic_normal")
FEATURE_POSTERIORS = ("identity", "deterministic", "gaussian")
POOLINGS = ("auto", "last", "mean", "cls")
MIN_REWARD_SCALE = 1e-6  # a smaller reward_scale (degenerate reference rewards) blows rewards up


# (option, lowest, highest): the highest values keep one head's tensors within memory; a config asking for
# more (a million ensemble members, a million samples per pair) is refused by name, not left to hang
INTEGER_RANGES = (
    ("num_objectives", 1, 4096),
    ("feature_dim", 1, 65536),
    ("decoder_hidden_size", 0, 65536),
    ("num_samples", 1, 1024),
    ("num_eval_samples", 1, 65536),
    ("ensemble_members", 1, 64),
)


@dataclass(kw_only=True)
class HeadConfig:
    """The options of the reward head: the one definition that `VRMConfig` (saved in `config.json`) and
    `vrm.training.ModelArguments` (`vrm train` flags and YAML keys) inherit. `head_type` picks a preset
    (`HEAD_PRESETS`) that fills the fields left at None."""

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
    concentration_min: float = field(
        default=0.05, metadata={"help": "Lower clamp of posterior concentrations."}
    )
    concentration_max: float = field(
        default=1000.0, metadata={"help": "Upper clamp of posterior concentrations."}
    )
    feature_logvar_min: float = field(default=-12.0, metadata={"help": "Lower clamp of log-variances of z."})
    feature_logvar_max: float = field(default=4.0, metadata={"help": "Upper clamp of log-variances of z."})
    num_samples: int = field(default=4, metadata={"help": "M, reparameterized samples per pair."})
    num_eval_samples: int = field(
        default=64, metadata={"help": "Monte-Carlo samples of reward_std where it has no closed form."}
    )
    pooling: str = field(default="auto", metadata={"help": "Response-state pooling.", "choices": POOLINGS})
    prompt_state_gradient: bool = field(
        default=True,
        metadata={
            "help": "Let the objective weights train the backbone through the prompt state. --no_prompt_state_"
            "gradient detaches it: on encoders the prompt-only pass then costs a forward pass only."
        },
    )
    ensemble_members: int = field(
        default=1,
        metadata={
            "help": "N heads of the chosen type on one backbone, each trained on its own Poisson(1) bootstrap "
            "of the pairs: reward = member mean, reward_std splits into aleatoric and epistemic (1: one head)."
        },
    )

    def check_head(self) -> None:
        """Every head option within its range (a `ValueError` naming the option); fields left at None are the
        preset's to fill. Called when a config or the training arguments are made."""
        for name, choices in (
            ("head_type", HEAD_TYPES),
            ("weight_posterior", WEIGHT_POSTERIORS),
            ("feature_posterior", FEATURE_POSTERIORS),
            ("pooling", POOLINGS),
        ):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        for name, low, high in INTEGER_RANGES:
            value = getattr(self, name)
            if value is None and name in ("num_objectives", "feature_dim"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        for name in ("prior_concentration", "concentration_min", "concentration_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("feature_logvar_min", "feature_logvar_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for low, high in (
            ("concentration_min", "concentration_max"),
            ("feature_logvar_min", "feature_logvar_max"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(
                    f"{low} must be below {high}, got {getattr(self, low)} >= {getattr(self, high)}"
                )
        names = self.objective_names
        if names is not None and self.num_objectives is not None and len(names) != self.num_objectives:
            raise ValueError(
                f"objective_names has {len(names)} names but num_objectives={self.num_objectives}"
            )


# the head's options by name (grouped in `vrm train --help`, listed in the model card)
HEAD_OPTIONS = tuple(item.name for item in fields(HeadConfig))

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
    "pair_layout",  # how training laid out pairs (vrm.data.pair_layout); encoders are scored in the same layout
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


class VRMConfig(HeadConfig, PretrainedConfig):
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
            (`vrm.evaluation.calibration`); 1 = uncalibrated. Rewards themselves do not change.
        ensemble_members: N, independent heads of the chosen type on the shared backbone (`vrm.models.head_ensemble`);
            1 (the default) is the single head, with the same weights and checkpoint format as before.
    """

    model_type = "vrm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PretrainedConfig | None = None
    is_causal: bool | None = None
    tokenization: dict[str, Any] | None = None
    reward_mean: float = 0.0
    reward_scale: float = 1.0
    calibration_temperature: float = 1.0

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
        self.check_head()
        for key, value in HEAD_PRESETS[self.head_type].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.check_head()
        if self.weight_posterior == "logistic_normal" and self.num_objectives < 2:
            raise ValueError("weight_posterior 'logistic_normal' needs num_objectives >= 2")
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
