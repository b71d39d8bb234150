"""Best-of-n curves with and without r - lambda * sigma, the choice of lambda, ensembles and error detection.

Curves are `vrm.evaluation.best_of_n.bon_curve` of the ranking score `vrm.scoring.conservative.conservative_reward`
(the exact expectation over all n-subsets of each prompt's candidates). lambda is chosen on validation prompts
(`select_lambda`), never on the prompts it is reported on. Error detection on preference pairs: the AUROC of an
uncertainty signal for "the model ranks this pair wrongly" (`vrm.evaluation.metrics.error_detection`: margin
-|r+ - r-|, pair std sqrt(s+^2 + s-^2), flip probability Phi(-|r+ - r-| / pair std)); for an ensemble also the
std over members of the margin r+ - r- (`member_margin_std`), the members' disagreement about this very pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vrm.evaluation.best_of_n import bon_curve
from vrm.evaluation.metrics import auroc, error_detection, spearman
from vrm.scoring.conservative import conservative_reward


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


def ranking(scores: PoolScores, prompt: int, lam: float) -> np.ndarray:
    """The score best-of-n ranks a prompt's candidates by: r - lambda * sigma (r without a sigma)."""
    reward = np.asarray(scores.reward[prompt], dtype=np.float64)
    if scores.std is None:
        return reward
    return conservative_reward(reward, np.asarray(scores.std[prompt], dtype=np.float64), lam)


def gold_curve(
    scores: PoolScores,
    gold: Sequence[np.ndarray],
    ns: Sequence[int],
    lam: float = 0.0,
    prompts: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """`bon_curve` points (n, kl_bon, gold, prompts, ...) of best-of-n by r - lambda * sigma over `prompts`
    (default all; a prompt with fewer than n candidates is left out of that n)."""
    chosen = list(range(len(gold)) if prompts is None else prompts)
    return bon_curve([ranking(scores, i, lam) for i in chosen], [np.asarray(gold[i]) for i in chosen], ns)


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
        value = float(np.nanmean([p["gold"] for p in curve]))
        if value > best_value + 1e-12:
            best, best_value = lam, value
    return float(best)


def ensemble_pool(members: Sequence[PoolScores]) -> PoolScores:
    """Mean and std (ddof = 1) over the members' rewards, candidate by candidate."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    reward, std = [], []
    for i in range(len(members[0].reward)):
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

    `margin`, `std`, `flip` as `vrm.evaluation.metrics.error_detection`; `member_margin_std` for an ensemble."""
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
