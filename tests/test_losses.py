import math

import pytest
import torch
from conftest import PAIRS, llama_config, make_llama_tokenizer

from vrm.data.examples import PreferenceExample
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.heads import HeadOutput, PairSamples
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.arguments import VRMTrainingArguments
from vrm.training.losses import attribute_loss, beta_factor, preference_loss
from vrm.training.trainer import PairDataset, VRMTrainer


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


def test_head_gets_its_own_learning_rate(tmp_path):
    tokenizer = make_llama_tokenizer()
    model = VRMForSequenceClassification.from_backbone_config(llama_config(len(tokenizer)))
    pairs, _ = PreferenceTokenizer(tokenizer, max_length=64).tokenize_pairs(
        [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    )
    args = VRMTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to="none")
    trainer = VRMTrainer(model=model, args=args, train_dataset=PairDataset(pairs))
    optimizer = trainer.create_optimizer()
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & head:
            assert ids <= head and group["lr"] == pytest.approx(1e-3)
        elif ids:
            assert group["lr"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_group_by_length_batches_pairs_of_similar_length(tmp_path):
    tokenizer = make_llama_tokenizer()
    model = VRMForSequenceClassification.from_backbone_config(llama_config(len(tokenizer)))
    sizes = torch.randint(1, 40, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    examples = [PreferenceExample("q?", "a " * n, "b " * n) for n in sizes]
    dataset = PairDataset(PreferenceTokenizer(tokenizer, max_length=128).tokenize_pairs(examples)[0])
    lengths = dataset.lengths

    def mean_spread(strategy: str) -> float:
        args = VRMTrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, train_sampling_strategy=strategy
        )
        order = list(VRMTrainer(model=model, args=args, train_dataset=dataset)._get_train_sampler())
        assert sorted(order) == list(range(64))
        batches = [[lengths[i] for i in order[k : k + 4]] for k in range(0, 64, 4)]
        return sum(max(b) - min(b) for b in batches) / len(batches)

    assert mean_spread("group_by_length") < 0.5 * mean_spread("random")


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


@pytest.mark.parametrize(
    "flags, names, message",
    [
        ({"attribute_target": "graded"}, [], "--attribute_target graded needs --attribute_names"),
        ({"rating_weight_coef": -1.0}, ["a", "b"], "--rating_weight_coef must be >= 0"),
        ({"rating_weight_coef": math.nan}, ["a", "b"], "--rating_weight_coef must be >= 0"),
        ({"rating_weight_coef": 1.0}, ["a"], "at least two rated objectives"),
        ({"rating_temperature": math.nan}, ["a", "b"], "--rating_temperature must be a positive number"),
        ({"rating_temperature": 0.0}, ["a", "b"], "--rating_temperature must be a positive number"),
    ],
)
def test_rating_flags_that_would_do_nothing_are_errors(tmp_path, flags, names, message):
    with pytest.raises(ValueError, match=message):  # refused when the arguments are made, before anything loads
        VRMTrainingArguments(output_dir=str(tmp_path), report_to="none", attribute_names=names or None, **flags)
    VRMTrainingArguments(output_dir=str(tmp_path), report_to="none", attribute_names=names or None)
