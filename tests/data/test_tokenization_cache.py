"""Training pairs tokenized through `datasets.map`: the same pairs and counts as the direct
path, a cache hit on a second run, `num_proc` workers."""

import math
import os

import pytest
from tiny_models import PAIRS, make_bert_tokenizer, make_llama_tokenizer

from vrm.data.examples import PreferenceExample
from vrm.data.tokenization import PreferenceTokenizer
from vrm.data.tokenization import PreferenceTokenizer as TokenizerClass
from vrm.data.tokenization_cache import tokenize_pairs_cached


def examples() -> list[PreferenceExample]:
    """The fixture pairs plus rows that exercise every counter: long prompts and responses, an identical pair,
    messages, margins, ratings with NaN, objective labels and subsets."""
    rows = [
        PreferenceExample(p, c, r, margin=0.5 * i, subset="a" if i % 2 else None, location=f"f:{i}")
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    rows.append(PreferenceExample("word " * 60, "Add an index.", "I do not know.", location="long prompt"))
    rows.append(PreferenceExample("Hi?", "answer " * 50, "no " * 40, location="long responses"))
    rows.append(PreferenceExample("Hi?", "same " * 50, "same " * 50 + "x", location="identical when cut"))
    rows.append(
        PreferenceExample(
            [{"role": "user", "content": "Is this safe?"}],
            [{"role": "assistant", "content": "Ask a professional."}],
            [{"role": "assistant", "content": "Just do it."}],
            attribute_targets=[1.0, math.nan],
            objective_label=0,
            ratings_chosen=[3.0, math.nan],
            ratings_rejected=[1.0, 2.0],
            rating_differences=[0.5, math.nan],
            location="messages",
        )
    )
    return rows


def same(a, b) -> bool:
    """Dataclasses equal field by field, NaN equal to NaN."""
    return repr(a) == repr(b)


@pytest.mark.parametrize(
    ("make", "truncation", "num_proc"),
    [
        (make_llama_tokenizer, "prompt_left", 1),
        (make_llama_tokenizer, "drop", 2),
        (make_bert_tokenizer, "prompt_left", 2),
    ],
)
def test_mapped_tokenization_gives_the_pairs_and_counts_of_the_direct_path(
    tmp_path, make, truncation, num_proc
):
    tokenizer = PreferenceTokenizer(
        make(), max_length=40, max_prompt_length=12, truncation=truncation, is_causal=False
    )
    direct_pairs, direct_stats = tokenizer.tokenize_pairs(examples())
    pairs, stats, path = tokenize_pairs_cached(
        tokenizer, examples(), cache_dir=str(tmp_path), num_proc=num_proc
    )
    assert same(pairs, direct_pairs) and stats == direct_stats
    assert (
        stats.prompt_truncated + stats.response_truncated + stats.dropped_too_long > 0
    )  # the cases are exercised
    assert stats.dropped_identical == (1 if truncation == "prompt_left" else 0)
    assert path is not None and path.startswith(str(tmp_path))


def test_second_run_reads_the_cache_without_tokenizing(tmp_path, monkeypatch):
    tokenizer = PreferenceTokenizer(make_llama_tokenizer(), max_length=40)
    first = tokenize_pairs_cached(tokenizer, examples(), cache_dir=str(tmp_path))
    assert os.path.exists(first[2])

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(TokenizerClass, "tokenize_pairs", refuse)
    second = tokenize_pairs_cached(
        PreferenceTokenizer(make_llama_tokenizer(), max_length=40), examples(), cache_dir=str(tmp_path)
    )
    assert second[2] == first[2] and same(second[0], first[0]) and second[1] == first[1]
    # other settings, other data or no cache: tokenized (and refused here)
    for kwargs, rows in (({"max_length": 48}, examples()), ({"max_length": 40}, examples()[:-1])):
        with pytest.raises(AssertionError, match="tokenized again"):
            tokenize_pairs_cached(
                PreferenceTokenizer(make_llama_tokenizer(), **kwargs), rows, cache_dir=str(tmp_path)
            )
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_pairs_cached(tokenizer, examples(), cache_dir="none")


def test_a_batch_with_every_pair_dropped_is_counted(tmp_path):
    tokenizer = PreferenceTokenizer(
        make_llama_tokenizer(), max_length=12, max_prompt_length=4, truncation="drop"
    )
    direct_pairs, direct_stats = tokenizer.tokenize_pairs(examples()[-4:])
    pairs, stats, _ = tokenize_pairs_cached(tokenizer, examples()[-4:], cache_dir=str(tmp_path))
    assert direct_pairs == pairs == [] and stats == direct_stats and stats.dropped_too_long == 4
