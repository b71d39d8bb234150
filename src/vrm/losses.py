"""The training objective: a Bradley-Terry likelihood inside a (beta-weighted) negative ELBO.

For a pair (x, y+, y-) with M reparameterized samples (w_m, z+_m, z-_m) from the posterior:

    L = - 1/M sum_m log sigmoid( r(w_m, z+_m) - r(w_m, z-_m) - margin )
        + beta_w * KL(q(w|x) || Dir(alpha0 1))
        + beta_z * ( KL(q(z+|x,y+) || N(0,I)) + KL(q(z-|x,y-) || N(0,I)) )
        + lambda_attr * L_attr
        - lambda_obj * E_q[log w_o]

`L_attr` ties the first K_a objective scores to known per-objective judgements: for each rated objective k,
a logistic loss on `s_k(z+) - s_k(z-)` with target 1 when y+ is the better response on k, 0 when y- is;
unknown entries (NaN) are masked. The last term treats a pair's objective label o (the objective the judge
used, RMB's `objective` column) as an observation of the weights, o ~ Categorical(w): it is the ELBO of that
label, and the only term that tells the weight network which prompts call for which objective (`L_attr` trains
the scores, not the weights). Pairs without a label (o = -1) are masked. With no latents (bt) the KL terms
are zero and L is TRL's reward loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .heads import PairSamples

BETA_SCHEDULES = ("constant", "linear", "cyclical")


def beta_factor(
    schedule: str, step: int, total_steps: int, warmup_ratio: float = 0.1, num_cycles: int = 4
) -> float:
    """Multiplier in [0, 1] applied to beta_w and beta_z at `step` of `total_steps`.

    constant: 1.  linear: ramps 0 -> 1 over the first `warmup_ratio` of training, then 1.
    cyclical (Fu et al., 2019): `num_cycles` cycles; in each, ramps 0 -> 1 over the first half, then 1.
    """
    if schedule == "constant":
        return 1.0
    total_steps = max(int(total_steps), 1)
    if schedule == "linear":
        warmup = warmup_ratio * total_steps
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)
    if schedule == "cyclical":
        cycle = total_steps / max(num_cycles, 1)
        position = (step % cycle) / cycle if cycle > 0 else 1.0
        return min(1.0, 2.0 * position)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")


@dataclass
class LossOutput:
    loss: Tensor  # scalar, what is minimized
    nll: Tensor  # scalar, Bradley-Terry negative log-likelihood (Monte-Carlo mean)
    kl_weights: Tensor  # scalar, mean KL_w per pair
    kl_features: Tensor  # scalar, mean KL_z per pair (chosen + rejected)
    attribute_loss: Tensor  # scalar (0 when no row carries ratings)
    objective_label_nll: Tensor  # scalar, -E_q[log w_o] over labelled pairs (0 when none is labelled)
    accuracy: Tensor  # scalar, plug-in reward of chosen > rejected


def attribute_loss(samples: PairSamples, attribute_targets: Tensor) -> Tensor:
    """Logistic loss on per-objective score differences for rated objectives; NaN targets are ignored."""
    rated = attribute_targets.shape[-1]
    logits = (samples.scores_chosen - samples.scores_rejected)[..., :rated]  # [M, B, K_a]
    targets = attribute_targets.to(logits.dtype).unsqueeze(0).expand_as(logits)
    known = ~torch.isnan(targets)
    if not bool(known.any()):
        return logits.new_zeros(())
    return F.binary_cross_entropy_with_logits(logits[known], targets[known])


def objective_label_nll(samples: PairSamples, objective_labels: Tensor) -> Tensor:
    """-E_q[log w_o] averaged over the pairs with a label o >= 0 (0 when no pair has one)."""
    known = objective_labels >= 0
    if not bool(known.any()):
        return samples.expected_log_weights.new_zeros(())
    log_weights = samples.expected_log_weights[known]
    return -log_weights.gather(-1, objective_labels[known].unsqueeze(-1)).mean()


def preference_loss(
    samples: PairSamples,
    *,
    margin: Tensor | None = None,
    attribute_targets: Tensor | None = None,
    beta_w: float = 0.0,
    beta_z: float = 0.0,
    attribute_weight: float = 0.0,
    objective_labels: Tensor | None = None,
    objective_label_weight: float = 0.0,
) -> LossOutput:
    """The negative ELBO of the module docstring, averaged over the batch."""
    difference = samples.reward_chosen - samples.reward_rejected  # [M, B]
    if margin is not None:
        difference = difference - margin.to(difference.dtype).unsqueeze(0)
    nll = -F.logsigmoid(difference).mean()
    kl_weights = samples.kl_weights.mean()
    kl_features = samples.kl_features.mean()
    loss = nll + beta_w * kl_weights + beta_z * kl_features
    attr = nll.new_zeros(())
    if attribute_targets is not None and attribute_weight > 0:
        attr = attribute_loss(samples, attribute_targets)
        loss = loss + attribute_weight * attr
    label_nll = nll.new_zeros(())
    if objective_labels is not None:
        label_nll = objective_label_nll(samples, objective_labels.to(difference.device))
        if objective_label_weight > 0:
            loss = loss + objective_label_weight * label_nll
    accuracy = (samples.chosen.reward > samples.rejected.reward).float().mean()
    return LossOutput(loss, nll, kl_weights, kl_features, attr, label_nll, accuracy)


def pair_nll_from_rewards(reward_chosen: Tensor, reward_rejected: Tensor) -> float:
    """Mean Bradley-Terry NLL of plug-in rewards (for evaluation)."""
    return float(-F.logsigmoid(reward_chosen - reward_rejected).mean()) if reward_chosen.numel() else math.nan
