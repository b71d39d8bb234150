"""Reward heads: one module, `LatentRewardHead`, that holds bt, ib, moe and vrm (see `vrm.models.config`).

Given a prompt state `h_x` and a response state `h_xy` (both `[B, H]`):

* objective weights `w` in the simplex `Delta^{K-1}`:
  - `dirichlet`: `q(w | x) = Dirichlet(alpha)`, `alpha = clamp(softplus(W_a h_x + b_a) + eps)`,
    prior `Dirichlet(alpha0 * 1)`;
  - `softmax`:   `w = softmax(W_a h_x + b_a)` (deterministic gate, ArmoRM-style);
  - `logistic_normal`: `w = softmax(u)`, `q(u | x) = N(W_a h_x + b_a, diag exp(W_v h_x + b_v))`, prior
    `N(0, s0^2 I)` with `s0^2 = (1 - 1/K) / alpha0`, the Laplace approximation of `Dirichlet(alpha0 * 1)` in the
    softmax basis (MacKay, 1998); its moments E[w], Cov[w] have no closed form and are estimated by Monte Carlo;
  - `none`:      `w = 1/K` (K = 1 for bt / ib, so `w = 1`).
* semantic features `z`:
  - `gaussian`:      `q(z | x, y) = N(mu, diag sigma^2)`, `mu = W_mu h_xy`, `log sigma^2 = W_s h_xy`, prior `N(0, I)`;
  - `deterministic`: `z = W_mu h_xy`;
  - `identity`:      `z = h_xy`.
* per-objective scores `s = g(z)` (linear `A z` by default), reward `r = w . s`.

Inference uses the plug-in reward `E[w] . g(mu_z)`. For a linear decoder its posterior standard deviation has a
closed form (w and z are independent under q):

    Var[r] = E_w[ w^T A Sigma_z A^T w ] + s_bar^T Cov[w] s_bar,      s_bar = A mu_z,
    E[w w^T] = Cov[w] + w_bar w_bar^T,   Cov[w] = (diag(w_bar) - w_bar w_bar^T) / (alpha_0 + 1)   (Dirichlet),

so `reward_std` is exact and deterministic. With an MLP decoder it is estimated by Monte Carlo.

Training (`sample_pairs`) draws M reparameterized samples of w per pair, shared by chosen and rejected, and
returns them (`PairSamples.weight_samples`) so that every term of the loss that involves the weights — the
Bradley-Terry likelihood, the objective label, and the ratings -> weights term (our reading of the VRM paper's
rating-guided weights; see `vrm.training.losses`) — uses the same draws. The `vrm-paper` preset takes the paper's
proportions, many objectives over few features (K = 16, d = 4); `vrm` keeps K = 4, d = 16.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Dirichlet, Distribution, Normal, kl_divergence
from transformers.utils import ModelOutput

from .config import VRMConfig


def standard_normal_kl(posterior: Normal) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element: (sigma^2 + mu^2 - 1 - log sigma^2) / 2."""
    return kl_divergence(posterior, Normal(torch.zeros_like(posterior.loc), torch.ones_like(posterior.loc)))


@dataclass
class HeadOutput:
    """What the head says about each (prompt, response): all tensors have batch size B."""

    reward: Tensor  # [B]      plug-in reward E[w] . g(mu_z)
    reward_std: Tensor  # [B]  posterior standard deviation of the reward (0 for deterministic heads)
    objective_weights: Tensor  # [B, K]  E[w]
    objective_scores: Tensor  # [B, K]   g(mu_z)
    features: Tensor  # [B, d]           mu_z


@dataclass
class PairSamples(ModelOutput):
    """Reparameterized samples for a batch of B preference pairs (M samples each), plus the KL terms.

    A `transformers` `ModelOutput` (fields by attribute, by key, or `to_tuple()`), so that the pair path of
    `VRMForSequenceClassification.forward` honours the usual output contract; every field is filled by
    `LatentRewardHead.sample_pairs` (the None defaults are `ModelOutput`'s rule, not optional fields).
    """

    reward_chosen: Tensor | None = None  # [M, B]
    reward_rejected: Tensor | None = None  # [M, B]
    scores_chosen: Tensor | None = None  # [M, B, K]
    scores_rejected: Tensor | None = None  # [M, B, K]
    kl_weights: Tensor | None = None  # [B]  KL(q(w|x) || p(w))
    # [B] KL(q(z+|x,y+) || N(0,I)) + KL(q(z-|x,y-) || N(0,I)), summed over dimensions
    kl_features: Tensor | None = None
    expected_log_weights: Tensor | None = None  # [B, K] E_q[log w_k], "the judge used objective k"
    weight_samples: Tensor | None = None  # [M, B, K] the samples of w behind reward_chosen / reward_rejected
    chosen: HeadOutput | None = None  # plug-in outputs, for metrics
    rejected: HeadOutput | None = None
    # an ensemble head (`vrm.models.head_ensemble.EnsembleHead`): each member's samples; the fields above are their averages
    members: tuple[PairSamples, ...] | None = None


