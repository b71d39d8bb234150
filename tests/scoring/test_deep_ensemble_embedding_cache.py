"""A deep ensemble whose members share one frozen backbone shares its embedding cache; members whose backbones
differ are refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from tiny_models import PAIRS

from vrm.scoring.loading import load_scorer
from vrm.scoring.pipeline import RewardPipeline

PROMPTS = [p for p, _, _ in PAIRS]
CHOSEN = [c for _, c, _ in PAIRS]


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_model):
    """Two heads (different seeds) on one backbone, and a third model on another backbone."""
    root = tmp_path_factory.mktemp("shared_backbone")
    first, tokenizer, _ = tiny_model("llama_chat", "vrm", seed=0, num_objectives=3)
    paths = []
    for seed in (0, 1, 2):
        model, _, _ = tiny_model("llama_chat", "vrm", seed=seed, num_objectives=3)
        if seed < 2:  # the same frozen backbone, a different head
            model.backbone.load_state_dict(first.backbone.state_dict())
        path = str(root / f"m{seed}")
        RewardPipeline(model, tokenizer).save_pretrained(path)
        paths.append(path)
    return paths


def test_members_on_one_backbone_share_the_embedding_cache(members, tmp_path):
    cache = str(tmp_path / "cache")
    plain = load_scorer(members[:2], device="cpu").score(PROMPTS, CHOSEN)
    cached = load_scorer(members[:2], device="cpu", embedding_cache=cache)
    scores = cached.score(PROMPTS, CHOSEN)
    assert cached.embedding_cache.computed == len(PROMPTS)  # one backbone pass for both members
    np.testing.assert_allclose(scores.reward.numpy(), plain.reward.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.member_rewards.numpy(), plain.member_rewards.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.reward_std.numpy(), plain.reward_std.numpy(), atol=1e-5)
    assert len(os.listdir(cache)) == 1
    single = load_scorer(members[0], device="cpu", embedding_cache=cache)  # the first member's states, reused
    single.score(PROMPTS, CHOSEN)
    assert single.embedding_cache.computed == 0
    assert torch.equal(scores.member_rewards[:, 0], single.score(PROMPTS, CHOSEN).reward)


def test_members_on_different_backbones_are_refused_by_name(members, tmp_path):
    with pytest.raises(ValueError, match=r"m2: its backbone differs from .*m0's \(.*weights_checksum"):
        load_scorer([members[0], members[2]], device="cpu", embedding_cache=str(tmp_path / "cache"))
