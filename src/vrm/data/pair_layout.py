"""Shared-prompt layout and padding-free packing: each unique token goes through the backbone once.

A *prompt tree* is one prompt followed by its N responses, laid out in one row: `[prompt | y_1 | ... | y_N]`
(a training pair is the tree `[prompt | chosen | rejected]`). Every token carries

* a *block id* — which tree it belongs to (-1: padding), and
* a *part id* — 0 for the prompt, k for response k (1-based; -1: padding),

and positions restart for each response where the prompt ends: response k's tokens have positions
`P, P + 1, ...`, exactly those they have in the separate sequence `x ⊕ y_k`. The attention rule
(`vrm.models.shared_prompt.tree_attention_mask`) is that query i sees key j iff both lie in the same tree and
`part_j ∈ {0, part_i}` (plus `j ≤ i` on causal backbones): a response sees the prompt and itself, the prompt sees
the prompt only. On a causal backbone that *is* the separate sequences (exact); on an encoder the prompt no longer
sees the response, a different model (its prompt states are the prompt-only states `h_x`).

Several trees share a row (first-fit decreasing, rows as long as the longest tree unless asked longer), so a
batch costs its real tokens plus the little padding at the rows' ends. `LayoutTokens` counts it per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vrm.data.collate import collate_targets
from vrm.data.tokenization import TokenizedPair
from vrm.models.shared_prompt import PromptTree, pack_trees, tree_layout_problem

PAIR_LAYOUTS = ("auto", "shared_prompt", "separate")


@dataclass
class LayoutTokens:
    """Tokens of one batch: `processed` (positions the backbone runs, padding included), `real` (non-padding
    positions) and `unique` (prompt once + each response: the least any layout can process)."""

    processed: int
    real: int
    unique: int

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.processed, self.real, self.unique], dtype=torch.float32)

    @staticmethod
    def metrics(values: torch.Tensor) -> dict[str, float]:
        """Logged per step: tokens processed / unique, their ratio and the padding share of processed tokens."""
        processed, real, unique = (float(v) for v in values)
        return {
            "tokens_processed": processed,
            "tokens_unique": unique,
            "processed_over_unique_tokens": processed / max(unique, 1.0),
            "padding_share": 1.0 - real / max(processed, 1.0),
        }


def pair_tree(pair: TokenizedPair) -> PromptTree:
    """The tree `[prompt | chosen | rejected]` of a tokenized pair (both sequences start with its prompt)."""
    length = pair.prompt_length
    return PromptTree(
        list(pair.chosen_input_ids[:length]),
        [list(pair.chosen_input_ids[length:]), list(pair.rejected_input_ids[length:])],
    )


def separate_layout_tokens(pairs: Sequence[TokenizedPair], prompt_pass: bool) -> LayoutTokens:
    """What the separate layout processes: chosen and rejected padded to one width (2B rows), plus, with
    `prompt_pass` (an encoder whose head reads h_x), the prompt-only rows padded to the longest prompt."""
    width = max(max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in pairs)
    processed = 2 * len(pairs) * width
    real = sum(len(p.chosen_input_ids) + len(p.rejected_input_ids) for p in pairs)
    if prompt_pass:
        processed += len(pairs) * max(p.prompt_length for p in pairs)
        real += sum(p.prompt_length for p in pairs)
    return LayoutTokens(processed, real, _unique_tokens(pairs))


def _unique_tokens(pairs: Sequence[TokenizedPair]) -> int:
    return sum(len(p.chosen_input_ids) + len(p.rejected_input_ids) - p.prompt_length for p in pairs)


@dataclass
class SharedPromptCollator:
    """Collates `TokenizedPair`s into packed prompt trees, the `packed_*` inputs of
    `VRMForSequenceClassification.forward`'s shared-prompt pair mode, plus the targets (`collate_targets`)
    and `layout_tokens` ([processed, real, unique], logged by `VRMTrainer`)."""

    pad_token_id: int
    row_length: int | None = None
    attention_scale: float = 2304.0  # ≈ 6 × the backbone's hidden size (vrm.models.shared_prompt.pack_trees)

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        packed = pack_trees(
            [pair_tree(p) for p in pairs], self.pad_token_id, self.row_length, self.attention_scale
        )
        tokens = LayoutTokens(packed.input_ids.numel(), packed.real_tokens, _unique_tokens(pairs))
        batch = {
            "packed_input_ids": packed.input_ids,
            "packed_position_ids": packed.position_ids,
            "packed_block_ids": packed.block_ids,
            "packed_part_ids": packed.part_ids,
            "layout_tokens": tokens.as_tensor(),
        }
        batch.update(collate_targets(pairs))
        return batch


@dataclass
class SeparateLayoutStats:
    """Wraps the separate-layout collator (`PreferenceCollator`) to add its `layout_tokens`."""

    collator: object
    prompt_pass: bool

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        batch = self.collator(pairs)
        batch["layout_tokens"] = separate_layout_tokens(pairs, self.prompt_pass).as_tensor()
        return batch


def resolve_pair_layout(requested: str, config, backbone_config, takes_position_ids: bool) -> tuple[str, str]:
    """The layout a run uses and why: `auto` is `shared_prompt` on causal backbones (exact) and `separate` on
    encoders (the shared layout changes an encoder's model); an impossible `shared_prompt` falls back."""
    if requested not in PAIR_LAYOUTS:
        raise ValueError(f"--pair_layout must be one of {PAIR_LAYOUTS}, got {requested!r}")
    if requested == "separate":
        return "separate", "asked"
    if requested == "auto" and not config.is_causal:
        return "separate", "encoder backbone (pass --pair_layout shared_prompt to change the model and share)"
    problem = tree_layout_problem(config, backbone_config, takes_position_ids)
    if problem is not None:
        return "separate", problem
    return (
        "shared_prompt",
        "exact on a causal backbone" if config.is_causal else "asked (encoder: a changed model)",
    )


@dataclass
class PairLayoutChoice:
    """The layout a training run uses (`name`, recorded in the checkpoint), why, and its collator."""

    name: str
    reason: str
    collator: SharedPromptCollator | SeparateLayoutStats


def layout_collator(
    requested: str, model, pad_token_id: int, cached_states: bool = False
) -> PairLayoutChoice:
    """The collator of `--pair_layout` for `model` (a `VRMForSequenceClassification`); cached backbone states
    (`vrm.data.state_cache`) are separate-layout states, so they keep the separate layout."""
    from vrm.data.collate import PreferenceCollator

    config = model.config
    if cached_states and requested != "separate":
        name, reason = "separate", "cached backbone states are read per sequence"
        if requested == "auto" and not config.is_causal:
            reason = "encoder backbone"
    else:
        name, reason = resolve_pair_layout(
            requested, config, model.backbone.config, model._backbone_takes_position_ids
        )
    if name == "shared_prompt":
        scale = 6.0 * config.text_config.hidden_size
        return PairLayoutChoice(name, reason, SharedPromptCollator(pad_token_id, attention_scale=scale))
    prompt_pass = not config.is_causal and config.weight_posterior != "none"
    separate = PreferenceCollator(pad_token_id=pad_token_id, padding_side="right")
    return PairLayoutChoice(name, reason, SeparateLayoutStats(separate, prompt_pass))
