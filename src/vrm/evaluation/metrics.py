"""Metric functions for reward models, on plain arrays (no model, no I/O): calibration, uncertainty quality,
length bias and Best-of-N.

* Calibration of P(chosen > rejected) = sigmoid(r+ - r-): NLL, Brier score, expected calibration error (ECE)
  over the confidence max(p, 1 - p) with equal-width bins, and the reliability-diagram bins.
* Uncertainty: selective accuracy — accuracy on the pairs kept when the most uncertain fraction is abstained
  on — with the area under that curve, and the AUROC of uncertainty as a detector of errors. `error_detection`
  compares three signals on the same pairs: the posterior std of the pair alone, the plug-in margin |r+ - r-|
  (which every reward model has: the baseline any uncertainty must beat), and the posterior probability that
  the decision flips, Phi(-|r+ - r-| / sqrt(s+^2 + s-^2)), which uses both.
* Length bias: Spearman correlation of reward with length; accuracy where the chosen response is the longer
  vs the shorter one; the accuracy of "the longer response wins".
* Best-of-N: the unbiased estimator (Gao et al., 2022) of the expected gold score of the proxy's best of n
  candidates drawn without replacement from a pool of m, averaged over all C(m, n) subsets in closed form:
  the candidate ranked i-th by the proxy (1 = lowest) is the best of a random n-subset with probability
  C(i-1, n-1) / C(m, n). `kl_bon(n) = log n - (n - 1) / n`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def pair_probabilities(reward_chosen, reward_rejected) -> np.ndarray:
    """P(chosen > rejected) = sigmoid(r+ - r-)."""
    return 1.0 / (1.0 + np.exp(-(_array(reward_chosen) - _array(reward_rejected))))


def calibration(probabilities, num_bins: int = 10) -> dict:
    """NLL, Brier and ECE of pairwise probabilities (the chosen response is the true winner of every pair)."""
    p = np.clip(_array(probabilities), 1e-12, 1 - 1e-12)
    if p.size == 0:
        raise ValueError("no pairs to measure calibration on")
    confidence = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(np.float64) + 0.5 * (p == 0.5)
    edges = np.linspace(0.5, 1.0, num_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, num_bins - 1)
    bins, ece = [], 0.0
    for b in range(num_bins):
        mask = index == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += mask.mean() * abs(acc - conf)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(mask.sum()),
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {
        "nll": float(-np.log(p).mean()),
        "brier": float(((1 - p) ** 2).mean()),
        "ece": float(ece),
        "bins": bins,
    }


def selective_accuracy(correct, uncertainty, coverages: Sequence[float] | None = None) -> dict:
    """Accuracy on the most certain `coverage` fraction of pairs, for each coverage, and the curve's area.

    The area is the mean accuracy over coverages k/N, k = 1..N (keeping the k most certain pairs; ties in
    uncertainty are broken by input order).
    """
    correct, uncertainty = _array(correct), _array(uncertainty)
    if correct.shape != uncertainty.shape or correct.size == 0:
        raise ValueError("correct and uncertainty must be non-empty and of the same length")
    order = np.argsort(uncertainty, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, correct.size + 1)
    coverages = coverages or [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    curve = {}
    for coverage in coverages:
        keep = max(1, int(round(coverage * correct.size)))
        curve[f"{coverage:g}"] = float(running[keep - 1])
    return {"curve": curve, "area": float(running.mean())}


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for binary `labels`: the Mann-Whitney U of the positives over
    n+ n- (ties counted half)."""
    scores, labels = _array(scores), _array(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    u = stats.mannwhitneyu(positives, negatives, alternative="two-sided", method="asymptotic").statistic
    return float(u / (positives.size * negatives.size))


def error_detection(
    reward_chosen,
    reward_rejected,
    std_chosen=None,
    std_rejected=None,
    epistemic_chosen=None,
    epistemic_rejected=None,
    member_margins=None,
    extra_signals=None,
) -> dict:
    """AUROC of each uncertainty signal as a detector of the pairs the model gets wrong (ties count as wrong).

    `margin`: -|r+ - r-|, for any model. Where a posterior std is given and non-zero, also `std`:
    sqrt(s+^2 + s-^2), and `flip`: Phi(-|r+ - r-| / sqrt(s+^2 + s-^2)), the probability under independent
    Gaussian rewards that the sampled preference disagrees with the plug-in one. 0.5 = no better than chance.
    For an ensemble, `std` is its total std and, given the epistemic stds (the members' disagreement),
    `epistemic_std`: sqrt(e+^2 + e-^2); given the members' margins r+_n - r-_n ([pairs, N]),
    `member_margin_std`: their std over members — the disagreement about the pair's order itself, blind to
    the reward offsets members may disagree on (a Bradley-Terry reward is defined up to one).
    `extra_signals` maps further names to per-pair uncertainties (higher = less sure; e.g. an ensemble's
    `ensemble_std`), each scored the same way and reported under its name after the three above.
    """
    margin = _array(reward_chosen) - _array(reward_rejected)
    wrong = margin <= 0
    out = {"margin": auroc(-np.abs(margin), wrong)}
    if epistemic_chosen is not None and epistemic_rejected is not None:
        out["epistemic_std"] = auroc(np.hypot(_array(epistemic_chosen), _array(epistemic_rejected)), wrong)
    if member_margins is not None:
        out["member_margin_std"] = auroc(_array(member_margins).std(-1), wrong)
    extra = {name: auroc(_array(values), wrong) for name, values in (extra_signals or {}).items()}
    if std_chosen is None or std_rejected is None:
        return {**out, **extra}
    pair_std = np.sqrt(_array(std_chosen) ** 2 + _array(std_rejected) ** 2)
    if not (pair_std > 0).any():
        return {**out, **extra}
    z = np.abs(margin) / np.maximum(pair_std, np.finfo(np.float64).tiny)
    flip = stats.norm.sf(z)
    out["std"] = auroc(pair_std, wrong)
    out["flip"] = auroc(flip, wrong)
    return {**out, **extra}


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    x, y = _array(x), _array(y)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def length_bias(reward_chosen, reward_rejected, length_chosen, length_rejected) -> dict:
    """How much of a reward model's pairwise accuracy follows response length."""
    rc, rr = _array(reward_chosen), _array(reward_rejected)
    lc, lr = _array(length_chosen), _array(length_rejected)
    correct = rc > rr
    longer = lc > lr
    shorter = lc < lr

    def mean(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else math.nan

    return {
        "spearman_reward_length": spearman(np.concatenate([rc, rr]), np.concatenate([lc, lr])),
        "accuracy_chosen_longer": mean(longer),
        "accuracy_chosen_shorter": mean(shorter),
        "pairs_chosen_longer": int(longer.sum()),
        "pairs_chosen_shorter": int(shorter.sum()),
        "longer_wins_accuracy": float((longer + 0.5 * (lc == lr)).mean()),
    }


def kl_bon(n: int) -> float:
    """KL divergence of best-of-n sampling from the base policy: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def best_of_n(proxy, gold, n: int) -> tuple[float, float]:
    """Expected (gold, proxy) score of the proxy's choice among n of the m candidates, over all n-subsets.

    Ties in the proxy are broken by averaging over their orderings (each tied group shares its probability).
    """
    proxy, gold = _array(proxy), _array(gold)
    m = proxy.size
    if not 1 <= n <= m:
        raise ValueError(f"n must be between 1 and the pool size {m}, got {n}")
    order = np.argsort(proxy, kind="stable")
    ranks = np.arange(1, m + 1)
    weights = np.array([math.comb(i - 1, n - 1) for i in ranks], dtype=np.float64) / math.comb(m, n)
    sorted_proxy, sorted_gold = proxy[order], gold[order]
    # spread the probability of tied proxy values evenly over the tied candidates
    start = 0
    while start < m:
        end = start
        while end + 1 < m and sorted_proxy[end + 1] == sorted_proxy[start]:
            end += 1
        weights[start : end + 1] = weights[start : end + 1].mean()
        start = end + 1
    return float(weights @ sorted_gold), float(weights @ sorted_proxy)


# ----- objective weights against known ones (synthetic data, where the truth is known) -----
def match_objectives(
    subset_weights: dict[str, list[float]], truth: dict[str, list[float]], tied: bool = True
) -> tuple[tuple[int, ...], float]:
    """Which learned objectives stand for the true ones, and the mean absolute error of E[w] per subset then.

    `tied` (a variant trained with ratings): learned objective k is true objective k (rated objectives come
    first). Otherwise nothing names the objectives, so they are matched by the assignment with the smallest
    error (an optimistic reading for that variant). The matched learned weights are renormalised to sum to 1
    (a head with free objectives besides the rated ones)."""
    size = len(next(iter(truth.values())))
    learned_k = len(next(iter(subset_weights.values())))
    choices = [tuple(range(size))] if tied else itertools.permutations(range(learned_k), size)
    best_choice, best = None, math.inf
    for choice in choices:
        errors = []
        for subset, true in truth.items():
            learned = np.asarray([subset_weights[subset][k] for k in choice], dtype=float)
            total = learned.sum()
            errors.extend(np.abs((learned / total if total > 0 else learned) - np.asarray(true, dtype=float)))
        error = float(np.mean(errors))
        if error < best:
            best_choice, best = choice, error
    return best_choice, best


def weight_error(
    subset_weights: dict[str, list[float]], truth: dict[str, list[float]], tied: bool = True
) -> float:
    """Mean absolute error of E[w] per subset against known weights (see `match_objectives`)."""
    return match_objectives(subset_weights, truth, tied)[1]
