"""Does a reward model's uncertainty pay? Best-of-n over-optimization against a gold reward, and error detection.

Over-optimization (Gao et al., 2022). A policy that picks the best of n candidates by a proxy reward moves
KL_BoN = log n - (n - 1) / n nats away from the base policy; the gold score of its choice first rises with n, then
falls where the proxy's errors are what it selects for. For a pool of m candidates per prompt the expected gold
score of the proxy's best of n (drawn without replacement) is computed exactly over all C(m, n) subsets
(`vrm.metrics.best_of_n`: the candidate ranked i-th by the proxy wins with probability C(i-1, n-1) / C(m, n)),
then averaged over prompts.

Conservative selection (Coste et al., 2023; Eisenstein et al., 2023) ranks by the lower-confidence score

    s_lambda(y) = r(y) - lambda * sigma(y)

where sigma is the proxy's uncertainty: the std of a deep ensemble's members, or a variational head's posterior
`reward_std`. lambda is chosen on validation prompts (`select_lambda`), never on the prompts it is reported on.

Error detection: on preference pairs, the AUROC of an uncertainty signal for "the model ranks this pair wrongly"
(`vrm.metrics.error_detection`: margin -|r+ - r-|, pair std sqrt(s+^2 + s-^2), flip probability
Phi(-|r+ - r-| / pair std)); for an ensemble also the std over members of the margin r+ - r-
(`member_margin_std`), the members' disagreement about this very pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vrm.evaluation.metrics import auroc, best_of_n, error_detection, kl_bon, spearman


@dataclass
class PoolScores:
    """A proxy's scores of a best-of-n pool: one array per prompt (candidates in pool order)."""

    reward: list[np.ndarray]
    std: list[np.ndarray] | None  # None: the proxy has no uncertainty


@dataclass
class PairScores:
    """A proxy's scores of preference pairs (the chosen response is the labelled winner)."""

    chosen: np.ndarray
    rejected: np.ndarray
    std_chosen: np.ndarray | None = None
    std_rejected: np.ndarray | None = None
    member_margins: np.ndarray | None = None  # [members, pairs] for an ensemble


@dataclass
class BonPoint:
    n: int
    kl_bon: float
    gold: float  # mean over prompts of the expected gold score of the best-of-n choice
    prompts: int


def conservative(reward: np.ndarray, std: np.ndarray | None, lam: float) -> np.ndarray:
    """r - lambda * sigma (r itself when lambda is 0 or there is no sigma)."""
    if std is None or lam == 0:
        return np.asarray(reward, dtype=np.float64)
    return np.asarray(reward, dtype=np.float64) - lam * np.asarray(std, dtype=np.float64)


def gold_curve(
    scores: PoolScores,
    gold: Sequence[np.ndarray],
    ns: Sequence[int],
    lam: float = 0.0,
    prompts: Sequence[int] | None = None,
) -> list[BonPoint]:
    """Expected gold score of best-of-n by r - lambda * sigma, for each n, averaged over `prompts` (default all;
    a prompt with fewer than n candidates is left out of that n)."""
    chosen = range(len(gold)) if prompts is None else prompts
    points = []
    for n in ns:
        values = []
        for i in chosen:
            std = scores.std[i] if scores.std is not None else None
            if len(gold[i]) >= n:
                values.append(best_of_n(conservative(scores.reward[i], std, lam), gold[i], n)[0])
        points.append(BonPoint(n, kl_bon(n), float(np.mean(values)) if values else math.nan, len(values)))
    return points


def select_lambda(
    scores: PoolScores,
    gold: Sequence[np.ndarray],
    lambdas: Sequence[float],
    ns: Sequence[int],
    validation_prompts: Sequence[int],
) -> float:
    """The lambda whose best-of-n gold, averaged over `ns` on the validation prompts, is highest (the first
    listed on a tie; 0 when the proxy has no sigma). Averaging over n rewards a lambda that helps along the
    whole curve, not only at one KL."""
    if scores.std is None:
        return 0.0
    best, best_value = lambdas[0], -math.inf
    for lam in lambdas:
        curve = gold_curve(scores, gold, ns, lam, validation_prompts)
        value = float(np.nanmean([p.gold for p in curve]))
        if value > best_value + 1e-12:
            best, best_value = lam, value
    return float(best)


def ensemble_pool(members: Sequence[PoolScores]) -> PoolScores:
    """Mean and std (ddof = 1) over the members' rewards, candidate by candidate."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    prompts = len(members[0].reward)
    reward, std = [], []
    for i in range(prompts):
        stacked = np.stack([m.reward[i] for m in members])
        reward.append(stacked.mean(0))
        std.append(stacked.std(0, ddof=1))
    return PoolScores(reward, std)


def ensemble_pairs(members: Sequence[PairScores]) -> PairScores:
    """Mean rewards, member std of each response's reward, and every member's margin."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    chosen = np.stack([m.chosen for m in members])
    rejected = np.stack([m.rejected for m in members])
    return PairScores(
        chosen.mean(0), rejected.mean(0), chosen.std(0, ddof=1), rejected.std(0, ddof=1), chosen - rejected
    )


def uncertainty_aurocs(pairs: PairScores) -> dict[str, float]:
    """Error-detection AUROC of each uncertainty signal the proxy has (0.5 = chance; ties count as errors).

    `margin`, `std`, `flip` as `vrm.metrics.error_detection`; `member_margin_std` for an ensemble."""
    out = error_detection(pairs.chosen, pairs.rejected, pairs.std_chosen, pairs.std_rejected)
    if pairs.member_margins is not None:
        wrong = (pairs.chosen - pairs.rejected) <= 0
        out["member_margin_std"] = auroc(pairs.member_margins.std(0, ddof=1), wrong)
    return out


def std_spread(pairs: PairScores) -> dict[str, float] | None:
    """How much sigma varies across responses, and whether it follows the margin.

    `cv`: std / mean of sigma over the responses (0: a constant that cannot rank anything);
    `corr_abs_margin`: Pearson correlation of the pair std with |r+ - r-| (an uncertainty that only restates
    the margin adds nothing to it); `spearman_abs_reward`: rank correlation of sigma with |r| per response (a
    sigma that scales with the reward's size describes its spread, not what the model does not know)."""
    if pairs.std_chosen is None or pairs.std_rejected is None:
        return None
    sigma = np.concatenate([pairs.std_chosen, pairs.std_rejected]).astype(np.float64)
    pair_std = np.sqrt(pairs.std_chosen**2 + pairs.std_rejected**2)
    margin = np.abs(pairs.chosen - pairs.rejected)
    constant = np.all(pair_std == pair_std[0]) or np.all(margin == margin[0])
    return {
        "mean": float(sigma.mean()),
        "std": float(sigma.std()),
        "cv": float(sigma.std() / sigma.mean()) if sigma.mean() > 0 else math.nan,
        "p10": float(np.quantile(sigma, 0.1)),
        "p90": float(np.quantile(sigma, 0.9)),
        "corr_abs_margin": math.nan if constant else float(np.corrcoef(pair_std, margin)[0, 1]),
        "spearman_abs_reward": spearman(sigma, np.abs(np.concatenate([pairs.chosen, pairs.rejected]))),
    }


def split_prompts(count: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random split of pool prompts into (validation, test) index lists."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    cut = max(1, int(round(count * validation_fraction)))
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())
