"""The backbone over prompt trees (`vrm.data.pair_layout`): one pass per unique token, states read per tree.

For packed rows with block ids `b` and part ids `p` (0 prompt, k response k), query i attends key j iff

    b_i = b_j ≥ 0  and  p_j ∈ {0, p_i}  [and j ≤ i on causal backbones],

and a padding position attends itself only. With response positions restarting at the prompt's end, a causal
backbone's states equal those of the separate sequences `x ⊕ y_k`; an encoder's prompt states are the prompt-only
states (`h_x` of the separate path's extra pass) and its response states see the prompt and the response.

States read per tree t, with P_t the prompt tokens and Y_tk the tokens of response k:

* `h_x`:  causal — the state at the prompt's last token; encoder — the `pooling` of the prompt tokens
  (mean: Σ_{i∈P_t} h_i / |P_t|; last: the last prompt token);
* `h_xy`: `last` — the state at response k's last token; `mean` — (Σ_{P_t} h_i + Σ_{Y_tk} h_i) / (|P_t| + |Y_tk|);
  `cls` — the tree's first token (causal backbones only: on an encoder it does not see the response).

This module imports torch and transformers only (it is copied beside checkpoints with `modeling.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# attention implementations that add a custom 4D mask to the scores (transformers 5: `sdpa_attention_forward`
# and `eager_attention_forward`); flash-attention takes no mask beyond padding, flex attention wants a BlockMask
TREE_MASK_ATTENTION = ("sdpa", "eager")


@dataclass
class PromptTree:
    """One prompt and its responses (token ids), laid out as `[prompt | y_1 | ... | y_N]`."""

    prompt_ids: list[int]
    responses: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(r) for r in self.responses)


@dataclass
class PackedTrees:
    """Prompt trees packed into rows: `input_ids`, `position_ids`, `block_ids` (tree index in input order, -1
    padding) and `part_ids` (0 prompt, k response k, -1 padding), each [R, L]."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    block_ids: torch.Tensor
    part_ids: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int((self.block_ids >= 0).sum())


def _first_fit_decreasing(sizes: Sequence[int], capacity: int) -> tuple[list[list[int]], list[int]]:
    rows: list[list[int]] = []
    used: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        slot = next((r for r, filled in enumerate(used) if filled + sizes[index] <= capacity), None)
        if slot is None:
            rows.append([])
            used.append(0)
            slot = len(rows) - 1
        rows[slot].append(index)
        used[slot] += sizes[index]
    return rows, used


