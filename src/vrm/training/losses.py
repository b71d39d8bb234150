"""The training objective: a Bradley-Terry likelihood inside a (beta-weighted) negative ELBO.

For a pair (x, y+, y-) with M reparameterized samples (w_m, z+_m, z-_m) from the posterior:

    L = - 1/M sum_m log sigmoid( r(w_m, z+_m) - r(w_m, z-_m) - margin )
        + beta_w * KL(q(w|x) || Dir(alpha0 1))
        + beta_z * ( KL(q(z+|x,y+) || N(0,I)) + KL(q(z-|x,y-) || N(0,I)) )
        + lambda_attr * L_attr
        - lambda_obj * E_q[log w_o]
        + lambda_rw * L_rw

`L_attr` ties the first K_a objective scores to known per-objective judgements: for each rated objective k,
a logistic loss on `s_k(z+) - s_k(z-)`. Its target is either the *sign* of the rating difference (1 when y+
is rated higher on k, 0 when lower; ties and unknown entries masked — the original behaviour) or *graded*:
`t_k = (1 + delta_k) / 2` with `delta_k = (rho+_k - rho-_k) / range_k` in [-1, 1], so a tie is a target of 0.5
and a small rating gap a target near 0.5 — the soft-label Bradley-Terry likelihood of the rating comparison.
Where a row has both a rating and an objective label for the same objective, the sign mode keeps the label's
target 1 (as before) and the graded mode uses the rating; elsewhere an objective label gives the target 1.

The fourth term treats a pair's objective label o (the objective the judge used, RMB's `objective` column) as
an observation of the weights, o ~ Categorical(w): it is the ELBO of that label.

`L_rw`, **ratings -> weights** (our reading of the VRM paper's "supervised regularizer from multi-dimensional
ratings that guides the objective weights"; the paper's full text is not public): the prompt's weights must
explain the preference *through the ratings*. With the same reparameterized samples w_m as the main term,

    L_rw = - 1/M sum_m log sigmoid( tau * w~_m^T delta ),     w~_mk = w_mk 1[k rated] / sum_j w_mj 1[j rated],

over the pairs whose rated objectives differ in rating difference (w renormalised over the objectives rated
in that row, after adding 1e-3 to each weight for numerical safety; tau a set temperature). It is the expected
log-likelihood of the observed preference under a second observation model
p(y+ > y- | w, rho) = sigmoid(tau w^T (rho+ - rho-)), in which the ratings stand in for the learned scores, so
its gradient reaches the weights only: "for this prompt, the objectives on which the chosen answer is rated
better must carry the weight". A pair whose chosen answer is rated lower on every rated objective cannot be
explained by any w; its term stays large and pulls w towards the objective where it lost least (label noise,
or objectives the ratings do not cover: lower `rating_temperature` to soften it).

Alternatives we rejected: (a) regressing E[w] on a per-prompt target derived from ratings (there is no such
target: ratings describe responses, not the prompt); (b) feeding ratings into the scores only (`L_attr`, which
never reaches w — the state this term fixes); (c) a Dirichlet likelihood of normalised rating gaps as
pseudo-weights (undefined when the rejected answer is rated higher on every objective, and it ignores the
preference).

With no latents (bt) the KL terms are zero and L is TRL's reward loss.

**Ensembles** (`vrm.models.head_ensemble.EnsembleHead`, N members): every term above is taken per member n, each pair b
weighted by a bootstrap weight c_nb ~ Poisson(1) (`bootstrap_weights`; all 1 without bootstrap), and

    L_ens = 1/N sum_n L_n,      L_n = the loss above with every per-pair mean 1/B sum_b l_b -> 1/B sum_b c_nb l_b

(for the masked terms the denominator stays the count of pairs / entries that carry the term). E[c] = 1, so in
expectation each member's loss is the single-head loss, and members see different resamples of the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from vrm.models.heads import PairSamples

BETA_SCHEDULES = ("constant", "linear", "cyclical")
ATTRIBUTE_TARGETS = ("sign", "graded")


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
    rating_weight_nll: Tensor | None = None  # scalar, L_rw over pairs with ratings (0 when none has)


def graded_targets(attribute_targets: Tensor | None, rating_differences: Tensor) -> Tensor:
    """t_k = (1 + delta_k) / 2 where a rating difference is known; elsewhere the sign target (objective labels)."""
    graded = (1.0 + rating_differences.clamp(-1.0, 1.0)) / 2.0
    if attribute_targets is None:
        return graded
    return torch.where(torch.isnan(graded), attribute_targets.to(graded.dtype), graded)


def bootstrap_weights(num_members: int, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Online-bootstrap weights c [N, B] ~ Poisson(1), independent per member and pair (on the CPU)."""
    return torch.poisson(torch.ones(num_members, batch), generator=generator)


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """mean(values * weights) (weights broadcast over leading sample axes); the plain mean without weights."""
    if weights is None:
        return values.mean()
    return (values * weights.to(values.dtype)).sum() / values.numel()


