"""Shared-prompt layout, packing and shared-prompt scoring (vrm.data.pair_layout, vrm.models.shared_prompt)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import PAIRS, bert_config, llama_config, make_bert_tokenizer, make_llama_tokenizer, write_pairs

from vrm.data.collate import PreferenceCollator
from vrm.data.pair_layout import (
    LayoutTokens,
    SharedPromptCollator,
    layout_collator,
    pair_tree,
    resolve_pair_layout,
    separate_layout_tokens,
)
from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.modeling import VRMForSequenceClassification
from vrm.models.shared_prompt import PromptTree, pack_trees, tree_attention_mask
from vrm.scoring.scores import score_sequences
from vrm.training.losses import preference_loss


def _model(kind: str, head: str, attn: str = "sdpa", **kwargs) -> VRMForSequenceClassification:
    torch.manual_seed(0)
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    config = llama_config(len(tokenizer)) if kind == "llama" else bert_config(len(tokenizer))
    config._attn_implementation = attn
    model = VRMForSequenceClassification.from_backbone_config(config, head_type=head, **kwargs)
    return model.float()


def _pairs(kind: str):
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    from vrm.data.rows import load_preferences

    return tokenizer, load_preferences(write_pairs(f"/tmp/_layout_pairs_{os.getpid()}.jsonl"))


def _tokenized(kind: str, causal: bool):
    tokenizer, examples = _pairs(kind)
    template = PreferenceTokenizer(tokenizer, max_length=64, is_causal=causal)
    pairs, _ = template.tokenize_pairs(examples)
    return tokenizer, pairs


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


def test_tree_mask_rule():
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
def test_causal_shared_layout_equals_separate_rewards_and_gradients(head, attn):
    tokenizer, pairs = _tokenized("llama", causal=True)
    separate_batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    shared_batch = SharedPromptCollator(tokenizer.pad_token_id, row_length=128)(pairs)
    assert shared_batch["packed_input_ids"].shape[0] < len(pairs)  # pairs were packed several per row
    results = []
    for batch in (separate_batch, shared_batch):
        model = _model("llama", head, attn)
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


def test_encoder_shared_layout_prompt_state_is_the_prompt_only_pass():
    tokenizer, pairs = _tokenized("bert", causal=False)
    model = _model("bert", "vrm").eval()
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


def test_layout_tokens_count_the_shared_prompt_once():
    tokenizer, pairs = _tokenized("llama", causal=True)
    shared = LayoutTokens.metrics(SharedPromptCollator(tokenizer.pad_token_id)(pairs)["layout_tokens"])
    separate = LayoutTokens.metrics(separate_layout_tokens(pairs, prompt_pass=False).as_tensor())
    unique = sum(len(pair_tree(p)) for p in pairs)
    assert shared["tokens_unique"] == separate["tokens_unique"] == unique
    assert shared["tokens_processed"] < separate["tokens_processed"]
    assert separate["processed_over_unique_tokens"] > 1.3  # the prompt twice, plus padding
    assert 0.0 <= shared["padding_share"] < separate["padding_share"]


def test_resolve_pair_layout_defaults_and_fallbacks(capsys):
    causal = _model("llama", "bt")
    encoder = _model("bert", "vrm")
    args = lambda m: (m.config, m.backbone.config, m._backbone_takes_position_ids)  # noqa: E731
    assert resolve_pair_layout("auto", *args(causal))[0] == "shared_prompt"
    assert resolve_pair_layout("auto", *args(encoder))[0] == "separate"
    assert resolve_pair_layout("shared_prompt", *args(encoder))[0] == "shared_prompt"
    assert resolve_pair_layout("separate", *args(causal))[0] == "separate"
    flash = _model("llama", "bt")
    flash.backbone.config._attn_implementation = "flash_attention_2"
    name, reason = resolve_pair_layout("shared_prompt", *args(flash))
    assert name == "separate" and "flash_attention_2" in reason
    cls_encoder = _model("bert", "vrm", pooling="cls")
    assert resolve_pair_layout("shared_prompt", *args(cls_encoder))[0] == "separate"
    with pytest.raises(ValueError, match="--pair_layout"):
        resolve_pair_layout("tree", *args(causal))
    assert layout_collator("auto", causal, 0, embedding_cache="/tmp/cache").name == "separate"


@pytest.mark.parametrize("head", ["bt", "vrm"])
def test_causal_shared_prompt_scoring_equals_one_by_one(head):
    tokenizer = make_llama_tokenizer()
    template = PreferenceTokenizer(tokenizer, max_length=64)
    responses = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]
    sequences, lengths = [], []
    for prompt in ("How do I fix a slow query?", "Tell me a joke."):
        for response in responses:
            ids, length = template.tokenize_single(prompt, response)
            sequences.append(ids)
            lengths.append(length)
    model = _model("llama", head).eval()
    shared = score_sequences(model, sequences, lengths, tokenizer.pad_token_id, batch_size=8)
    one_by_one = [
        score_sequences(model, [s], [n], tokenizer.pad_token_id)
        for s, n in zip(sequences, lengths, strict=True)
    ]
    torch.testing.assert_close(shared.reward, torch.cat([s.reward for s in one_by_one]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        shared.objective_weights, torch.cat([s.objective_weights for s in one_by_one]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        shared.reward_std, torch.cat([s.reward_std for s in one_by_one]), atol=1e-5, rtol=0
    )


def test_encoder_trained_shared_is_scored_in_its_layout():
    tokenizer = make_bert_tokenizer()
    template = PreferenceTokenizer(tokenizer, max_length=64, is_causal=False)
    model = _model("bert", "vrm").eval()
    model.config.tokenization = {"pair_layout": "shared_prompt"}
    encoded = [template.tokenize_single(p, c) for p, c, _ in PAIRS]
    sequences, lengths = [ids for ids, _ in encoded], [n for _, n in encoded]
    scores = score_sequences(model, sequences, lengths, tokenizer.pad_token_id)
    ids = torch.tensor([sequences[0]])
    with torch.no_grad():  # the plain forward reads the same layout
        direct = model(input_ids=ids, prompt_lengths=torch.tensor([lengths[0]]))
        model.config.tokenization = {"pair_layout": "separate"}
        separate = model(input_ids=ids, prompt_lengths=torch.tensor([lengths[0]]))
    torch.testing.assert_close(direct.logits[0, 0], scores.reward[0], atol=1e-5, rtol=0)
    assert not torch.allclose(separate.logits[0, 0], scores.reward[0], atol=1e-4)


@pytest.mark.parametrize("layout", ["shared_prompt", "separate"])
def test_vrm_train_records_the_layout_and_logs_tokens(tmp_path, llama_backbone_dir, pairs_file, layout):
    from vrm.cli.main import main

    out = tmp_path / "run"
    main(
        [
            "train",
            "--model_name_or_path",
            llama_backbone_dir,
            "--dataset_name",
            pairs_file,
            "--head_type",
            "vrm",
            "--pair_layout",
            layout,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "3",
            "--logging_steps",
            "1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )
    with open(out / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["tokenization"]["pair_layout"] == layout
    with open(out / "trainer_state.json", encoding="utf-8") as handle:
        logged = [entry for entry in json.load(handle)["log_history"] if "padding_share" in entry]
    assert logged and all(entry["tokens_processed"] >= entry["tokens_unique"] > 0 for entry in logged)
