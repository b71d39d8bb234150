"""vrm — Variational Reward Models: prompt-aware objective weights, response features, calibrated uncertainty."""

from .config import HEAD_TYPES, DataArguments, ModelArguments, VRMConfig, VRMTrainingArguments
from .data import DataFormatError, PreferenceCollator, PreferenceTokenizer, load_preferences
from .heads import HeadOutput, LatentRewardHead, PairSamples
from .modeling import RewardModelOutput, VRMForSequenceClassification
from .pipeline import RewardPipeline

__version__ = "0.1.0"

__all__ = [
    "HEAD_TYPES",
    "DataArguments",
    "DataFormatError",
    "HeadOutput",
    "LatentRewardHead",
    "ModelArguments",
    "PairSamples",
    "PreferenceCollator",
    "PreferenceTokenizer",
    "RewardModelOutput",
    "RewardPipeline",
    "VRMConfig",
    "VRMForSequenceClassification",
    "VRMTrainingArguments",
    "load_preferences",
]
