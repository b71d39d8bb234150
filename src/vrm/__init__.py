"""vrm — Variational Reward Models: prompt-aware objective weights, response features, calibrated uncertainty.

The package is one subpackage per stage of the data flow, each importing only the ones before it:
`models` -> `data` -> `training` -> `scoring` -> `evaluation` -> `serving` -> `cli`. The names below are the
public API, imported on first use so that `vrm --help` does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "HEAD_TYPES": "vrm.models",
    "HeadConfig": "vrm.models",
    "VRMConfig": "vrm.models",
    "VRMForSequenceClassification": "vrm.models",
    "RewardModelOutput": "vrm.models",
    "PairwiseRewardOutput": "vrm.models",
    "LatentRewardHead": "vrm.models",
    "EnsembleHead": "vrm.models",
    "HeadOutput": "vrm.models",
    "PairSamples": "vrm.models",
    "DataFormatError": "vrm.data",
    "PreferenceExample": "vrm.data",
    "PreferenceTokenizer": "vrm.data",
    "PreferenceCollator": "vrm.data.collate",
    "load_preferences": "vrm.data",
    "VRMTrainer": "vrm.training",
    "VRMTrainingArguments": "vrm.training",
    "ModelArguments": "vrm.training",
    "DataArguments": "vrm.training",
    "RewardPipeline": "vrm.scoring",
    "DeepEnsembleRewardModel": "vrm.scoring",
    "VRMRewardFunction": "vrm.scoring",
    "load_scorer": "vrm.scoring",
    "evaluate_model": "vrm.evaluation",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vrm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
