from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from vrm.evaluation.metrics import (
    auroc,
    best_of_n,
    calibration,
    error_detection,
    kl_bon,
    length_bias,
    pair_probabilities,
    selective_accuracy,
    spearman,
)


def test_calibration_bins_and_ece_by_hand():
    p = [0.9, 0.8, 0.3, 0.6]  # confidences 0.9, 0.8, 0.7, 0.6; correct 1, 1, 0, 1
    out = calibration(p, num_bins=2)  # bins [0.5, 0.75) and [0.75, 1.0]
    low, high = out["bins"]
    assert (low["count"], high["count"]) == (2, 2)
    assert low["confidence"] == pytest.approx(0.65) and low["accuracy"] == pytest.approx(0.5)
    assert high["confidence"] == pytest.approx(0.85) and high["accuracy"] == pytest.approx(1.0)
    assert out["ece"] == pytest.approx(0.5 * 0.15 + 0.5 * 0.15)
    assert out["brier"] == pytest.approx((0.01 + 0.04 + 0.49 + 0.16) / 4)
    assert out["nll"] == pytest.approx(-np.mean(np.log(p)))
    assert pair_probabilities([1.0], [1.0])[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no pairs"):
        calibration([])


def test_selective_accuracy_by_hand():
    correct = [1, 0, 1, 1]
    uncertainty = [0.1, 0.9, 0.2, 0.5]  # most certain first: 1, 1, 1, 0
    out = selective_accuracy(correct, uncertainty, coverages=[1.0, 0.75, 0.5])
    assert out["curve"] == {"1": 0.75, "0.75": 1.0, "0.5": 1.0}
    assert out["area"] == pytest.approx((1 + 1 + 1 + 0.75) / 4)


def test_error_detection_separates_margin_from_posterior_std():
    # pairs 0-2 are right with large margins, pair 3 is wrong with a small one: the margin flags it perfectly
    chosen, rejected = [3.0, 2.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.2]
    # the std is largest where |reward| is largest (as a multiplicative posterior gives): it flags the wrong
    # pairs worse than chance, and the flip probability, which divides the margin by it, recovers the margin's
    std = [1.0, 0.8, 0.6, 0.5]
    out = error_detection(chosen, rejected, std, [0.0] * 4)
    assert out["margin"] == pytest.approx(1.0)
    assert out["std"] == pytest.approx(0.0)
    assert out["flip"] == pytest.approx(1.0)
    assert set(error_detection(chosen, rejected)) == {"margin"}  # no posterior: only the margin
    assert set(error_detection(chosen, rejected, [0.0] * 4, [0.0] * 4)) == {"margin"}
    # a std that is large exactly where the model errs, with equal margins: the std carries the signal
    out = error_detection([1.0, 1.0, 1.0, -1.0], [0.0] * 4, [0.1, 0.1, 0.1, 3.0], [0.0] * 4)
    assert out["margin"] == pytest.approx(0.5) and out["std"] == pytest.approx(1.0)


def test_auroc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 30).astype(float)  # many ties
    labels = rng.integers(0, 2, 30)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auroc(scores, labels) == pytest.approx(brute)
    assert math.isnan(auroc([1.0, 2.0], [1, 1]))


def test_spearman_and_length_bias():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    out = length_bias([2, 2, 0, 1], [1, 1, 1, 0], [10, 10, 3, 5], [5, 5, 8, 5])
    assert out["accuracy_chosen_longer"] == 1.0 and out["accuracy_chosen_shorter"] == 0.0
    assert (out["pairs_chosen_longer"], out["pairs_chosen_shorter"]) == (2, 1)
    assert out["longer_wins_accuracy"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def brute_force_bon(proxy, gold, n):
    """Average over every n-subset, with ties in the proxy broken uniformly at random."""
    totals = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(proxy[i] for i in subset)
        winners = [i for i in subset if proxy[i] == best]
        totals.append(np.mean([gold[i] for i in winners]))
    return float(np.mean(totals))


@pytest.mark.parametrize("ties", [False, True])
def test_best_of_n_estimator_matches_enumeration(ties):
    rng = np.random.default_rng(1)
    proxy = rng.integers(0, 4, 9).astype(float) if ties else rng.normal(size=9)
    gold = rng.normal(size=9)
    for n in range(1, 10):
        expected_gold, expected_proxy = best_of_n(proxy, gold, n)
        assert expected_gold == pytest.approx(brute_force_bon(proxy, gold, n))
        assert expected_proxy == pytest.approx(brute_force_bon(proxy, proxy, n))
    assert best_of_n(proxy, gold, 1)[0] == pytest.approx(gold.mean())
    assert kl_bon(1) == 0.0 and kl_bon(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="pool size 9"):
        best_of_n(proxy, gold, 10)


def test_metrics_agree_with_scipy_and_scipy_is_a_dependency():
    """metrics.py delegates ranks, AUROC, Spearman and the normal tail to scipy.stats."""
    import pathlib
    import tomllib

    from scipy import stats

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 200).astype(float)  # ties
    labels = rng.integers(0, 2, 200).astype(bool)
    u = stats.mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert auroc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()), abs=1e-12)
    x, y = rng.normal(size=50), rng.integers(0, 5, 50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    chosen, rejected, std = rng.normal(size=40), rng.normal(size=40), rng.uniform(0.1, 2.0, 40)
    flip = stats.norm.cdf(-np.abs(chosen - rejected) / std)
    assert error_detection(chosen, rejected, std, np.zeros(40))["flip"] == pytest.approx(
        auroc(flip, chosen <= rejected)
    )
    pyproject = tomllib.loads((pathlib.Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert any(dep.replace(" ", "").startswith("scipy>=") for dep in pyproject["project"]["dependencies"])


def test_error_detection_reports_the_epistemic_std():
    chosen, rejected = np.array([1.0, 0.2, -0.3, 2.0]), np.array([0.0, 0.4, 0.0, 1.0])
    std = np.array([0.1, 0.5, 0.6, 0.1])
    epistemic = np.array([0.0, 0.9, 0.8, 0.1])  # high on the two wrong pairs
    members = np.array([[1.0, 1.0], [-0.5, 0.1], [0.3, -0.9], [1.0, 1.2]])  # per-member margins
    out = error_detection(chosen, rejected, std, std, epistemic, epistemic, members)
    assert set(out) == {"margin", "std", "flip", "epistemic_std", "member_margin_std"}
    assert out["epistemic_std"] == 1.0 and out["member_margin_std"] == 1.0
    assert "epistemic_std" not in error_detection(chosen, rejected, std, std)
