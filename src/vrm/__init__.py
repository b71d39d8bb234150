"""vrm — Variational Reward Models: prompt-aware objective weights, response features, calibrated uncertainty."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# imported on first use: `vrm --help` and `vrm --version` must not wait for torch and transformers
_EXPORTS = {
    "HEAD_TYPES": "config",
    "DataArguments": "arguments",
    "ModelArguments": "arguments",
    "VRMConfig": "config",
    "VRMTrainingArguments": "arguments",
    "DataFormatError": "data",
    "PreferenceCollator": "data",
    "PreferenceTokenizer": "data",
    "load_preferences": "data",
    "DeepEnsembleRewardModel": "deep_ensemble",
    "EnsembleHead": "ensemble",
    "HeadOutput": "heads",
    "LatentRewardHead": "heads",
    "PairSamples": "heads",
    "RewardModelOutput": "modeling",
    "VRMForSequenceClassification": "modeling",
    "RewardPipeline": "pipeline",
}

if TYPE_CHECKING:
    from .arguments import DataArguments, ModelArguments, VRMTrainingArguments
    from .config import HEAD_TYPES, VRMConfig
    from .data import DataFormatError, PreferenceCollator, PreferenceTokenizer, load_preferences
    from .deep_ensemble import DeepEnsembleRewardModel
    from .ensemble import EnsembleHead
    from .heads import HeadOutput, LatentRewardHead, PairSamples
    from .modeling import PairwiseRewardOutput, RewardModelOutput, VRMForSequenceClassification
    from .pipeline import RewardPipeline


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vrm' has no attribute {name!r}")


__all__ = [
    "HEAD_TYPES",
    "DataArguments",
    "DataFormatError",
    "DeepEnsembleRewardModel",
    "EnsembleHead",
    "HeadOutput",
    "LatentRewardHead",
    "ModelArguments",
    "PairSamples",
    "PairwiseRewardOutput",
    "PreferenceCollator",
    "PreferenceTokenizer",
    "RewardModelOutput",
    "RewardPipeline",
    "VRMConfig",
    "VRMForSequenceClassification",
    "VRMTrainingArguments",
    "load_preferences",
]
