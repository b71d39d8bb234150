"""Preference tokenization and batches (`vrm.data.tokenization`, `vrm.data.collate`): formats, truncation,
input formats, and what reaches the batch."""

import math

import pytest
import torch
from preference_formats import FORMATS
from tiny_models import make_bert_tokenizer, make_llama_tokenizer

from vrm.data.collate import PreferenceCollator
from vrm.data.examples import PreferenceExample
from vrm.data.rows import parse_row
from vrm.data.tokenization import PreferenceTokenizer


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_the_same_batch_with_a_chat_template(name):
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=128)
    reference = tokenizer.tokenize_pairs([parse_row(FORMATS["standard_explicit"], "ref")])[0]
    pairs, _ = tokenizer.tokenize_pairs([parse_row(FORMATS[name], name)])
    collate = PreferenceCollator(pad_token_id=0)
    expected, got = collate(reference), collate(pairs)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_margin_and_targets_reach_the_batch():
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=64)
    examples = [
        PreferenceExample(
            "p one", "yes", "no", margin=1.5, attribute_targets=[1.0, math.nan], objective_label=1
        ),
        PreferenceExample(
            "p two", "good", "bad", margin=None, attribute_targets=[0.0, 1.0], objective_label=-1
        ),
    ]
    batch = PreferenceCollator(pad_token_id=0)(tokenizer.tokenize_pairs(examples)[0])
    assert batch["margin"].tolist() == [1.5, 0.0]
    assert batch["objective_labels"].tolist() == [1, -1]
    assert batch["attribute_targets"][0, 0] == 1 and torch.isnan(batch["attribute_targets"][0, 1])
    assert batch["chosen_attention_mask"].sum(1).tolist() == [
        len(p.chosen_input_ids) for p in tokenizer.tokenize_pairs(examples)[0]
    ]


@pytest.mark.parametrize("make", [make_llama_tokenizer, make_bert_tokenizer])
def test_long_prompts_are_cut_from_the_left_and_counted(make):
    base = make()
    tokenizer = PreferenceTokenizer(base, max_length=40, is_causal=make is make_llama_tokenizer)
    long_prompt = " ".join(["question"] * 60) + " final words here"
    examples = [
        PreferenceExample(long_prompt, "Paris is right.", "Lyon."),
        PreferenceExample("short?", "yes", "no"),
    ]
    pairs, stats = tokenizer.tokenize_pairs(examples)
    assert (stats.pairs, stats.kept, stats.prompt_truncated, stats.response_truncated) == (2, 2, 1, 0)
    long = pairs[0]
    assert max(len(long.chosen_input_ids), len(long.rejected_input_ids)) <= 40
    marker = tokenizer.response_marker_ids
    prompt_ids = long.chosen_input_ids[: long.prompt_length]
    assert prompt_ids[-len(marker) :] == marker  # the response marker survives truncation
    assert prompt_ids[: len(tokenizer.prefix_ids)] == tokenizer.prefix_ids  # and the leading special token
    full_prompt_ids, _ = tokenizer.encode_parts(long_prompt, "x")
    kept = prompt_ids[len(tokenizer.prefix_ids) :]
    assert len(prompt_ids) < len(full_prompt_ids) and full_prompt_ids[-len(kept) :] == kept  # the end is kept
    assert long.chosen_input_ids != long.rejected_input_ids


def test_long_responses_are_cut_and_identical_results_dropped():
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=30, max_prompt_length=10)
    same_start = " ".join(["answer"] * 40)
    examples = [
        PreferenceExample("q?", same_start + " yes", same_start + " no"),  # identical after truncation
        PreferenceExample("q?", "The answer is " + same_start, "Nope " + same_start),
    ]
    pairs, stats = tokenizer.tokenize_pairs(examples)
    assert stats.response_truncated == 2 and stats.dropped_identical == 1 and stats.kept == 1
    assert all(len(ids) <= 30 for ids in (pairs[0].chosen_input_ids, pairs[0].rejected_input_ids))
    assert "1 with identical" in stats.summary()


def test_drop_policy_counts_dropped_pairs():
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=20, truncation="drop")
    examples = [PreferenceExample(" ".join(["word"] * 50), "a", "b"), PreferenceExample("q?", "a", "b")]
    pairs, stats = tokenizer.tokenize_pairs(examples)
    assert stats.dropped_too_long == 1 and stats.kept == 1 and len(pairs) == 1


def test_input_format_auto_detection():
    assert PreferenceTokenizer(make_llama_tokenizer()).input_format == "chat"
    assert PreferenceTokenizer(make_llama_tokenizer(chat=False)).input_format == "plain"
    assert PreferenceTokenizer(make_bert_tokenizer(), is_causal=False).input_format == "pair"
    pair = PreferenceTokenizer(make_bert_tokenizer(), is_causal=False)
    ids, prompt_length = pair.tokenize_single("hello", "world")
    bert = make_bert_tokenizer()
    assert (
        ids[0] == bert.cls_token_id
        and ids[prompt_length - 1] == bert.sep_token_id
        and ids[-1] == bert.sep_token_id
    )
