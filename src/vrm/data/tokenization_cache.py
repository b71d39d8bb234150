"""Tokenizing the training pairs through `datasets.Dataset.map`: batched, in `num_proc` processes, cached on disk.

`tokenize_pairs_cached` gives exactly what `PreferenceTokenizer.tokenize_pairs` gives (the same pairs, the same
`TruncationStats`): every row goes through `tokenize_pairs([example])`, and the map stores, per row, the pair
(its token ids as Arrow integer lists, its other fields as JSON; empty when the pair was dropped) and what
truncation did to it; the counts are the column sums.

The result is an Arrow file named by a key that hashes everything the token ids depend on: the rows, the
tokenizer's files, the tokenization settings and the source of `vrm.data.tokenization`. A second run on the same
data and tokenizer reads the file instead of tokenizing (`datasets` skips the function when the file exists,
whatever `num_proc` wrote it). Under several processes, `vrm train` runs it inside
`TrainingArguments.main_process_first(local=True)`: the first process of each machine tokenizes, the others
then read its file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import vrm.data.tokenization as tokenization
from vrm.data.examples import PreferenceExample
from vrm.data.tokenization import PreferenceTokenizer, TokenizedPair, TruncationStats

CACHE_FORMAT = "vrm-tokenized-pairs-2"  # bump when the stored columns change
COUNTED = tuple(f.name for f in dataclasses.fields(TruncationStats) if f.name not in ("pairs", "kept"))
ID_FIELDS = tuple(f.name for f in dataclasses.fields(TokenizedPair) if f.name.endswith("_ids"))  # Arrow lists


def _fields(instance) -> dict[str, Any]:
    """A dataclass's fields, shallow (`dataclasses.asdict` would copy every token id, one call each)."""
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def default_cache_dir() -> str:
    """`datasets`' cache directory (`HF_DATASETS_CACHE`), subfolder `vrm_tokenized`."""
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "vrm_tokenized")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer as `save_pretrained` writes it (vocabulary, merges, special tokens, template)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        for name in sorted(os.listdir(directory)):
            digest.update(name.encode())
            with open(os.path.join(directory, name), "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def cache_key(pref_tokenizer: PreferenceTokenizer, rows: Sequence[str]) -> str:
    """What the token ids depend on: the rows (as JSON), the tokenizer, the settings and the tokenization code."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    with open(tokenization.__file__, "rb") as handle:
        digest.update(handle.read())
    settings = {**pref_tokenizer.settings(), "prefix_ids": pref_tokenizer.prefix_ids}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(tokenizer_fingerprint(pref_tokenizer.tokenizer).encode())
    for row in rows:
        digest.update(len(row).to_bytes(8, "little"))
        digest.update(row.encode())
    return digest.hexdigest()[:32]


class _TokenizeRows:
    """The function `Dataset.map` runs on a batch of rows (a class, so it pickles to `num_proc` workers)."""

    def __init__(self, pref_tokenizer: PreferenceTokenizer):
        self.pref_tokenizer = pref_tokenizer

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in (*ID_FIELDS, "pair", *COUNTED)}
        for row in batch["example"]:
            example = PreferenceExample(**json.loads(row))
            pairs, stats = self.pref_tokenizer.tokenize_pairs([example])
            fields = _fields(pairs[0]) if pairs else {}
            for name in ID_FIELDS:
                out[name].append(fields.pop(name, []))
            out["pair"].append(json.dumps(fields) if pairs else "")
            for name in COUNTED:
                out[name].append(getattr(stats, name))
        return out


def _features():
    import datasets

    return datasets.Features(
        {
            **{name: datasets.List(datasets.Value("int32")) for name in ID_FIELDS},
            "pair": datasets.Value("string"),
            **{name: datasets.Value("int64") for name in COUNTED},
        }
    )


def tokenize_pairs_cached(
    pref_tokenizer: PreferenceTokenizer,
    examples: Sequence[PreferenceExample],
    *,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    desc: str = "Tokenizing pairs",
) -> tuple[list[TokenizedPair], TruncationStats, str | None]:
    """`pref_tokenizer.tokenize_pairs(examples)` through `datasets.map`, read back from `cache_dir` when it was
    done before: (pairs, stats, path of the cache file or None when `cache_dir` is "none").

    `num_proc` processes tokenize shards of the rows (None or 1: this process); `datasets` shows its progress
    bar (`desc`)."""
    import datasets

    rows = [json.dumps(_fields(example)) for example in examples]
    dataset = datasets.Dataset.from_dict({"example": rows})
    key, path = f"pairs-{cache_key(pref_tokenizer, rows)}", None
    if (cache_dir or "").lower() != "none":
        directory = cache_dir or default_cache_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{key}.arrow")
    tokenized = dataset.map(
        _TokenizeRows(pref_tokenizer),
        batched=True,
        batch_size=256,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        remove_columns=["example"],
        features=_features(),
        cache_file_name=path,
        keep_in_memory=path is None,
        new_fingerprint=key,
        desc=desc,
    )
    table = tokenized.data  # whole columns from Arrow (`tokenized[name]` would format row by row)
    stats = TruncationStats(pairs=len(examples))
    for name in COUNTED:
        setattr(stats, name, int(sum(table.column(name).to_pylist())))
    ids = {name: table.column(name).to_pylist() for name in ID_FIELDS}
    pairs = [
        TokenizedPair(**json.loads(pair), **{name: ids[name][row] for name in ID_FIELDS})
        for row, pair in enumerate(table.column("pair").to_pylist())
        if pair
    ]
    stats.kept = len(pairs)
    return pairs, stats, path
