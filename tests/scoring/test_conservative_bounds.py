"""The bounds of the conservative reward: lambda is at most 1e6 (one rule, `check_conservative_lambda`), the
reward stays finite for any finite float32 reward and std, and the TRL reward function never hands a trainer a
reward that is not finite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import PAIRS

from vrm.scoring.conservative import (
    MAX_CONSERVATIVE_LAMBDA,
    NonFiniteRewardError,
    check_conservative_lambda,
    conservative_rewards,
)
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction

PROMPTS = [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline) -> RewardPipeline:
    return tiny_pipeline()


def test_lambda_is_at_most_the_documented_maximum():
    assert MAX_CONSERVATIVE_LAMBDA == 1e6
    assert check_conservative_lambda(1e6) == 1e6 and check_conservative_lambda(10**6) == 1e6
    for bad in (1e300, 1e6 * (1 + 1e-15), 10**7, -1e-300):
        with pytest.raises(
            ValueError, match=r"conservative_lambda must be a finite number >= 0 and <= 1e\+06"
        ):
            check_conservative_lambda(bad)


def test_the_conservative_reward_is_finite_for_any_finite_float32_reward_and_std():
    reward = torch.tensor([-FLOAT32_MAX, FLOAT32_MAX, 0.5, -1e-45], dtype=torch.float32)
    std = torch.tensor([FLOAT32_MAX, 0.0, FLOAT32_MAX, 1e-45], dtype=torch.float32)
    values = conservative_rewards(reward, std, MAX_CONSERVATIVE_LAMBDA)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert values[0] == pytest.approx(-FLOAT32_MAX * (1 + 1e6))
    assert conservative_rewards(np.array([1.0, 2.0]), np.array([0.5, 0.0]), 2.0) == [0.0, 2.0]
    assert conservative_rewards([1.0], [math.nan], 0.0) == [1.0]  # lambda 0: the plain reward, std unused


@pytest.mark.parametrize(
    ("reward", "std", "lam"),
    [(math.nan, 0.1, 0.0), (-math.inf, 0.1, 0.5), (1.0, math.inf, 0.5), (1.0, math.nan, 2)],
)
def test_a_non_finite_reward_raises_naming_the_item(reward, std, lam):
    with pytest.raises(NonFiniteRewardError, match="the reward is not finite") as info:
        conservative_rewards([0.0, reward], [0.1, std], lam)
    assert info.value.index == 1 and not info.value.lambda_at_fault


def test_reward_function_and_pipeline_refuse_a_huge_lambda(pipeline):
    for lam in (1e300, 2e6):
        with pytest.raises(
            ValueError, match=r"conservative_lambda must be a finite number >= 0 and <= 1e\+06"
        ):
            VRMRewardFunction(pipeline, conservative_lambda=lam)
        with pytest.raises(
            ValueError, match=r"conservative_lambda must be a finite number >= 0 and <= 1e\+06"
        ):
            RewardPipeline(pipeline.model, pipeline.tokenizer, conservative_lambda=lam)
    rewards = VRMRewardFunction(pipeline, conservative_lambda=1e6)(prompts=PROMPTS, completions=RESPONSES)
    assert all(isinstance(r, float) and math.isfinite(r) for r in rewards)


@pytest.mark.parametrize(
    ("field", "value", "lam"),
    [("reward", math.nan, 0.0), ("reward", math.inf, 0.5), ("reward_std", math.inf, 0.5)],
)
def test_reward_function_never_hands_a_non_finite_reward_to_the_trainer(
    pipeline, monkeypatch, field, value, lam
):
    score = pipeline.score

    def broken_score(prompts, responses, *args, **kwargs):
        scores = score(prompts, responses, *args, **kwargs)
        getattr(scores, field)[2] = value
        return scores

    monkeypatch.setattr(pipeline, "score", broken_score)
    reward = VRMRewardFunction(pipeline, conservative_lambda=lam)
    with pytest.raises(ValueError, match=r"vrm_reward: completions\[2\]: the reward is not finite"):
        reward(prompts=PROMPTS, completions=RESPONSES)
