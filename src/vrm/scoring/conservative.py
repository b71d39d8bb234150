"""The conservative reward used against over-optimization: `reward - lambda * reward_std`.

A policy optimised against a learned reward drifts to responses where the reward model is wrong in its favour,
and those are mostly responses unlike its training data, where its posterior is wide. Scoring with a lower
confidence bound of the reward instead of its mean,

    r_lambda = mu - lambda * sigma,     lambda >= 0,

makes an uncertain high reward worth less than a certain one (lambda = 0: the plain reward). For a Gaussian
posterior N(mu, sigma^2), r_lambda is its Phi(-lambda) quantile (lambda = 1.645: the 5% quantile). Only the
scores' `reward` and `reward_std` are read, so the same form serves a single head's posterior std and an
ensemble's spread. Used by `VRMRewardFunction` (TRL GRPO), `vrm serve` (`--conservative_lambda`, and a
per-request `conservative_lambda` field), `vrm score` and `vrm bench bon --conservative_lambda`.

Lambda is checked by one rule everywhere (`check_conservative_lambda`): a finite number in
[0, MAX_CONSERVATIVE_LAMBDA = 1e6]. The bound keeps the conservative reward finite: a float32 reward or std is at
most about 3.4e38 in size, so |reward - lambda * std| <= 3.4e38 * (1 + 1e6) ~ 3.4e44, far inside float64's range
(~1.8e308), and `conservative_rewards` (the server, the TRL reward function) and `RewardPipeline.result`
(`vrm score`) compute it in float64 (Python floats). (A float32 tensor computation, as `vrm bench bon` ranks with,
stays finite for any std below ~3.4e32.) Larger lambdas are of no use anyway: at 1e6 the reward hardly counts
next to the std. A value that is not finite (a NaN or infinite reward, or std with lambda > 0, from a broken
model) is never passed on by `conservative_rewards`: it raises `NonFiniteRewardError` naming the item.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

Values = TypeVar("Values")

MAX_CONSERVATIVE_LAMBDA = 1e6  # see the module docstring: reward - lambda * std stays finite in float64


def check_conservative_lambda(value: Any, name: str = "conservative_lambda") -> float:
    """`value` as a float if it is a finite number in [0, MAX_CONSERVATIVE_LAMBDA] (not a bool or a string),
    else a `ValueError` naming `name`. The one rule for lambda: the pipeline, `VRMRewardFunction`, `vrm serve`
    (its option and each request's field), `vrm score` and `vrm bench bon` all apply it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{name} must be a finite number >= 0 and <= {MAX_CONSERVATIVE_LAMBDA:g}, got {value!r}"
        )
    if not (math.isfinite(value) and 0 <= value <= MAX_CONSERVATIVE_LAMBDA):
        raise ValueError(
            f"{name} must be a finite number >= 0 and <= {MAX_CONSERVATIVE_LAMBDA:g}, got {value!r}"
        )
    return float(value)


class NonFiniteRewardError(ValueError):
    """An item's (conservative) reward is not finite; `index` is the item's position, `lambda_at_fault` whether
    its reward and std were finite (so only lambda * std overflowed)."""

    def __init__(
        self, index: int, value: float, reward: float, reward_std: float, conservative_lambda: float
    ):
        self.index, self.value = index, value
        self.reward, self.reward_std, self.conservative_lambda = reward, reward_std, conservative_lambda
        self.lambda_at_fault = math.isfinite(reward) and math.isfinite(reward_std)
        parts = f"reward={reward!r}, reward_std={reward_std!r}"
        if conservative_lambda:
            parts += f", conservative_lambda={conservative_lambda!r}"
        super().__init__(f"the reward is not finite ({value!r}; {parts})")


def conservative_rewards(
    reward: Iterable[Any], reward_std: Iterable[Any], conservative_lambda: float
) -> list[float]:
    """`reward - conservative_lambda * reward_std` of each item as Python floats (float64, so finite for any
    finite float32 reward and std with a checked lambda); `NonFiniteRewardError` for the first item whose value
    is not finite (a NaN or infinite reward or std from the model), so that none is ever handed on."""
    values = []
    for index, (r, s) in enumerate(zip(_floats(reward), _floats(reward_std), strict=True)):
        value = r - conservative_lambda * s if conservative_lambda else r
        if not math.isfinite(value):
            raise NonFiniteRewardError(index, value, r, s, conservative_lambda)
        values.append(value)
    return values


def _floats(values: Any) -> list[float]:
    values = values.tolist() if hasattr(values, "tolist") else values
    return [float(value) for value in values]


def conservative_reward(reward: Values, reward_std: Values, conservative_lambda: float) -> Values:
    """`reward - conservative_lambda * reward_std` (tensors, arrays or floats; lambda = 0 returns `reward`)."""
    if not conservative_lambda:
        return reward
    return reward - conservative_lambda * reward_std
