"""The conservative reward `reward - lambda * reward_std`: its form, the lambda checks, the TRL reward function
and `vrm score`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.scoring.conservative import check_conservative_lambda, conservative_reward
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction

PROMPTS = [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS]


def test_conservative_reward_form_and_lambda_checks():
    assert conservative_reward(2.0, 0.5, 1.5) == 1.25
    assert conservative_reward(np.array([1.0, 0.0]), np.array([0.2, 1.0]), 0.0).tolist() == [1.0, 0.0]
    assert check_conservative_lambda(0) == 0.0 and check_conservative_lambda(2) == 2.0
    for bad in (-0.1, math.nan, math.inf, "1", True):
        with pytest.raises(ValueError, match="conservative_lambda must be"):
            check_conservative_lambda(bad)


def test_reward_function_returns_reward_minus_lambda_std(stochastic_pipeline, stochastic_scores):
    for lam in (0.0, 0.5, 3.0):
        rewards = VRMRewardFunction(stochastic_pipeline, conservative_lambda=lam)(
            prompts=PROMPTS, completions=RESPONSES
        )
        assert rewards == pytest.approx(
            (stochastic_scores.reward - lam * stochastic_scores.reward_std).tolist(), abs=1e-5
        )
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="conservative_lambda must be a finite number >= 0"):
            VRMRewardFunction(stochastic_pipeline, conservative_lambda=bad)


def test_pipeline_and_vrm_score_refuse_a_negative_lambda(stochastic_pipeline, tmp_path, capsys):
    with pytest.raises(ValueError, match="conservative_lambda must be a finite number >= 0"):
        RewardPipeline(stochastic_pipeline.model, stochastic_pipeline.tokenizer, conservative_lambda=-0.5)
    model_dir = str(tmp_path / "model")
    stochastic_pipeline.save_pretrained(model_dir)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "response": "a"}\n')
    argv = ["score", "--model", model_dir, "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--conservative_lambda", "-1"]) == 1
    assert "vrm score: error: conservative_lambda must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