@contextlib.contextmanager
def _fixed_seed(reference: Tensor):
    """Monte-Carlo estimates at inference draw from seed 0, without touching the caller's random state."""
    devices = [reference.device] if reference.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class LatentRewardHead(nn.Module):
    """The shared head of bt / ib / moe / vrm. See the module docstring for the math."""

    def __init__(self, config: VRMConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.num_objectives = config.num_objectives
        self.weight_posterior = config.weight_posterior
        self.feature_posterior = config.feature_posterior
        self.feature_dim = hidden_size if config.feature_posterior == "identity" else config.feature_dim

        self.weight_net = (
            nn.Linear(hidden_size, self.num_objectives) if self.weight_posterior != "none" else None
        )
        self.weight_logvar = (
            nn.Linear(hidden_size, self.num_objectives)
            if self.weight_posterior == "logistic_normal"
            else None
        )
        # A deterministic projection needs no bias (it cancels in r+ - r-); a Gaussian mean keeps one (KL uses it).
        self.feature_mean = (
            nn.Linear(hidden_size, self.feature_dim, bias=self.feature_posterior == "gaussian")
            if self.feature_posterior != "identity"
            else None
        )
        self.feature_logvar = (
            nn.Linear(hidden_size, self.feature_dim) if self.feature_posterior == "gaussian" else None
        )
        # The decoder's last layer has no bias: a per-objective offset c adds w.c to both responses of a pair,
        # cancels in r+ - r-, and so would never be trained (the reward offset lives in `reward_mean`).
        if config.decoder_hidden_size > 0:
            self.decoder = nn.Sequential(
                nn.Linear(self.feature_dim, config.decoder_hidden_size),
                nn.GELU(),
                nn.Linear(config.decoder_hidden_size, self.num_objectives, bias=False),
            )
        else:
            self.decoder = nn.Linear(self.feature_dim, self.num_objectives, bias=False)
        self.reset_parameters()

    @property
    def linear_decoder(self) -> bool:
        return isinstance(self.decoder, nn.Linear)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Start at the prior: alpha = alpha0 (KL_w = 0), small feature variance, a random decoder.

        Tensor methods rather than `nn.init`, which transformers patches to skip already-initialized tensors.
        """
        if self.weight_net is not None:
            self.weight_net.weight.zero_()
            if self.weight_posterior == "dirichlet":
                start = max(self.config.prior_concentration - 1e-4, 1e-4)
                self.weight_net.bias.fill_(_inverse_softplus(start))
            else:
                self.weight_net.bias.zero_()
        if self.weight_logvar is not None:  # start at the prior: KL_w = 0
            self.weight_logvar.weight.zero_()
            self.weight_logvar.bias.fill_(math.log(self.logistic_prior_variance))
        for layer in (self.feature_mean, self.feature_logvar):
            if layer is not None:
                layer.weight.normal_(std=1.0 / math.sqrt(layer.in_features))
                if layer.bias is not None:
                    layer.bias.zero_()
        if self.feature_logvar is not None:
            self.feature_logvar.weight.mul_(0.01)
            self.feature_logvar.bias.fill_(-2.0)
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                # bt reads a wide hidden state (LM-head convention, std 0.02); a latent decoder reads d ~ 16 unit-scale
                # features, where 1/sqrt(d) gives O(1) scores from the start instead of a head that barely moves.
                std = 0.02 if self.feature_posterior == "identity" else 1.0 / math.sqrt(module.in_features)
                module.weight.normal_(std=std)
                if module.bias is not None:
                    module.bias.zero_()

    # ----- the two latent variables -------------------------------------------------------------------------
    @property
    def logistic_prior_variance(self) -> float:
        """s0^2 of the logistic-normal prior N(0, s0^2 I): Laplace approximation of Dirichlet(alpha0 * 1)."""
        return (1.0 - 1.0 / self.num_objectives) / self.config.prior_concentration

    def logistic_normal(self, prompt_state: Tensor) -> Normal:
        """q(u | x) of the logistic-normal weights w = softmax(u)."""
        logvar = self.weight_logvar(prompt_state).clamp(
            self.config.feature_logvar_min, self.config.feature_logvar_max
        )
        return Normal(self.weight_net(prompt_state), (0.5 * logvar).exp())

    def weight_concentration(self, prompt_state: Tensor) -> Tensor:
        """Dirichlet posterior concentrations alpha(h_x), [B, K]."""
        raw = nn.functional.softplus(self.weight_net(prompt_state)) + 1e-4
        return raw.clamp(self.config.concentration_min, self.config.concentration_max)

    def weight_posterior_moments(self, prompt_state: Tensor) -> tuple[Tensor, Tensor | None]:
        """E[w] [B, K] and Cov[w] [B, K, K] (None when w is deterministic)."""
        batch = prompt_state.shape[0]
        if self.weight_posterior == "none":
            mean = prompt_state.new_full((batch, self.num_objectives), 1.0 / self.num_objectives)
            return mean, None
        if self.weight_posterior == "softmax":
            return torch.softmax(self.weight_net(prompt_state), dim=-1), None
        if self.weight_posterior == "logistic_normal":  # Monte Carlo with a fixed seed: deterministic scoring
            with _fixed_seed(prompt_state):
                samples = torch.softmax(
                    self.logistic_normal(prompt_state).sample((self.config.num_eval_samples,)), -1
                )
            mean = samples.mean(0)
            centred = samples - mean
            return mean, torch.einsum("mbk,mbl->bkl", centred, centred) / samples.shape[0]
        alpha = self.weight_concentration(prompt_state)
        total = alpha.sum(-1, keepdim=True)
        mean = alpha / total
        cov = (torch.diag_embed(mean) - mean.unsqueeze(-1) * mean.unsqueeze(-2)) / (total.unsqueeze(-1) + 1)
        return mean, cov

    def weight_distributions(self, prompt_state: Tensor) -> tuple[Distribution, Distribution] | None:
        """q(w | x) and p(w) (of u for the logistic-normal w = softmax(u)); None when w is deterministic."""
        if self.weight_posterior == "logistic_normal":
            posterior = self.logistic_normal(prompt_state)
            scale = math.sqrt(self.logistic_prior_variance)
            return posterior, Normal(torch.zeros_like(posterior.loc), torch.full_like(posterior.loc, scale))
        if self.weight_posterior != "dirichlet":
            return None
        alpha = self.weight_concentration(prompt_state)
        return Dirichlet(alpha), Dirichlet(torch.full_like(alpha, self.config.prior_concentration))

    def weight_kl(self, prompt_state: Tensor) -> Tensor | None:
        """KL(q(w|x) || p(w)) [B], drawing nothing; None when w is deterministic or K = 1."""
        found = self.weight_distributions(prompt_state)
        if found is None or (self.weight_posterior == "dirichlet" and self.num_objectives == 1):
            return None
        kl = kl_divergence(*found)
        return kl.sum(-1) if self.weight_posterior == "logistic_normal" else kl

    def sample_weights(self, prompt_state: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """M reparameterized samples of w [M, B, K] and KL(q(w|x) || p(w)) [B]."""
        found = self.weight_distributions(prompt_state)
        if found is None:
            mean, _ = self.weight_posterior_moments(prompt_state)
            return mean.unsqueeze(0).expand(num_samples, -1, -1), prompt_state.new_zeros(
                prompt_state.shape[0]
            )
        posterior, prior = found
        if self.weight_posterior == "logistic_normal":
            return torch.softmax(posterior.rsample((num_samples,)), -1), kl_divergence(posterior, prior).sum(
                -1
            )
        alpha = posterior.concentration
        if self.num_objectives == 1:  # a Dirichlet over one objective is the point mass w = 1
            return alpha.new_ones(num_samples, *alpha.shape), alpha.new_zeros(alpha.shape[0])
        return posterior.rsample((num_samples,)), kl_divergence(posterior, prior)

    def expected_log_weights(self, prompt_state: Tensor, weight_samples: Tensor) -> Tensor:
        """E_q[log w_k] [B, K]: the expected log-likelihood of an objective label o ~ Categorical(w).

        Dirichlet: psi(alpha_k) - psi(sum_j alpha_j) (exact); softmax: log_softmax (w is deterministic);
        logistic-normal: the mean of log w over the training samples `weight_samples` [M, B, K] (no new draws,
        so the random stream is the same with or without this term); none: log(1/K), a constant.
        """
        batch = prompt_state.shape[0]
        if self.weight_posterior == "none" or self.num_objectives == 1:
            return prompt_state.new_full((batch, self.num_objectives), -math.log(self.num_objectives))
        if self.weight_posterior == "softmax":
            return torch.log_softmax(self.weight_net(prompt_state), dim=-1)
        if self.weight_posterior == "logistic_normal":
            return weight_samples.clamp_min(torch.finfo(weight_samples.dtype).tiny).log().mean(0)
        alpha = self.weight_concentration(prompt_state)
        return torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))

    def feature_posterior_moments(self, response_state: Tensor) -> tuple[Tensor, Tensor | None]:
        """mu_z [B, d] and sigma_z^2 [B, d] (None when z is deterministic)."""
        if self.feature_posterior == "identity":
            return response_state, None
        mean = self.feature_mean(response_state)
        if self.feature_posterior == "deterministic":
            return mean, None
        logvar = self.feature_logvar(response_state).clamp(
            self.config.feature_logvar_min, self.config.feature_logvar_max
        )
        return mean, logvar.exp()

    def sample_features(self, response_state: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """M reparameterized samples of z [M, B, d] and KL(q(z|x,y) || N(0, I)) summed over dimensions [B]."""
        mean, var = self.feature_posterior_moments(response_state)
        if var is None:
            return mean.unsqueeze(0).expand(num_samples, -1, -1), mean.new_zeros(mean.shape[0])
        posterior = Normal(mean, var.sqrt())
        return posterior.rsample((num_samples,)), standard_normal_kl(posterior).sum(-1)

    def feature_kl(self, response_state: Tensor) -> Tensor | None:
        """KL(q(z|x,y) || N(0, I)) per feature dimension [B, d]; None when z is deterministic."""
        mean, var = self.feature_posterior_moments(response_state)
        return None if var is None else standard_normal_kl(Normal(mean, var.sqrt()))

    # ----- inference ------------------------------------------------------------------------------------------
    def forward(self, prompt_state: Tensor, response_state: Tensor) -> HeadOutput:
        """Plug-in reward and its posterior standard deviation for B (prompt, response) states."""
        weight_mean, weight_cov = self.weight_posterior_moments(prompt_state)
        feature_mean, feature_var = self.feature_posterior_moments(response_state)
        scores = self.decoder(feature_mean)
        reward = (weight_mean * scores).sum(-1)
        if weight_cov is None and feature_var is None:
            reward_std = torch.zeros_like(reward)
        elif self.linear_decoder:
            variance = torch.zeros_like(reward)
            if feature_var is not None:
                decoder_weight = self.decoder.weight  # A: [K, d]
                score_cov = (
                    decoder_weight * feature_var.unsqueeze(-2)
                ) @ decoder_weight.T  # A Sigma A^T [B, K, K]
                second_moment = weight_mean.unsqueeze(-1) * weight_mean.unsqueeze(-2)
                if weight_cov is not None:
                    second_moment = second_moment + weight_cov
                variance = variance + (second_moment * score_cov).sum((-1, -2))
            if weight_cov is not None:
                variance = variance + torch.einsum("bk,bkl,bl->b", scores, weight_cov, scores)
            reward_std = variance.clamp_min(0).sqrt()
        else:
            reward_std = self._monte_carlo_std(prompt_state, response_state)
        return HeadOutput(reward, reward_std, weight_mean, scores, feature_mean)

    def _monte_carlo_std(self, prompt_state: Tensor, response_state: Tensor) -> Tensor:
        with _fixed_seed(response_state):  # a fixed seed keeps scoring deterministic
            weights, _ = self.sample_weights(prompt_state, self.config.num_eval_samples)
            features, _ = self.sample_features(response_state, self.config.num_eval_samples)
        rewards = (weights * self.decoder(features)).sum(-1)
        return rewards.std(0, unbiased=False)

    # ----- training -------------------------------------------------------------------------------------------
    def sample_pairs(
        self, prompt_state: Tensor, chosen_state: Tensor, rejected_state: Tensor, num_samples: int
    ) -> PairSamples:
        """Samples for B pairs; chosen and rejected share each sample of w (they answer the same prompt)."""
        weights, kl_weights = self.sample_weights(prompt_state, num_samples)
        features_chosen, kl_chosen = self.sample_features(chosen_state, num_samples)
        features_rejected, kl_rejected = self.sample_features(rejected_state, num_samples)
        scores_chosen = self.decoder(features_chosen)
        scores_rejected = self.decoder(features_rejected)
        with torch.no_grad():  # plug-in outputs only feed metrics
            chosen, rejected = self(prompt_state, chosen_state), self(prompt_state, rejected_state)
        return PairSamples(
            reward_chosen=(weights * scores_chosen).sum(-1),
            reward_rejected=(weights * scores_rejected).sum(-1),
            scores_chosen=scores_chosen,
            scores_rejected=scores_rejected,
            kl_weights=kl_weights,
            kl_features=kl_chosen + kl_rejected,
            expected_log_weights=self.expected_log_weights(prompt_state, weights),
            weight_samples=weights,
            chosen=chosen,
            rejected=rejected,
        )
