import math

import pytest
import torch
from torch.distributions import Dirichlet, Normal

from vrm.models.config import HEAD_TYPES, VRMConfig
from vrm.models.heads import LatentRewardHead
from vrm.training.losses import preference_loss

HIDDEN = 32


def make_head(head_type: str = "vrm", **kwargs) -> LatentRewardHead:
    config = VRMConfig(
        text_config={"model_type": "llama", "hidden_size": HIDDEN}, head_type=head_type, **kwargs
    )
    return LatentRewardHead(config, HIDDEN)


def randomize(head: LatentRewardHead, seed: int = 0, scale: float = 0.3) -> LatentRewardHead:
    """Move the head away from its prior-matching initialization so every term is non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return head


def test_presets_fill_in_posteriors():
    assert make_head("bt").weight_posterior == "none" and make_head("bt").feature_posterior == "identity"
    assert make_head("ib").feature_posterior == "gaussian" and make_head("ib").num_objectives == 1
    assert make_head("moe").weight_posterior == "softmax" and make_head("moe").num_objectives == 4
    vrm = make_head("vrm", num_objectives=3)
    assert (vrm.weight_posterior, vrm.feature_posterior, vrm.num_objectives) == ("dirichlet", "gaussian", 3)
    with pytest.raises(ValueError, match="head_type"):
        make_head("xyz")


def test_initial_posterior_equals_prior():
    head = make_head("vrm", prior_concentration=2.0)
    alpha = head.weight_concentration(torch.randn(5, HIDDEN))
    assert torch.allclose(alpha, torch.full_like(alpha, 2.0), atol=1e-3)
    _, kl = head.sample_weights(torch.randn(5, HIDDEN), 2)
    assert kl.abs().max() < 1e-3


def test_kl_terms_match_monte_carlo():
    torch.manual_seed(0)
    head = randomize(make_head("vrm", num_objectives=3, feature_dim=4, prior_concentration=1.5), scale=0.1)
    prompt_state, response_state = torch.randn(2, HIDDEN), torch.randn(2, HIDDEN)
    alpha = head.weight_concentration(prompt_state)
    assert (
        alpha.min() > 0.3 and alpha.max() < 5 and (alpha - 1.5).abs().max() > 0.2
    )  # a moderate, non-prior q
    samples = 200_000

    weights, kl_w = head.sample_weights(prompt_state, samples)
    alpha = head.weight_concentration(prompt_state)
    log_q = Dirichlet(alpha).log_prob(weights.clamp_min(1e-12))
    log_p = Dirichlet(torch.full_like(alpha, 1.5)).log_prob(weights.clamp_min(1e-12))
    assert torch.allclose(kl_w, (log_q - log_p).mean(0), rtol=0.05, atol=0.02)

    features, kl_z = head.sample_features(response_state, samples)
    mean, var = head.feature_posterior_moments(response_state)
    log_q = Normal(mean, var.sqrt()).log_prob(features).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(features).sum(-1)
    assert torch.allclose(kl_z, (log_q - log_p).mean(0), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("head_type", ["vrm", "ib", "moe"])
def test_closed_form_reward_std_matches_monte_carlo(head_type):
    torch.manual_seed(1)
    head = randomize(make_head(head_type, feature_dim=6), seed=1)
    prompt_state, response_state = torch.randn(3, HIDDEN), torch.randn(3, HIDDEN)
    with torch.no_grad():
        out = head(prompt_state, response_state)
        weights, _ = head.sample_weights(prompt_state, 100_000)
        features, _ = head.sample_features(response_state, 100_000)
        rewards = (weights * head.decoder(features)).sum(-1)
    assert torch.allclose(out.reward, rewards.mean(0), atol=0.01 + 0.02 * float(rewards.std(0).max()))
    assert torch.allclose(out.reward_std, rewards.std(0), rtol=0.03, atol=1e-4)
    if head_type == "moe":
        assert out.reward_std.abs().max() == 0


def test_mlp_decoder_uses_deterministic_monte_carlo_std():
    head = randomize(make_head("vrm", decoder_hidden_size=8), seed=2)
    prompt_state, response_state = torch.randn(3, HIDDEN), torch.randn(3, HIDDEN)
    first = head(prompt_state, response_state).reward_std
    second = head(prompt_state, response_state).reward_std
    assert torch.equal(first, second) and (first > 0).all()


def test_vrm_with_latents_disabled_is_bt():
    """K = 1 (a Dirichlet over one objective is w = 1) and deterministic features: r = A W h = v.h."""
    torch.manual_seed(0)
    vrm = randomize(make_head("vrm", num_objectives=1, feature_posterior="deterministic", feature_dim=5))
    bt = make_head("bt")
    with torch.no_grad():
        bt.decoder.weight.copy_(vrm.decoder.weight @ vrm.feature_mean.weight)
    prompt_state, chosen, rejected = torch.randn(4, HIDDEN), torch.randn(4, HIDDEN), torch.randn(4, HIDDEN)
    out_vrm, out_bt = vrm(prompt_state, chosen), bt(prompt_state, chosen)
    assert torch.allclose(out_vrm.reward, out_bt.reward, atol=1e-5)
    assert out_vrm.reward_std.abs().max() == 0
    loss_vrm = preference_loss(vrm.sample_pairs(prompt_state, chosen, rejected, 3), beta_w=1.0, beta_z=1.0)
    loss_bt = preference_loss(bt.sample_pairs(prompt_state, chosen, rejected, 3), beta_w=1.0, beta_z=1.0)
    assert float(loss_vrm.kl_weights) == 0.0 and float(loss_vrm.kl_features) == 0.0
    assert torch.allclose(loss_vrm.loss, loss_bt.loss, atol=1e-5)
    # and bt's loss is TRL's: -log sigmoid(r+ - r-)
    expected = -torch.nn.functional.logsigmoid(out_bt.reward - bt(prompt_state, rejected).reward).mean()
    assert torch.allclose(loss_bt.loss, expected, atol=1e-6)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_gradients_reach_every_head_parameter(head_type):
    torch.manual_seed(0)
    head = make_head(head_type, feature_dim=4)
    prompt_state, chosen, rejected = torch.randn(6, HIDDEN), torch.randn(6, HIDDEN), torch.randn(6, HIDDEN)
    targets = torch.tensor([[1.0], [0.0], [math.nan], [1.0], [0.0], [1.0]])
    loss = preference_loss(
        head.sample_pairs(prompt_state, chosen, rejected, 4),
        attribute_targets=targets,
        beta_w=0.1,
        beta_z=0.1,
        attribute_weight=1.0,
    ).loss
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_chosen_and_rejected_share_the_weight_sample():
    """With deterministic features, chosen == rejected gives equal rewards in every sample only if w is shared."""
    torch.manual_seed(3)
    head = randomize(make_head("vrm", num_objectives=3, feature_posterior="deterministic"))
    state = torch.randn(2, HIDDEN)
    samples = head.sample_pairs(torch.randn(2, HIDDEN), state, state, num_samples=8)
    assert torch.allclose(samples.reward_chosen, samples.reward_rejected)
    assert samples.reward_chosen.std(0).min() > 0  # and w really is random across samples


def test_logistic_normal_weights_start_at_the_prior_and_match_monte_carlo():
    """The softmax-Gaussian ablation: w = softmax(u); KL to the Laplace prior; moments by Monte Carlo."""
    head = make_head("vrm", weight_posterior="logistic_normal", num_objectives=3, feature_dim=4)
    prompt_state, response_state = torch.randn(4, HIDDEN), torch.randn(4, HIDDEN)
    weights, kl = head.sample_weights(prompt_state, 5)
    assert kl.abs().max() < 1e-6  # initialized at the prior
    assert torch.allclose(weights.sum(-1), torch.ones(5, 4)) and (weights > 0).all()

    torch.manual_seed(3)
    head = randomize(
        make_head(
            "vrm",
            weight_posterior="logistic_normal",
            num_objectives=3,
            feature_dim=4,
            num_eval_samples=20_000,
        ),
        seed=3,
        scale=0.2,
    )
    with torch.no_grad():
        posterior = head.logistic_normal(prompt_state)
        u = posterior.sample((100_000,))
        variance = head.logistic_prior_variance
        log_p = Normal(0.0, math.sqrt(variance)).log_prob(u).sum(-1)
        _, kl = head.sample_weights(prompt_state, 2)
        assert torch.allclose(kl, (posterior.log_prob(u).sum(-1) - log_p).mean(0), rtol=0.05, atol=0.02)
        out = head(prompt_state, response_state)
        assert torch.equal(out.reward_std, head(prompt_state, response_state).reward_std)  # deterministic
        weights, _ = head.sample_weights(prompt_state, 100_000)
        features, _ = head.sample_features(response_state, 100_000)
        rewards = (weights * head.decoder(features)).sum(-1)
    assert torch.allclose(out.reward, rewards.mean(0), atol=0.02 * float(rewards.std(0).max()) + 0.01)
    assert torch.allclose(out.reward_std, rewards.std(0), rtol=0.05, atol=1e-3)
    with pytest.raises(ValueError, match="num_objectives >= 2"):
        make_head("vrm", weight_posterior="logistic_normal", num_objectives=1)


def test_gradients_reach_the_logistic_normal_weights():
    torch.manual_seed(0)
    head = make_head("vrm", weight_posterior="logistic_normal", feature_dim=4)
    prompt_state, chosen, rejected = torch.randn(6, HIDDEN), torch.randn(6, HIDDEN), torch.randn(6, HIDDEN)
    preference_loss(
        head.sample_pairs(prompt_state, chosen, rejected, 4), beta_w=0.1, beta_z=0.1
    ).loss.backward()
    for name in ("weight_net.weight", "weight_logvar.weight", "weight_logvar.bias"):
        assert head.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("weight_posterior", ["dirichlet", "softmax", "logistic_normal"])
def test_expected_log_weights_match_monte_carlo(weight_posterior):
    """E_q[log w]: exact for the Dirichlet (digamma) and the softmax gate; an estimate from the training samples
    for the logistic-normal. Each agrees with a large Monte-Carlo average of log w."""
    torch.manual_seed(0)
    head = randomize(make_head("vrm", num_objectives=3, weight_posterior=weight_posterior), scale=0.2)
    prompt_state = torch.randn(5, HIDDEN)
    samples, _ = head.sample_weights(prompt_state, 20000)
    expected = head.expected_log_weights(prompt_state, samples)
    reference = samples.log().mean(0)
    assert expected.shape == (5, 3)
    assert torch.allclose(expected, reference, atol=0.05), (expected, reference)
    if weight_posterior == "dirichlet":  # not the log of the mean: Jensen's gap is what the ELBO needs
        assert (expected < head.weight_posterior_moments(prompt_state)[0].log() - 1e-3).all()


@pytest.mark.slow
@pytest.mark.parametrize("objective_label_weight", [0.0, 1.0])
def test_objective_labels_teach_the_weights_which_prompts_call_for_which_objective(objective_label_weight):
    """Prompts of two kinds (the sign of one coordinate of h_x), each labelled with its objective. With the
    label likelihood the Dirichlet mean puts most weight on the prompt's objective, on prompts it never saw;
    without it (and with rewards that carry no signal about the kind) the weights stay at the prior."""
    torch.manual_seed(0)
    head = make_head("vrm", num_objectives=2, feature_dim=4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)

    def batch(count: int):
        prompt_state = torch.randn(count, HIDDEN)
        labels = (prompt_state[:, 0] > 0).long()
        return prompt_state, torch.randn(count, HIDDEN), torch.randn(count, HIDDEN), labels

    for _ in range(150):
        prompt_state, chosen, rejected, labels = batch(32)
        out = preference_loss(
            head.sample_pairs(prompt_state, chosen, rejected, 2),
            beta_w=0.01,
            beta_z=0.01,
            objective_labels=torch.where(torch.arange(32) % 4 == 0, -1, labels),  # a quarter unlabelled
            objective_label_weight=objective_label_weight,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    prompt_state, _, _, labels = batch(256)
    with torch.no_grad():
        weight_of_label = head.weight_posterior_moments(prompt_state)[0].gather(-1, labels[:, None])
    if objective_label_weight:
        assert weight_of_label.mean() > 0.8
        assert out.objective_label_nll < math.log(2) / 2
    else:
        assert abs(weight_of_label.mean() - 0.5) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("rating_weight_coef", [0.0, 1.0])
def test_ratings_alone_teach_the_weights_a_prompt_rule(rating_weight_coef):
    """Two kinds of prompt (the sign of one coordinate of h_x) value two objectives differently: kind 0 prefers
    the answer rated higher on objective 0, kind 1 on objective 1. Only the ratings and the preference are
    observed, no objective label. With the ratings -> weights term the Dirichlet mean learns the rule on unseen
    prompts; without it (rewards that carry no signal about the kind) the weights stay at the prior."""
    torch.manual_seed(0)
    head = make_head("vrm", num_objectives=2, feature_dim=4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)

    def batch(count: int):
        prompt_state = torch.randn(count, HIDDEN)
        kind = (prompt_state[:, 0] > 0).long()
        ratings_a, ratings_b = torch.rand(count, 2), torch.rand(count, 2)
        a_wins = ratings_a.gather(1, kind[:, None]) > ratings_b.gather(1, kind[:, None])
        delta = torch.where(a_wins, ratings_a - ratings_b, ratings_b - ratings_a)  # chosen minus rejected
        return prompt_state, torch.randn(count, HIDDEN), torch.randn(count, HIDDEN), delta, kind

    for _ in range(150):
        prompt_state, chosen, rejected, delta, _ = batch(32)
        delta[torch.arange(32) % 4 == 0] = math.nan  # a quarter of the pairs unrated
        out = preference_loss(
            head.sample_pairs(prompt_state, chosen, rejected, 2),
            beta_w=0.01,
            beta_z=0.01,
            rating_differences=delta,
            rating_weight_coef=rating_weight_coef,
            rating_temperature=10.0,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    prompt_state, _, _, _, kind = batch(256)
    with torch.no_grad():
        weight_of_kind = head.weight_posterior_moments(prompt_state)[0].gather(-1, kind[:, None])
    if rating_weight_coef:
        assert weight_of_kind.mean() > 0.8
    else:
        assert abs(weight_of_kind.mean() - 0.5) < 0.1


def test_paper_preset_has_many_weights_over_few_features():
    head = make_head("vrm-paper")
    assert (head.num_objectives, head.feature_dim) == (16, 4)
    assert (head.weight_posterior, head.feature_posterior) == ("dirichlet", "gaussian")
    assert make_head("vrm").feature_dim == 16 and make_head("vrm-paper", feature_dim=8).feature_dim == 8