def pack_trees(
    trees: Sequence[PromptTree],
    pad_token_id: int,
    row_length: int | None = None,
    attention_scale: float = 2304.0,
) -> PackedTrees:
    """Pack trees into rows by first-fit decreasing; the rows are right-padded to the longest row.

    With `row_length`, rows hold at most `max(row_length, longest tree)` tokens. Without, the row width W is
    chosen among multiples of the longest tree to minimize the step's cost R·W·(1 + W / attention_scale):
    R·W processed positions, each paying its matmuls (∝ 6H² per layer for hidden size H) plus dense masked
    attention over the row (∝ W·H), so `attention_scale` ≈ 6H. Fewer, longer rows waste less padding but pay
    quadratic attention."""
    if not trees:
        raise ValueError("pack_trees: no trees to pack")
    sizes = [len(tree) for tree in trees]
    longest, total = max(sizes), sum(sizes)
    if row_length is not None:
        rows, used = _first_fit_decreasing(sizes, max(row_length, longest))
    else:
        best = None
        for factor in (1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0):
            rows, used = _first_fit_decreasing(sizes, int(longest * factor))
            width = max(used)
            cost = len(rows) * width * (1.0 + width / attention_scale)
            if best is None or cost < best[0]:
                best = (cost, rows, used)
            if int(longest * factor) >= total:
                break
        _, rows, used = best
    width = max(used)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    block_ids = torch.full(shape, -1, dtype=torch.long)
    part_ids = torch.full(shape, -1, dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            tree = trees[index]
            parts = [tree.prompt_ids, *tree.responses]
            prompt_length = len(tree.prompt_ids)
            for part, ids in enumerate(parts):
                end = start + len(ids)
                input_ids[row, start:end] = torch.tensor(ids, dtype=torch.long)
                offset = 0 if part == 0 else prompt_length
                position_ids[row, start:end] = torch.arange(offset, offset + len(ids))
                block_ids[row, start:end] = index
                part_ids[row, start:end] = part
                start = end
        position_ids[row, start:] = torch.arange(width - start)  # padding: any in-range position
    return PackedTrees(input_ids, position_ids, block_ids, part_ids)


def tree_layout_problem(config, backbone_config, takes_position_ids: bool) -> str | None:
    """Why the shared-prompt layout cannot run on this model (None: it can)."""
    implementation = getattr(backbone_config, "_attn_implementation", None) or "eager"
    if implementation not in TREE_MASK_ATTENTION:
        return f"attention implementation {implementation!r} takes no custom 4D mask (sdpa and eager do)"
    if not takes_position_ids:
        return "the backbone takes no position_ids"
    if not config.is_causal and config.pooling == "cls":
        return (
            "cls pooling on an encoder reads a prompt token, which in this layout does not see the response"
        )
    return None


def tree_attention_mask(block_ids: Tensor, part_ids: Tensor, causal: bool, dtype: torch.dtype) -> Tensor:
    """The additive 4D mask [R, 1, L, L] of the rule above (0 where attended, the dtype's minimum elsewhere)."""
    same_tree = (block_ids.unsqueeze(2) == block_ids.unsqueeze(1)) & (block_ids >= 0).unsqueeze(2)
    key_part = part_ids.unsqueeze(1)
    allowed = same_tree & ((key_part == 0) | (key_part == part_ids.unsqueeze(2)))
    length = block_ids.shape[1]
    if causal:
        allowed &= torch.ones(length, length, dtype=torch.bool, device=block_ids.device).tril()
    allowed |= torch.eye(length, dtype=torch.bool, device=block_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=block_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _last_index(selected: Tensor, group: Tensor, groups: int) -> Tensor:
    """Per group, the largest flat position among `selected` positions of that group (-1 if none)."""
    positions = torch.arange(selected.numel(), device=selected.device)
    out = torch.full((groups,), -1, dtype=torch.long, device=selected.device)
    return out.scatter_reduce_(0, group[selected], positions[selected], reduce="amax")


def _group_sum(hidden: Tensor, selected: Tensor, group: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Per group, the sum of `hidden` rows among `selected` positions and their count."""
    sums = hidden.new_zeros(groups, hidden.shape[-1]).index_add(0, group[selected], hidden[selected])
    counts = hidden.new_zeros(groups).index_add(0, group[selected], hidden.new_ones(int(selected.sum())))
    return sums, counts


def encode_trees(
    model: Any, input_ids: Tensor, position_ids: Tensor, block_ids: Tensor, part_ids: Tensor
) -> tuple[Tensor, Tensor]:
    """Prompt states [T, H] and response states [T, N, H] of the T trees in packed rows (N: most responses of a
    tree; a missing response's state is zeros). `model` is a `VRMForSequenceClassification`."""
    config = model.config
    dtype = model.backbone.get_input_embeddings().weight.dtype
    mask = tree_attention_mask(block_ids, part_ids, bool(config.is_causal), dtype)
    hidden = model.backbone(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids
    ).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    block, part = block_ids.reshape(-1), part_ids.reshape(-1)
    trees, responses = int(block.max()) + 1, int(part.max())
    is_prompt = part == 0
    in_response = part > 0
    response_group = (block * responses + part - 1).clamp_min(0)
    prompt_end = _last_index(is_prompt, block, trees)
    response_end = _last_index(in_response, response_group, trees * responses)
    # an empty response is read where its sequence ends: at the prompt's last token
    response_end = torch.where(response_end >= 0, response_end, prompt_end.repeat_interleave(responses))
    if config.pooling == "mean":
        prompt_sum, prompt_count = _group_sum(flat, is_prompt, block, trees)
        response_sum, response_count = _group_sum(flat, in_response, response_group, trees * responses)
        total = response_sum + prompt_sum.repeat_interleave(responses, dim=0)
        count = response_count + prompt_count.repeat_interleave(responses)
        response_states = total / count.clamp_min(1.0).unsqueeze(-1)
    elif config.pooling == "cls":
        if not config.is_causal:
            raise ValueError(
                "the shared-prompt layout cannot read cls pooling on an encoder: use mean or last"
            )
        first = torch.full((trees,), flat.shape[0], dtype=torch.long, device=flat.device)
        positions = torch.arange(flat.shape[0], device=flat.device)
        first.scatter_reduce_(0, block[is_prompt], positions[is_prompt], reduce="amin")
        response_states = flat[first].repeat_interleave(responses, dim=0)
    else:
        response_states = flat[response_end]
    if not config.is_causal and config.pooling == "mean":
        prompt_sum, prompt_count = _group_sum(flat, is_prompt, block, trees)
        prompt_states = prompt_sum / prompt_count.clamp_min(1.0).unsqueeze(-1)
    else:
        prompt_states = flat[prompt_end]
    if not config.prompt_state_gradient:
        prompt_states = prompt_states.detach()
    return prompt_states, response_states.reshape(trees, responses, -1)


def encode_tree_pairs(
    model: Any, input_ids: Tensor, position_ids: Tensor, block_ids: Tensor, part_ids: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Prompt, chosen and rejected states [B, H] of B packed pair trees `[prompt | chosen | rejected]`."""
    prompt_states, response_states = encode_trees(model, input_ids, position_ids, block_ids, part_ids)
    if response_states.shape[1] != 2:
        raise ValueError(f"pair trees have 2 responses (chosen, rejected), got {response_states.shape[1]}")
    return prompt_states, response_states[:, 0], response_states[:, 1]


def score_layout(model: Any) -> str:
    """How a model's sequences are scored: `shared_prompt` where it equals the separate path (causal backbones
    whose attention takes a 4D mask) or where the model was trained on it (the checkpoint's `pair_layout`),
    else `separate`. A deep ensemble (`vrm.scoring.deep_ensemble`, no backbone of its own) scores `separate`."""
    if not hasattr(model, "backbone"):
        return "separate"
    trained = (getattr(model.config, "tokenization", None) or {}).get("pair_layout")
    if trained == "separate" and not model.config.is_causal:
        return "separate"
    if not model.config.is_causal and trained != "shared_prompt":
        return "separate"
    problem = tree_layout_problem(model.config, model.backbone.config, model._backbone_takes_position_ids)
    if problem is not None:
        if trained == "shared_prompt" and not model.config.is_causal:
            raise ValueError(
                f"this model was trained with the shared-prompt layout, which cannot run: {problem}"
            )
        return "separate"
    return "shared_prompt"


def shared_prompt_groups(
    sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], row_tokens: int
) -> Iterator[tuple[list[int], list[int], list[list[int]]]]:
    """Group sequences by their prompt tokens: (indices, prompt ids, responses), a group split so that each tree
    holds at most `max(row_tokens, its longest sequence)` tokens."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (ids, length) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        groups.setdefault(tuple(ids[:length]), []).append(index)
    for prompt, members in groups.items():
        chunk: list[int] = []
        size = len(prompt)
        for index in members:
            response = len(sequences[index]) - len(prompt)
            if chunk and size + response > row_tokens:
                yield chunk, list(prompt), [list(sequences[i][len(prompt) :]) for i in chunk]
                chunk, size = [], len(prompt)
            chunk.append(index)
            size += response
        yield chunk, list(prompt), [list(sequences[i][len(prompt) :]) for i in chunk]


def has_shared_prompts(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> bool:
    """Whether two sequences start with the same prompt tokens."""
    prompts = [tuple(ids[:length]) for ids, length in zip(sequences, prompt_lengths, strict=True)]
    return len(set(prompts)) < len(prompts)


def score_prompt_trees(
    model: Any,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int,
) -> Iterator[tuple[list[int], Any]]:
    """Score sequences with each shared prompt computed once: yields (indices into `sequences`,
    `RewardModelOutput` of those sequences). A forward packs trees of about `batch_size` sequences' tokens."""
    device = next(model.parameters()).device
    longest = max(len(s) for s in sequences)
    budget = batch_size * longest
    scale = 6.0 * model.config.text_config.hidden_size
    # a tree's dense attention costs ∝ W²: trees stop growing where it passes half their matmuls' cost
    row_tokens = max(2 * longest, int(scale / 2))
    groups = list(shared_prompt_groups(sequences, prompt_lengths, row_tokens))
    groups.sort(key=lambda g: len(g[1]) + sum(len(r) for r in g[2]))
    batch: list[tuple[list[int], list[int], list[list[int]]]] = []
    size = 0

    def run(batch):
        trees = [PromptTree(prompt, responses) for _, prompt, responses in batch]
        packed = pack_trees(trees, pad_token_id, attention_scale=scale)
        tensors = [
            t.to(device) for t in (packed.input_ids, packed.position_ids, packed.block_ids, packed.part_ids)
        ]
        prompt_states, response_states = encode_trees(model, *tensors)
        tree_index = torch.tensor([t for t, tree in enumerate(trees) for _ in tree.responses], device=device)
        part_index = torch.tensor([k for tree in trees for k in range(len(tree.responses))], device=device)
        result = model._score_states(prompt_states[tree_index], response_states[tree_index, part_index])
        return [i for indices, _, _ in batch for i in indices], result

    for group in groups:
        tokens = len(group[1]) + sum(len(r) for r in group[2])
        if batch and size + tokens > budget:
            yield run(batch)
            batch, size = [], 0
        batch.append(group)
        size += tokens
    if batch:
        yield run(batch)


def encode_rows_as_trees(
    model: Any, input_ids: Tensor, attention_mask: Tensor, prompt_end: Tensor
) -> tuple[Tensor, Tensor]:
    """Prompt and response states [B, H] of padded rows `x ⊕ y`, each row read as the tree `[x | y]` (an encoder
    trained with the shared-prompt layout is scored in it, whatever the entry point)."""
    first = attention_mask.long().argmax(dim=1)
    trees = []
    for row in range(input_ids.shape[0]):
        ids = input_ids[row][attention_mask[row].bool()].tolist()
        cut = int(prompt_end[row] - first[row]) + 1
        trees.append(PromptTree(ids[:cut], [ids[cut:]]))
    packed = pack_trees(trees, 0, attention_scale=6.0 * model.config.text_config.hidden_size)
    tensors = [
        t.to(input_ids.device)
        for t in (packed.input_ids, packed.position_ids, packed.block_ids, packed.part_ids)
    ]
    prompt_states, response_states = encode_trees(model, *tensors)
    return prompt_states, response_states[:, 0]
