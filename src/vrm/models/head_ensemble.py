"""Ensembles of reward heads: N independent heads of one type on a shared backbone state (`EnsembleHead`).

Members differ by their initialization and, in training, by an online bootstrap: each pair gets an independent
Poisson(1) weight per member in the loss (`vrm.training.losses.bootstrap_weights`), so members disagree where the
data is thin (Osband et al., 2016; reward-model ensembles: Coste et al., 2023; Eisenstein et al., 2023; Zhang
et al., 2024). A head costs a few matmuls against the backbone's pass, so N members cost N times the head only.

For a (prompt, response) with member plug-in rewards r_1..r_N and member posterior std s_1..s_N (0 for
deterministic members: bt, moe), the ensemble is the uniform mixture of the members' predictive
distributions. Its mean and variance (the law of total variance) are

    reward      = r_bar = 1/N sum_n r_n
    aleatoric^2 = 1/N sum_n s_n^2                  (the members' own posterior variance, on average)
    epistemic^2 = 1/N sum_n (r_n - r_bar)^2        (the members' disagreement; population variance)
    reward_std^2 = aleatoric^2 + epistemic^2        (exactly)

so `aleatoric_std` is the root mean square of the members' stds. Objective weights, scores and features are
the member means. This module imports only torch, transformers and the two modules `modeling.py` ships with its
checkpoints (`config.py`, `heads.py`): `save_pretrained` copies it next to the weights of an ensemble, so it
loads with `trust_remote_code=True` where vrm is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .config import VRMConfig
from .heads import HeadOutput, LatentRewardHead, PairSamples


@dataclass
class EnsembleHeadOutput(HeadOutput):
    """`HeadOutput` of the mixture (member means, total std) plus the decomposition and the members' rewards."""

    aleatoric_std: Tensor | None = None  # [B]  sqrt(mean_n s_n^2)
    epistemic_std: Tensor | None = None  # [B]  std over members of r_n
    member_rewards: Tensor | None = None  # [B, N]


def combine_members(rewards: Tensor, stds: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(reward, reward_std, aleatoric_std, epistemic_std), each [B], from member rewards and stds [B, N].

    The mixture's mean and total std, with total^2 = aleatoric^2 + epistemic^2 (module docstring). Both moments
    are taken about the first member (r_bar = r_1 + mean_n (r_n - r_1)), so identical members give exactly
    their own reward and an epistemic std of exactly 0 (a plain mean can differ from r_1 in the last bit)."""
    offsets = rewards - rewards[..., :1]
    mean_offset = offsets.mean(-1)
    mean = rewards[..., 0] + mean_offset
    aleatoric_var = stds.pow(2).mean(-1)
    epistemic_var = (offsets - mean_offset.unsqueeze(-1)).pow(2).mean(-1)
    total = (aleatoric_var + epistemic_var).clamp_min(0).sqrt()
    return mean, total, aleatoric_var.clamp_min(0).sqrt(), epistemic_var.clamp_min(0).sqrt()


def ensemble_head_output(outputs: list[HeadOutput]) -> EnsembleHeadOutput:
    """The mixture of N members' `HeadOutput`s."""
    rewards = torch.stack([out.reward for out in outputs], -1)
    stds = torch.stack([out.reward_std for out in outputs], -1)
    reward, total, aleatoric, epistemic = combine_members(rewards, stds)

    def mean(name: str) -> Tensor:
        return torch.stack([getattr(out, name) for out in outputs]).mean(0)

    return EnsembleHeadOutput(
        reward=reward,
        reward_std=total,
        objective_weights=mean("objective_weights"),
        objective_scores=mean("objective_scores"),
        features=mean("features"),
        aleatoric_std=aleatoric,
        epistemic_std=epistemic,
        member_rewards=rewards,
    )


class EnsembleHead(nn.Module):
    """N `LatentRewardHead`s of the config's type on the same states; the interface of one head.

    `forward` gives the mixture (`EnsembleHeadOutput`); `sample_pairs` gives each member's `PairSamples` in
    `members`, and, at the top level, the members' averages (rewards, scores, KL terms, weight samples) and the
    mixture's plug-in outputs, for metrics. The loss is taken per member (`vrm.training.losses.preference_loss`).
    """

    def __init__(self, config: VRMConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(
            LatentRewardHead(config, hidden_size) for _ in range(config.ensemble_members)
        )

    @property
    def num_members(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each member starts at the prior with its own random decoder / feature projection."""
        for member in self.members:
            member.reset_parameters()

    def forward(self, prompt_state: Tensor, response_state: Tensor) -> EnsembleHeadOutput:
        return ensemble_head_output([member(prompt_state, response_state) for member in self.members])

    def sample_pairs(
        self, prompt_state: Tensor, chosen_state: Tensor, rejected_state: Tensor, num_samples: int
    ) -> PairSamples:
        members = tuple(
            member.sample_pairs(prompt_state, chosen_state, rejected_state, num_samples)
            for member in self.members
        )
        averaged = {
            item.name: torch.stack([getattr(m, item.name) for m in members]).mean(0)
            for item in fields(PairSamples)
            if isinstance(getattr(members[0], item.name), Tensor)
        }
        return PairSamples(
            **averaged,
            chosen=ensemble_head_output([m.chosen for m in members]),
            rejected=ensemble_head_output([m.rejected for m in members]),
            members=members,
        )
