import math

import pytest
import torch

from vrm.models.heads import HeadOutput, PairSamples
from vrm.training.losses import attribute_loss, beta_factor, preference_loss


def test_beta_schedules():
    assert beta_factor("constant", 0, 100) == 1.0
    assert [beta_factor("linear", s, 100, warmup_ratio=0.2) for s in (0, 10, 20, 90)] == [0.0, 0.5, 1.0, 1.0]
    cyclical = [beta_factor("cyclical", s, 100, num_cycles=4) for s in (0, 5, 12, 13, 25, 30)]
    assert cyclical == [0.0, 0.4, 0.96, 1.0, 0.0, 0.4]
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_factor("exponential", 1, 10)


def _samples(chosen: list[float], rejected: list[float], scores_c=None, scores_r=None) -> PairSamples:
    rc, rr = torch.tensor([chosen]), torch.tensor([rejected])
    n = len(chosen)
    plug = HeadOutput(rc[0], torch.zeros(n), torch.ones(n, 1), rc[0, :, None], torch.zeros(n, 1))
    return PairSamples(
        reward_chosen=rc,
        reward_rejected=rr,
        scores_chosen=torch.tensor([scores_c]) if scores_c else rc[..., None],
        scores_rejected=torch.tensor([scores_r]) if scores_r else rr[..., None],
        kl_weights=torch.tensor([0.5] * n),
        kl_features=torch.tensor([2.0] * n),
        expected_log_weights=torch.log(torch.tensor([[0.5, 0.25, 0.25]] * n)),
        weight_samples=torch.tensor([[[0.5, 0.25, 0.25]] * n]),
        chosen=plug,
        rejected=HeadOutput(rr[0], torch.zeros(n), torch.ones(n, 1), rr[0, :, None], torch.zeros(n, 1)),
    )


