"""Statistics of every study: mean ± std over seeds and the paired sign-flip permutation test.

* `mean_std` — mean, sample standard deviation (ddof 1; 0 for a single value) and count of the values that are
  numbers (None and NaN are left out: a seed without the metric);
* `paired_p_value` — two-sided p-value of mean(a − b) = 0 for paired per-item scores, by flipping the sign of
  each difference (`scipy.stats.permutation_test`, exact when 2^items is at most the resamples);
* `pair_correctness` — per pair 1 (ranked right), 0 (wrong) or 0.5 (an exact tie).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def is_number(value: object) -> bool:
    return value is not None and not (isinstance(value, float | np.floating) and math.isnan(value))


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with ddof 1; 0 for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float | None]) -> dict[str, float]:
    """{"mean", "std", "n"} of the values that are numbers (NaN mean and std when there are none)."""
    found = [float(v) for v in values if is_number(v)]
    if not found:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(np.mean(found)), "std": sample_std(found), "n": len(found)}


def paired_p_value(a: Sequence[float], b: Sequence[float], resamples: int = 10000) -> float:
    """Two-sided p-value of mean(a - b) = 0 for paired scores (sign-flip permutation test; 1 if a == b)."""
    from scipy.stats import permutation_test

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(diff):
        return 1.0
    test = permutation_test(
        (diff,),
        np.mean,
        permutation_type="samples",
        n_resamples=resamples,
        alternative="two-sided",
        random_state=0,
    )
    return float(test.pvalue)


def pair_correctness(reward_chosen, reward_rejected) -> np.ndarray:
    """Per pair: 1 where the chosen response scores higher, 0 where lower, 0.5 on an exact tie."""
    margin = np.asarray(reward_chosen, dtype=np.float64) - np.asarray(reward_rejected, dtype=np.float64)
    return np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))
