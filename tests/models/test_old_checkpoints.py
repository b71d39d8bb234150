"""Checkpoints saved by vrm 0.1 (flat package, head options as top-level config keys, the old remote-code files)
load in this version and give the rewards they gave then."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vrm.models import VRMForSequenceClassification
from vrm.scoring import RewardPipeline

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "checkpoints", "vrm_0_1")


@pytest.mark.parametrize("name", ["vrm", "bt_ensemble"])
def test_a_checkpoint_saved_by_vrm_0_1_gives_the_same_rewards(name, tmp_path):
    with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as handle:
        stored = json.load(handle)
    pipeline = RewardPipeline.from_pretrained(os.path.join(FIXTURE, name), device="cpu")
    for (prompt, response), expected in zip(stored["rows"], stored["expected"][name], strict=True):
        result = pipeline(prompt, response)
        assert result["reward"] == pytest.approx(expected["reward"], abs=1e-5)
        assert result["reward_std"] == pytest.approx(expected["reward_std"], abs=1e-5)
    # saved again by this version, it loads again and keeps its head
    copy = tmp_path / "again"
    pipeline.save_pretrained(str(copy))
    again = VRMForSequenceClassification.from_pretrained(str(copy))
    assert again.config.head_type == pipeline.model.config.head_type
    assert again.config.ensemble_members == pipeline.model.config.ensemble_members
    assert not os.path.exists(copy / "ensemble.py")  # the new save ships the new remote code
    shutil.rmtree(copy)
