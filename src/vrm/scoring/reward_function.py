"""Using a vrm reward model inside RL trainers.

TRL `GRPOTrainer` (and `RLOOTrainer`) take reward functions called as
`reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns) -> list[float]`:

    from trl import GRPOTrainer
    from vrm.scoring.reward_function import VRMRewardFunction

    reward = VRMRewardFunction("runs/my-rm", conservative_lambda=0.5)   # reward - 0.5 * reward_std
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], train_dataset=prompts, args=grpo_config)

Prompts and completions may be plain text (standard format) or message lists (conversational format, where each
completion is `[{"role": "assistant", "content": ...}]`); both are templated as at reward-model training time.

OpenRLHF (PPO, REINFORCE++, GRPO) and any trainer that posts texts to a URL: run `vrm serve --model DIR` and pass
`--remote_rm_url http://HOST:PORT/get_reward` (see `vrm.serving.app`).

Trainers that load a sequence-classification reward model themselves get one from
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` — vrm need not be installed
there; its `logits` [B, 1] are the reward, with the prompt boundary found from the chat template's assistant
header. (TRL's `PPOTrainer` instead reads per-token scores through `model.score(hidden_states)`, which a
prompt-conditioned reward cannot provide; use the reward-function or HTTP paths with it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vrm.scoring.conservative import NonFiniteRewardError, check_conservative_lambda, conservative_rewards
from vrm.scoring.pipeline import RewardPipeline


class VRMRewardFunction:
    """A TRL reward function backed by a vrm checkpoint (or a ready `RewardPipeline`).

    Returns the (normalized) reward, or the conservative reward `reward - conservative_lambda * reward_std`
    when `conservative_lambda > 0` (`vrm.scoring.conservative`; a lambda that is not a number in [0, 1e6] is a
    `ValueError`). A reward that is not finite (NaN or infinite, from a broken model) is never handed to the
    trainer: the call raises a `ValueError` naming the completion.
    `device` / `dtype` default to `auto` (CUDA + bfloat16 when available, else CPU + float32; see `vrm.scoring.device`).
    """

    def __init__(
        self,
        model: str | RewardPipeline,
        *,
        conservative_lambda: float = 0.0,
        batch_size: int = 16,
        device: str | None = None,
        dtype: Any = None,
        name: str = "vrm_reward",
    ):
        self.conservative_lambda = check_conservative_lambda(conservative_lambda)
        if isinstance(model, RewardPipeline):
            self.pipeline = model
        else:
            self.pipeline = RewardPipeline.from_pretrained(
                model, device=device, dtype=dtype, batch_size=batch_size
            )
        self.__name__ = name  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores = self.pipeline.score(list(prompts), list(completions))
        try:
            return conservative_rewards(scores.reward, scores.reward_std, self.conservative_lambda)
        except NonFiniteRewardError as err:
            raise ValueError(
                f"{self.__name__}: completions[{err.index}]: {err}; refusing to hand a non-finite reward to "
                "the trainer"
            ) from None
