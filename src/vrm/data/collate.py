"""Batching tokenized preference pairs: padding, length-sorted batches, the training collator."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vrm.data.tokenization import TokenizedPair


# ----- batching -----------------------------------------------------------------------------------------------
def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest in the batch: (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "left":
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def length_sorted_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad_token_id: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches of sequences sorted by length (little padding): (indices into `sequences`, ids, mask)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = pad_sequences([sequences[i] for i in index], pad_token_id)
        yield index, ids, mask


@dataclass
class PreferenceCollator:
    """Pads a list of `TokenizedPair` into the tensors `VRMForSequenceClassification.forward_pairs` takes."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        chosen_ids, chosen_mask = pad_sequences(
            [p.chosen_input_ids for p in pairs], self.pad_token_id, self.padding_side
        )
        rejected_ids, rejected_mask = pad_sequences(
            [p.rejected_input_ids for p in pairs], self.pad_token_id, self.padding_side
        )
        batch = {
            "chosen_input_ids": chosen_ids,
            "chosen_attention_mask": chosen_mask,
            "rejected_input_ids": rejected_ids,
            "rejected_attention_mask": rejected_mask,
            "prompt_lengths": torch.tensor([p.prompt_length for p in pairs], dtype=torch.long),
        }
        batch.update(collate_targets(pairs))
        return batch


def collate_targets(pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
    """`margin` [B], `attribute_targets` [B, K'] (NaN where unknown), `objective_labels` [B] (-1 where
    unknown) and `rating_differences` [B, K'] (NaN where unknown), each when any pair of the batch has one."""
    batch: dict[str, torch.Tensor] = {}
    if any(p.margin is not None for p in pairs):
        batch["margin"] = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    if any(p.attribute_targets is not None for p in pairs):
        width = max(len(p.attribute_targets or []) for p in pairs)
        batch["attribute_targets"] = torch.tensor(
            [p.attribute_targets or [math.nan] * width for p in pairs], dtype=torch.float32
        )
    if any(p.objective_label is not None for p in pairs):
        batch["objective_labels"] = torch.tensor(
            [-1 if p.objective_label is None else p.objective_label for p in pairs], dtype=torch.long
        )
    if any(p.rating_differences is not None for p in pairs):
        width = max(len(p.rating_differences or []) for p in pairs)
        batch["rating_differences"] = torch.tensor(
            [p.rating_differences or [math.nan] * width for p in pairs], dtype=torch.float32
        )
    return batch
