"""Scoring in the shared-prompt layout: several responses to one prompt in one tree equal scoring them one by
one, and a model trained in that layout is scored in it."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PAIRS, bert_config, llama_config, make_bert_tokenizer, make_llama_tokenizer

from vrm.data.tokenization import PreferenceTokenizer
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.scores import score_sequences


def _model(kind: str, head: str, attn: str = "sdpa", **kwargs) -> VRMForSequenceClassification:
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    torch.manual_seed(0)  # after the tokenizer: the weights do not depend on how it was built
    config = llama_config(len(tokenizer)) if kind == "llama" else bert_config(len(tokenizer))
    config._attn_implementation = attn
    model = VRMForSequenceClassification.from_backbone_config(config, head_type=head, **kwargs)
    return model.float()


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
        model.config.tokenization = {"pair_layout": "shared_prompt"}
    torch.testing.assert_close(direct.logits[0, 0], scores.reward[0], atol=1e-5, rtol=0)
    # the separate layout is another model: its rewards differ beyond float noise (on some pair; a random
    # tiny model's difference on any one pair can be small)
    shared_again = score_sequences(model, sequences, lengths, tokenizer.pad_token_id)
    model.config.tokenization = {"pair_layout": "separate"}
    separate_all = score_sequences(model, sequences, lengths, tokenizer.pad_token_id).reward
    torch.testing.assert_close(shared_again.reward, scores.reward, atol=1e-6, rtol=0)
    torch.testing.assert_close(separate.logits[0, 0], separate_all[0], atol=1e-5, rtol=0)
    assert (separate_all - scores.reward).abs().max() > 1e-5
