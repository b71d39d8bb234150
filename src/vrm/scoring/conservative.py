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
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

Values = TypeVar("Values")


def check_conservative_lambda(value: Any, name: str = "conservative_lambda") -> float:
    """`value` as a float if it is a finite number >= 0, else a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def conservative_reward(reward: Values, reward_std: Values, conservative_lambda: float) -> Values:
    """`reward - conservative_lambda * reward_std` (tensors, arrays or floats; lambda = 0 returns `reward`)."""
    if not conservative_lambda:
        return reward
    return reward - conservative_lambda * reward_std
