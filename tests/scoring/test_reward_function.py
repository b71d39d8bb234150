"""`VRMRewardFunction`, the reward function for TRL trainers: its call signature, device and dtype."""

import pytest
import torch
from tiny_models import PAIRS

from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer)


def test_grpo_reward_function_call_signature(pipeline):
    reward = VRMRewardFunction(pipeline)
    assert reward.__name__ == "vrm_reward"
    prompts, completions = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    expected = pipeline.score(prompts, completions).reward.tolist()
    # standard format, called as GRPOTrainer calls it: keywords plus extra dataset columns
    plain = reward(
        prompts=prompts, completions=completions, completion_ids=[[1]] * len(PAIRS), subset=["x"] * 6
    )
    assert isinstance(plain, list) and all(isinstance(r, float) for r in plain)
    assert plain == pytest.approx(expected, abs=1e-5)
    # conversational format
    conversational = reward(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": c}] for c in completions],
    )
    assert conversational == pytest.approx(expected, abs=1e-5)
    conservative = VRMRewardFunction(pipeline, conservative_lambda=1.0)(
        prompts=prompts, completions=completions
    )
    stds = pipeline.score(prompts, completions).reward_std.tolist()
    assert conservative == pytest.approx([r - s for r, s in zip(expected, stds, strict=True)], abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        reward(prompts=["a", "b"], completions=["c"])


@pytest.mark.slow
def test_reward_function_takes_device_and_dtype(trained_model_dir):
    output, _ = trained_model_dir
    reward = VRMRewardFunction(output, device="cpu", dtype="bfloat16")
    assert reward.pipeline.model.dtype == torch.bfloat16
    assert len(reward(prompts=["Hi"], completions=["Hello."])) == 1
    with pytest.raises(ValueError, match="dtype 'float8' is not one of"):
        VRMRewardFunction(output, dtype="float8")
