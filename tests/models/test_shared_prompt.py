"""Shared-prompt trees (`vrm.models.shared_prompt`): packing, the tree attention mask, and forwards that equal the
separate layout."""

from __future__ import annotations

import pytest
import torch

from vrm.data.collate import PreferenceCollator
from vrm.data.pair_layout import (
    SharedPromptCollator,
)
from vrm.models.shared_prompt import PromptTree, pack_trees, tree_attention_mask
from vrm.training.losses import preference_loss


def test_pack_trees_positions_parts_and_padding():
    trees = [PromptTree([1, 2, 3], [[4, 5], [6]]), PromptTree([7], [[8], [9, 10]]), PromptTree([12], [[13]])]
    packed = pack_trees(trees, pad_token_id=0)
    assert packed.input_ids.shape[1] == 6  # the longest tree; the two short trees share a row
    assert packed.input_ids.shape[0] == 2
    row = (packed.block_ids == 0).any(1).nonzero().item()
    assert packed.position_ids[row, :6].tolist() == [0, 1, 2, 3, 4, 3]  # rejected restarts at the prompt end
    assert packed.part_ids[row, :6].tolist() == [0, 0, 0, 1, 1, 2]
    assert packed.real_tokens == 6 + 4 + 2
    assert sorted(packed.input_ids[packed.block_ids >= 0].tolist()) == [*range(1, 11), 12, 13]


def test_tree_mask_lets_a_response_see_its_prompt_and_itself_only():
    packed = pack_trees([PromptTree([1, 2], [[3], [4]])], 0)
    causal = tree_attention_mask(packed.block_ids, packed.part_ids, True, torch.float32)[0, 0] == 0
    # rows: p0 p1 c r — rejected sees the prompt and itself, not chosen
    assert causal.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, False, True],
    ]
    encoder = tree_attention_mask(packed.block_ids, packed.part_ids, False, torch.float32)[0, 0] == 0
    assert encoder[0].tolist() == [True, True, False, False]  # the prompt sees the prompt only
    assert encoder[2].tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    ("head", "attn"), [("bt", "sdpa"), ("ib", "sdpa"), ("moe", "sdpa"), ("vrm", "sdpa"), ("vrm", "eager")]
)
def test_causal_shared_layout_equals_separate_rewards_and_gradients(
    head, attn, layout_model, tokenized_pairs
):
    tokenizer, pairs = tokenized_pairs("llama", True)
    separate_batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    shared_batch = SharedPromptCollator(tokenizer.pad_token_id, row_length=128)(pairs)
    assert shared_batch["packed_input_ids"].shape[0] < len(pairs)  # pairs were packed several per row
    results = []
    for batch in (separate_batch, shared_batch):
        model = layout_model("llama", head, attn)
        model.train()
        inputs = {k: v for k, v in batch.items() if k != "layout_tokens"}
        torch.manual_seed(1)
        samples = model(**inputs)
        loss = preference_loss(samples, beta_w=0.1, beta_z=0.1).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((samples, grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.reward_chosen, b.reward_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.reward_rejected, b.reward_rejected, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_encoder_shared_layout_prompt_state_is_the_prompt_only_pass(layout_model, tokenized_pairs):
    tokenizer, pairs = tokenized_pairs("bert", False)
    model = layout_model("bert", "vrm").eval()
    from vrm.models.shared_prompt import encode_tree_pairs

    batch = SharedPromptCollator(tokenizer.pad_token_id)(pairs)
    packed = [
        batch[k] for k in ("packed_input_ids", "packed_position_ids", "packed_block_ids", "packed_part_ids")
    ]
    with torch.no_grad():
        prompt, chosen, rejected = encode_tree_pairs(model, *packed)
        separate = PreferenceCollator(tokenizer.pad_token_id)(pairs)
        sep_prompt, sep_chosen, _ = model.encode_pairs(
            separate["chosen_input_ids"],
            separate["chosen_attention_mask"],
            separate["rejected_input_ids"],
            separate["rejected_attention_mask"],
            separate["prompt_lengths"],
        )
    torch.testing.assert_close(prompt, sep_prompt, atol=1e-5, rtol=0)  # h_x: exact, with no extra pass
    assert not torch.allclose(chosen, sep_chosen, atol=1e-3)  # h_xy: a different model, as documented
    assert not torch.allclose(chosen, rejected)
