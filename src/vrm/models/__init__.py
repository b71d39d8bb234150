"""The reward model: a `transformers` backbone plus a latent reward head (bt, ib, moe, vrm).

These modules are what a saved checkpoint carries beside its weights for `trust_remote_code=True`: they import
torch and transformers only.
"""

from vrm.models.config import HEAD_OPTIONS, HEAD_PRESETS, HEAD_TYPES, HeadConfig, VRMConfig
from vrm.models.head_ensemble import EnsembleHead
from vrm.models.heads import HeadOutput, LatentRewardHead, PairSamples
from vrm.models.integrity import ModelLoadError, NonFiniteError
from vrm.models.modeling import PairwiseRewardOutput, RewardModelOutput, VRMForSequenceClassification

__all__ = [
    "HEAD_OPTIONS",
    "HEAD_PRESETS",
    "HEAD_TYPES",
    "EnsembleHead",
    "HeadConfig",
    "HeadOutput",
    "LatentRewardHead",
    "ModelLoadError",
    "NonFiniteError",
    "PairSamples",
    "PairwiseRewardOutput",
    "RewardModelOutput",
    "VRMConfig",
    "VRMForSequenceClassification",
]
