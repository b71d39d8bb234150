"""One entry point for any reward model on disk: vrm checkpoints, deep ensembles of them, and foreign
`AutoModelForSequenceClassification` reward models, each loaded into the pipeline that scores it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from vrm.scoring.pipeline import RewardPipeline


def load_scorer(path: str | Sequence[str], *, trust_remote_code: bool = False, **kwargs: Any):
    """A `RewardPipeline` for vrm checkpoints, a `vrm.scoring.classifier.SequenceClassifierPipeline` for other reward
    models (loaded with `trust_remote_code` when they need their own code; vrm checkpoints never do). Several
    paths: the deep ensemble of those vrm checkpoints (`vrm.scoring.deep_ensemble`)."""
    from vrm.scoring.classifier import SequenceClassifierPipeline
    from vrm.scoring.device import resolve

    kwargs["device"], kwargs["dtype"] = resolve(kwargs.get("device"), kwargs.get("dtype"))
    if not isinstance(path, str):
        paths = list(path)
        # the members of an ensemble on one frozen backbone share its states
        if len(paths) > 1 and kwargs.get("embedding_cache"):
            from vrm.scoring.deep_ensemble import load_deep_ensemble

            device, dtype = kwargs.pop("device"), kwargs.pop("dtype")
            ensemble, tokenizer = load_deep_ensemble(paths, device=device, dtype=dtype, shared_backbone=True)
            return RewardPipeline(ensemble, tokenizer, **kwargs)
        return RewardPipeline.from_pretrained(paths, **kwargs)
    config_path = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as handle:
            if json.load(handle).get("model_type") == "vrm":
                return RewardPipeline.from_pretrained(path, **kwargs)
    elif os.path.exists(path) or path.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{path}: not a saved model directory (no config.json)")
    for vrm_only in ("normalize", "conservative_lambda"):
        kwargs.pop(vrm_only, None)
    if kwargs.pop("embedding_cache", None):
        print(f"[vrm] {path} is not a vrm model: scored without the embedding cache", flush=True)
    return SequenceClassifierPipeline.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
