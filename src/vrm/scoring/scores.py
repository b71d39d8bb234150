"""Scoring token sequences with a vrm model: `score_sequences` runs the model over length-sorted batches (or over
cached backbone states) and returns `SequenceScores`, the per-sequence rewards, uncertainties and objective
weights every scorer (pipeline, server, evaluation) hands on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vrm.data.collate import length_sorted_batches
from vrm.data.state_cache import EmbeddingCache
from vrm.models.modeling import VRMForSequenceClassification
from vrm.models.shared_prompt import has_shared_prompts, score_layout, score_prompt_trees


@dataclass
class SequenceScores:
    """Per-sequence outputs of a reward model, in input order (what every scorer returns)."""

    reward: torch.Tensor  # [N]
    reward_std: torch.Tensor  # [N]
    objective_weights: torch.Tensor  # [N, K]
    objective_scores: torch.Tensor  # [N, K]
    # ensembles only (`vrm.models.head_ensemble`, `vrm.scoring.deep_ensemble`): reward_std^2 = aleatoric_std^2 + epistemic_std^2
    aleatoric_std: torch.Tensor | None = None  # [N]
    epistemic_std: torch.Tensor | None = None  # [N]
    member_rewards: torch.Tensor | None = None  # [N, members]

    def select(self, index: torch.Tensor | slice) -> SequenceScores:
        def part(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[index]

        return SequenceScores(
            self.reward[index],
            self.reward_std[index],
            self.objective_weights[index],
            self.objective_scores[index],
            part(self.aleatoric_std),
            part(self.epistemic_std),
            part(self.member_rewards),
        )


@torch.no_grad()
def score_sequences(
    model: VRMForSequenceClassification,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = False,
    description: str = "scoring",
    embedding_cache: EmbeddingCache | None = None,
) -> SequenceScores:
    """Score token sequences in batches sorted by length (little padding), returned in input order.

    With an `embedding_cache` (a model trained with `--freeze_backbone`), the backbone states come from the cache
    (computed into it once) and only the head runs here.
    """
    model.eval()
    device = next(model.parameters()).device
    count, k = len(sequences), model.config.num_objectives
    out = SequenceScores(torch.empty(count), torch.empty(count), torch.empty(count, k), torch.empty(count, k))

    def store(index, result) -> None:
        out.reward[index] = result.logits[:, 0].float().cpu()
        out.reward_std[index] = result.reward_std.float().cpu()
        out.objective_weights[index] = result.objective_weights.float().cpu()
        out.objective_scores[index] = result.objective_scores.float().cpu()
        if getattr(result, "member_rewards", None) is not None:  # an ensemble
            if out.member_rewards is None:
                out.aleatoric_std, out.epistemic_std = torch.empty(count), torch.empty(count)
                out.member_rewards = torch.empty(count, result.member_rewards.shape[-1])
            out.aleatoric_std[index] = result.aleatoric_std.float().cpu()
            out.epistemic_std[index] = result.epistemic_std.float().cpu()
            out.member_rewards[index] = result.member_rewards.float().cpu()

    if embedding_cache is not None:
        prompt_states, response_states = embedding_cache.states(
            model, sequences, prompt_lengths, pad_token_id, description
        )
        for start in range(0, count, 4096):
            part = slice(start, start + 4096)
            store(
                part,
                model(
                    prompt_states=prompt_states[part].to(device),
                    response_states=response_states[part].to(device),
                ),
            )
        return out
    if score_layout(model) == "shared_prompt" and (
        not model.config.is_causal or has_shared_prompts(sequences, prompt_lengths)
    ):  # a prompt shared by several sequences is computed once (vrm.models.shared_prompt)
        for index, result in score_prompt_trees(model, sequences, prompt_lengths, pad_token_id, batch_size):
            store(index, result)
        return out
    batches = length_sorted_batches(sequences, batch_size, pad_token_id)
    total = -(-count // batch_size)
    for index, ids, mask in tqdm(batches, total=total, desc=description, disable=not progress, leave=False):
        lengths = torch.tensor([prompt_lengths[i] for i in index])
        store(
            index,
            model(
                input_ids=ids.to(device), attention_mask=mask.to(device), prompt_lengths=lengths.to(device)
            ),
        )
    return out