def test_loss_terms_and_margin():
    samples = _samples([2.0, 0.0], [1.0, 1.0])
    out = preference_loss(samples, beta_w=0.1, beta_z=0.01)
    nll = -(math.log(torch.sigmoid(torch.tensor(1.0))) + math.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert out.nll.item() == pytest.approx(nll, rel=1e-5)
    assert out.loss.item() == pytest.approx(nll + 0.1 * 0.5 + 0.01 * 2.0, rel=1e-5)
    assert out.accuracy.item() == 0.5
    with_margin = preference_loss(samples, margin=torch.tensor([1.0, 0.0]))
    expected = -(math.log(0.5) + math.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert with_margin.nll.item() == pytest.approx(expected, rel=1e-5)


def test_attribute_loss_uses_known_targets_only():
    samples = _samples([0.0], [0.0], scores_c=[[3.0, -1.0, 0.0]], scores_r=[[1.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, math.nan]])  # objective 0: chosen better; objective 1 unknown; 2 not rated
    value = attribute_loss(samples, targets).item()
    assert value == pytest.approx(-math.log(torch.sigmoid(torch.tensor(2.0)).item()), rel=1e-5)
    assert attribute_loss(samples, torch.tensor([[math.nan, math.nan]])).item() == 0.0


def test_objective_label_term_counts_labelled_pairs_only():
    samples = _samples([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])  # E_q[log w] = log(0.5, 0.25, 0.25) for every pair
    labels = torch.tensor([0, -1, 2])
    out = preference_loss(samples, objective_labels=labels, objective_label_weight=2.0)
    expected = (math.log(2) + math.log(4)) / 2  # the unlabelled pair (-1) is masked
    assert out.objective_label_nll.item() == pytest.approx(expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(math.log(2) + 2.0 * expected, rel=1e-5)
    reported_only = preference_loss(samples, objective_labels=labels)  # weight 0: measured, not trained
    assert reported_only.loss.item() == pytest.approx(math.log(2), rel=1e-5)
    unlabelled = preference_loss(
        samples, objective_labels=torch.tensor([-1, -1, -1]), objective_label_weight=2.0
    )
    assert unlabelled.objective_label_nll.item() == 0.0


def test_rating_weight_term_matches_a_hand_computed_value():
    """L_rw = -mean log sigmoid(tau * w~ . delta), w~ renormalised over the objectives rated in each row."""
    samples = _samples([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    samples.weight_samples = torch.tensor(
        [
            [[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]],
            [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.4, 0.4, 0.2], [0.6, 0.2, 0.2]],
        ]
    )  # M = 2 samples
    nan = math.nan
    delta = torch.tensor(
        [
            [1.0, -0.5, nan],  # rated on objectives 0 and 1: w renormalised over them
            [nan, nan, nan],  # no rating: masked
            [0.5, 0.5, -1.0],  # all three rated
            [0.5, 0.5, nan],  # equal gaps on everything rated: w~ . delta = 0.5 for any w, masked
        ]
    )
    tau, eps = 3.0, 1e-3

    def term(w, d):
        total = sum(wk + eps for wk in w)
        gap = sum((wk + eps) / total * dk for wk, dk in zip(w, d, strict=True))
        return -math.log(1 / (1 + math.exp(-tau * gap)))

    expected = [
        term([0.5, 0.25], [1.0, -0.5]),
        term([0.2, 0.3, 0.5], [0.5, 0.5, -1.0]),
        term([0.1, 0.6], [1.0, -0.5]),
        term([0.4, 0.4, 0.2], [0.5, 0.5, -1.0]),
    ]
    out = preference_loss(samples, rating_differences=delta, rating_weight_coef=2.0, rating_temperature=tau)
    assert out.rating_weight_nll.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    assert out.loss.item() == pytest.approx(math.log(2) + 2.0 * sum(expected) / 4, rel=1e-5)
    logged_only = preference_loss(samples, rating_differences=delta, rating_temperature=tau)
    assert logged_only.loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert (
        preference_loss(samples, rating_differences=torch.full((4, 3), nan)).rating_weight_nll.item() == 0.0
    )
    one_rated = torch.tensor([[1.0, nan, nan]] * 4)  # one rated objective: w~ = 1, no information about w
    assert preference_loss(samples, rating_differences=one_rated).rating_weight_nll.item() == 0.0
    assert preference_loss(samples).rating_weight_nll is None


def test_rating_weight_gradients_stay_bounded_when_rated_weights_vanish():
    """A Dirichlet draw can put ~1e-14 on every rated objective; the smoothed renormalisation keeps the
    gradient finite and moderate (it was ~1e12 without it)."""
    samples = _samples([0.0], [0.0])
    weights = torch.tensor([[[1e-14, 1e-14, 1.0 - 2e-14]]], requires_grad=True)
    samples.weight_samples = weights
    delta = torch.tensor([[1.0, -1.0, math.nan]])
    preference_loss(samples, rating_differences=delta, rating_weight_coef=1.0).loss.backward()
    assert torch.isfinite(weights.grad).all() and weights.grad.abs().max() < 1e4


def test_unrated_rows_send_no_nan_gradients():
    """Rows without ratings are masked out of the term; their 0 / 0 renormalisation once sent NaN gradients
    back through the mask (a frozen vrm run died on NaN Dirichlet concentrations at its second step)."""
    samples = _samples([0.0, 0.0], [0.0, 0.0])
    weights = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]], requires_grad=True)
    samples.weight_samples = weights
    delta = torch.tensor([[1.0, -0.5, math.nan], [math.nan, math.nan, math.nan]])
    preference_loss(samples, rating_differences=delta, rating_weight_coef=1.0).loss.backward()
    assert torch.isfinite(weights.grad).all()
    assert weights.grad[0, 1].abs().sum() == 0 and weights.grad[0, 0].abs().sum() > 0


def test_graded_rating_targets_keep_ties_and_magnitudes():
    """sign: ties and unknowns masked, 1/0 by the sign (the original loss). graded: (1 + delta) / 2, a tie is 0.5,
    and an objective label's target 1 stays where no rating is known."""
    scores_c, scores_r = [[1.0, 0.0, 2.0]], [[0.0, 0.0, 0.0]]
    samples = _samples([0.0], [0.0], scores_c=scores_c, scores_r=scores_r)
    signs = torch.tensor([[1.0, math.nan, 1.0]])  # objective 1 a tie; objective 2 from a label, no rating
    delta = torch.tensor([[0.5, 0.0, math.nan]])

    def bce(logit, target):
        return -(
            target * math.log(1 / (1 + math.exp(-logit))) + (1 - target) * math.log(1 / (1 + math.exp(logit)))
        )

    sign = preference_loss(samples, attribute_targets=signs, rating_differences=delta, attribute_weight=1.0)
    assert sign.attribute_loss.item() == pytest.approx((bce(1.0, 1.0) + bce(2.0, 1.0)) / 2, rel=1e-5)
    graded = preference_loss(
        samples,
        attribute_targets=signs,
        rating_differences=delta,
        attribute_weight=1.0,
        attribute_target="graded",
    )
    expected = (bce(1.0, 0.75) + bce(0.0, 0.5) + bce(2.0, 1.0)) / 3
    assert graded.attribute_loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="attribute_target must be one of"):
        preference_loss(samples, attribute_target="ordinal")
