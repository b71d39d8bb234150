"""GRPO end to end: TRL's `GRPOTrainer` optimises a tiny local policy against a tiny vrm reward model.

Two optimizer steps on CPU (a few seconds): the reward function must be called with the policy's own completions,
its (conservative) rewards must be what `VRMRewardFunction` gives on those completions, TRL must log them, and
the policy must move.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import PAIRS, llama_config, make_llama_tokenizer

from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction

trl = pytest.importorskip("trl", reason="the GRPO end-to-end test needs trl (the `dev` extra)")


class RecordingReward(VRMRewardFunction):
    """`VRMRewardFunction` that keeps what TRL passed it and what it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append(
            {
                "prompts": prompts,
                "completions": completions,
                "completion_ids": kwargs.get("completion_ids"),
                "rewards": rewards,
            }
        )
        return rewards


@pytest.mark.slow
def test_grpo_trains_a_policy_on_the_conservative_vrm_reward(tmp_path, tiny_model):
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    tokenizer = make_llama_tokenizer()  # byte-level BPE with a ChatML-like chat template
    torch.manual_seed(0)
    policy = LlamaForCausalLM(llama_config(len(tokenizer)))
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    model, reward_tokenizer, _ = tiny_model(
        "llama_chat"
    )  # an untrained vrm head with a posterior (reward_std > 0)
    pipeline = RewardPipeline(model, reward_tokenizer)
    reward = RecordingReward(pipeline, conservative_lambda=0.5)
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p, _, _ in PAIRS[:4]])
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    before = [p.detach().clone() for p in policy.parameters()]
    trainer = trl.GRPOTrainer(
        model=policy, reward_funcs=[reward], args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()

    assert len(reward.calls) == 2  # one generation round per step
    logged = [entry for entry in trainer.state.log_history if "rewards/vrm_reward/mean" in entry]
    assert len(logged) == 2
    reference = VRMRewardFunction(pipeline, conservative_lambda=0.5)
    for call, entry in zip(reward.calls, logged, strict=True):
        completions, ids = call["completions"], call["completion_ids"]
        assert len(completions) == 4 and ids is not None and len(ids) == 4
        for completion, completion_ids in zip(completions, ids, strict=True):
            # the policy's own generations: the text is the decoded ids the policy sampled
            assert completion == [
                {"role": "assistant", "content": tokenizer.decode(completion_ids, skip_special_tokens=True)}
            ]
        assert all(math.isfinite(r) for r in call["rewards"])
        # the rewards are VRMRewardFunction's on those completions, i.e. reward - 0.5 * reward_std
        assert call["rewards"] == pytest.approx(reference(call["prompts"], completions), abs=1e-5)
        scores = pipeline.score(call["prompts"], completions)
        plain = scores.reward.tolist()
        assert call["rewards"] == pytest.approx((scores.reward - 0.5 * scores.reward_std).tolist(), abs=1e-5)
        assert call["rewards"] != pytest.approx(plain, abs=1e-3)
        # and TRL logged their mean as the step's reward
        assert entry["rewards/vrm_reward/mean"] == pytest.approx(sum(call["rewards"]) / 4, abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