def attribute_loss(
    samples: PairSamples, attribute_targets: Tensor, pair_weights: Tensor | None = None
) -> Tensor:
    """Logistic loss on per-objective score differences for rated objectives; NaN targets are ignored.

    Targets in [0, 1]: 0/1 (sign) or graded (soft labels); the loss is the binary cross-entropy either way.
    `pair_weights` [B] weigh each pair's entries (ensembles' bootstrap)."""
    rated = attribute_targets.shape[-1]
    logits = (samples.scores_chosen - samples.scores_rejected)[..., :rated]  # [M, B, K_a]
    targets = attribute_targets.to(logits.dtype).unsqueeze(0).expand_as(logits)
    known = ~torch.isnan(targets)
    if not bool(known.any()):
        return logits.new_zeros(())
    if pair_weights is None:
        return F.binary_cross_entropy_with_logits(logits[known], targets[known])
    weights = pair_weights.to(logits.dtype)[None, :, None].expand_as(logits)
    losses = F.binary_cross_entropy_with_logits(logits[known], targets[known], reduction="none")
    return _weighted_mean(losses, weights[known])


RATING_WEIGHT_SMOOTHING = (
    1e-3  # epsilon added to each rated weight before renormalising (see rating_weight_nll)
)


def rating_weight_nll(
    samples: PairSamples, rating_differences: Tensor, temperature: float, pair_weights: Tensor | None = None
) -> Tensor:
    """L_rw of the module docstring: -E_q[log sigmoid(tau w~^T delta)] over the informative pairs.

    A pair is informative when its known rating differences are not all equal (at least two rated objectives
    that differ): otherwise w~^T delta is the same for every w and the term carries no gradient. The rated
    weights are smoothed before renormalising, w~_k = (w_k + eps) / sum_j (w_j + eps) over rated j, eps = 1e-3:
    a Dirichlet sample can put ~0 mass on every rated objective (K = 16, 5 rated), and renormalising
    1e-14-sized weights would give gradients of ~1e12.
    """
    rated = rating_differences.shape[-1]
    weights = samples.weight_samples[..., :rated]  # [M, B, K_a]
    delta = rating_differences.to(weights.dtype)
    known = ~torch.isnan(delta)  # [B, K_a]
    highest = torch.where(known, delta, -torch.inf).amax(-1)
    lowest = torch.where(known, delta, torch.inf).amin(-1)
    informative = highest > lowest  # [B]; False for rows with < 2 known entries
    if not bool(informative.any()):
        return weights.new_zeros(())
    # select the informative rows first: an unrated row's 0 / 0 would send NaN gradients back even if masked
    weights, delta, known = weights[:, informative], delta[informative], known[informative]
    smoothed = (weights + RATING_WEIGHT_SMOOTHING) * known.to(weights.dtype).unsqueeze(0)
    renormalised = smoothed / smoothed.sum(-1, keepdim=True)
    logits = temperature * (renormalised * torch.nan_to_num(delta).unsqueeze(0)).sum(-1)  # [M, B']
    weights = None if pair_weights is None else pair_weights[informative.to(pair_weights.device)]
    return _weighted_mean(-F.logsigmoid(logits), weights)


