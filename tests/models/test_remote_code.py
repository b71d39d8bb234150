"""Saved checkpoints carry their model code: they load with `trust_remote_code=True` where vrm is not installed."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PAIRS

from vrm.data.collate import pad_sequences
from vrm.scoring.pipeline import RewardPipeline


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer)


@pytest.mark.slow
def test_checkpoint_loads_with_remote_code_where_vrm_is_not_installed(tmp_path, pipeline, load_without_vrm):
    from vrm.data.collate import pad_sequences

    pipeline.fit_normalization([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    pipeline.save_pretrained(str(tmp_path))
    encoded = [pipeline.template.tokenize_single(p, c) for p, c, _ in PAIRS]
    ids, mask = pad_sequences([i for i, _ in encoded], pipeline.tokenizer.pad_token_id, side="left")
    with torch.no_grad():
        expected = pipeline.model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    loaded = load_without_vrm(tmp_path, ids, mask)
    assert loaded["module"].startswith("transformers_modules.")  # the copied code, not vrm
    assert loaded["rewards"] == pytest.approx(expected, abs=1e-5)


def inputs(model, tokenizer, pref):
    """The chosen then the rejected responses of the PAIRS, tokenized one by one and padded."""
    encoded = [pref.tokenize_single(p, r) for p, r, _ in PAIRS] + [
        pref.tokenize_single(p, r) for p, _, r in PAIRS
    ]
    return pad_sequences([ids for ids, _ in encoded], tokenizer.pad_token_id)


@pytest.mark.slow
def test_ensemble_checkpoint_loads_with_remote_code_where_vrm_is_not_installed(
    tmp_path, tiny_model, load_without_vrm
):
    model, tokenizer, pref = tiny_model("llama_chat", "vrm", ensemble_members=2)
    ids, mask = inputs(model, tokenizer, pref)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    loaded = load_without_vrm(tmp_path, ids, mask)
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["rewards"] == pytest.approx(expected, abs=1e-6)
