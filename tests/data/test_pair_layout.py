"""Pair layouts (`vrm.data.pair_layout`): token accounting and the choice of layout for a model."""

from __future__ import annotations

import pytest

from vrm.data.pair_layout import (
    LayoutTokens,
    SharedPromptCollator,
    layout_collator,
    pair_tree,
    resolve_pair_layout,
    separate_layout_tokens,
)


def test_layout_tokens_count_the_shared_prompt_once(tokenized_pairs):
    tokenizer, pairs = tokenized_pairs("llama", True)
    shared = LayoutTokens.metrics(SharedPromptCollator(tokenizer.pad_token_id)(pairs)["layout_tokens"])
    separate = LayoutTokens.metrics(separate_layout_tokens(pairs, prompt_pass=False).as_tensor())
    unique = sum(len(pair_tree(p)) for p in pairs)
    assert shared["tokens_unique"] == separate["tokens_unique"] == unique
    assert shared["tokens_processed"] < separate["tokens_processed"]
    assert separate["processed_over_unique_tokens"] > 1.3  # the prompt twice, plus padding
    assert 0.0 <= shared["padding_share"] < separate["padding_share"]


def test_resolve_pair_layout_defaults_and_fallbacks(capsys, layout_model):
    causal = layout_model("llama", "bt")
    encoder = layout_model("bert", "vrm")
    args = lambda m: (m.config, m.backbone.config, m._backbone_takes_position_ids)  # noqa: E731
    assert resolve_pair_layout("auto", *args(causal))[0] == "shared_prompt"
    assert resolve_pair_layout("auto", *args(encoder))[0] == "separate"
    assert resolve_pair_layout("shared_prompt", *args(encoder))[0] == "shared_prompt"
    assert resolve_pair_layout("separate", *args(causal))[0] == "separate"
    flash = layout_model("llama", "bt")
    flash.backbone.config._attn_implementation = "flash_attention_2"
    name, reason = resolve_pair_layout("shared_prompt", *args(flash))
    assert name == "separate" and "flash_attention_2" in reason
    cls_encoder = layout_model("bert", "vrm", pooling="cls")
    assert resolve_pair_layout("shared_prompt", *args(cls_encoder))[0] == "separate"
    with pytest.raises(ValueError, match="--pair_layout"):
        resolve_pair_layout("tree", *args(causal))
    assert layout_collator("auto", causal, 0, cached_states=True).name == "separate"