def objective_label_nll(
    samples: PairSamples, objective_labels: Tensor, pair_weights: Tensor | None = None
) -> Tensor:
    """-E_q[log w_o] averaged over the pairs with a label o >= 0 (0 when no pair has one)."""
    known = objective_labels >= 0
    if not bool(known.any()):
        return samples.expected_log_weights.new_zeros(())
    log_weights = samples.expected_log_weights[known]
    weights = None if pair_weights is None else pair_weights[known.to(pair_weights.device)]
    return _weighted_mean(-log_weights.gather(-1, objective_labels[known].unsqueeze(-1)).squeeze(-1), weights)


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
    rating_differences: Tensor | None = None,
    attribute_target: str = "sign",
    rating_weight_coef: float = 0.0,
    rating_temperature: float = 10.0,
    pair_weights: Tensor | None = None,
) -> LossOutput:
    """The negative ELBO of the module docstring, averaged over the batch.

    `pair_weights` weigh the pairs: [B] for one head, [N, B] for an ensemble's N members (bootstrap); None
    weighs every pair 1. An ensemble's samples (`samples.members`) give the members' mean loss `L_ens`."""
    if attribute_target not in ATTRIBUTE_TARGETS:
        raise ValueError(f"attribute_target must be one of {ATTRIBUTE_TARGETS}, got {attribute_target!r}")
    terms = {
        "margin": margin,
        "attribute_targets": attribute_targets,
        "beta_w": beta_w,
        "beta_z": beta_z,
        "attribute_weight": attribute_weight,
        "objective_labels": objective_labels,
        "objective_label_weight": objective_label_weight,
        "rating_differences": rating_differences,
        "attribute_target": attribute_target,
        "rating_weight_coef": rating_weight_coef,
        "rating_temperature": rating_temperature,
    }
    if samples.members is not None:
        return _ensemble_loss(samples, pair_weights, terms)
    difference = samples.reward_chosen - samples.reward_rejected  # [M, B]
    if margin is not None:
        difference = difference - margin.to(difference.dtype).unsqueeze(0)
    if pair_weights is not None:
        pair_weights = pair_weights.to(difference.device)
    nll = _weighted_mean(-F.logsigmoid(difference), pair_weights)
    kl_weights = _weighted_mean(samples.kl_weights, pair_weights)
    kl_features = _weighted_mean(samples.kl_features, pair_weights)
    loss = nll + beta_w * kl_weights + beta_z * kl_features
    attr = nll.new_zeros(())
    if attribute_target == "graded" and rating_differences is not None:
        attribute_targets = graded_targets(attribute_targets, rating_differences.to(difference.device))
    if attribute_targets is not None and attribute_weight > 0:
        attr = attribute_loss(samples, attribute_targets, pair_weights)
        loss = loss + attribute_weight * attr
    label_nll = nll.new_zeros(())
    if objective_labels is not None:
        label_nll = objective_label_nll(samples, objective_labels.to(difference.device), pair_weights)
        if objective_label_weight > 0:
            loss = loss + objective_label_weight * label_nll
    rating_nll = None
    if rating_differences is not None:
        rating_nll = rating_weight_nll(
            samples, rating_differences.to(difference.device), rating_temperature, pair_weights
        )
        if rating_weight_coef > 0:
            loss = loss + rating_weight_coef * rating_nll
    accuracy = (samples.chosen.reward > samples.rejected.reward).float().mean()
    return LossOutput(loss, nll, kl_weights, kl_features, attr, label_nll, accuracy, rating_nll)


def _ensemble_loss(samples: PairSamples, pair_weights: Tensor | None, terms: dict) -> LossOutput:
    """L_ens = 1/N sum_n L_n (module docstring); every logged term is the members' mean, the accuracy is the
    ensemble's (its mean plug-in reward)."""
    members = samples.members
    if pair_weights is not None and pair_weights.shape[0] != len(members):
        raise ValueError(f"pair_weights has {pair_weights.shape[0]} rows for {len(members)} ensemble members")
    outs = [
        preference_loss(member, pair_weights=None if pair_weights is None else pair_weights[n], **terms)
        for n, member in enumerate(members)
    ]

    def mean(name: str) -> Tensor | None:
        values = [getattr(out, name) for out in outs]
        return None if values[0] is None else torch.stack(values).mean()

    accuracy = (samples.chosen.reward > samples.rejected.reward).float().mean()
    names = ("loss", "nll", "kl_weights", "kl_features", "attribute_loss", "objective_label_nll")
    return LossOutput(*(mean(name) for name in names), accuracy, mean("rating_weight_nll"))
