"""The training data of `VRMTrainer`: any accepted form of preference data -> `PreferenceExample`s -> token pairs.

`VRMTrainer` takes what a TRL user has: a `datasets.Dataset` (or any iterable of rows) in one of TRL's preference
formats, file paths or `datasets` names, a list of `PreferenceExample`, or pairs tokenized already
(`PairDataset`, `CachedPairDataset`). Rows are normalized and checked here, before any model loads, so that a bad
row fails in seconds with its location.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from torch.utils.data import Dataset

from vrm.data.examples import PreferenceExample
from vrm.data.rows import load_preferences, parse_preferences
from vrm.data.state_cache import CachedPairDataset
from vrm.data.tokenization import PreferenceTokenizer, TokenizedPair, TruncationStats
from vrm.data.tokenization_cache import tokenize_pairs_cached


class PairDataset(Dataset):
    """A list of `TokenizedPair` as a torch dataset."""

    def __init__(self, pairs: list[TokenizedPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TokenizedPair:
        return self.pairs[index]

    @property
    def lengths(self) -> list[int]:
        """Padded length of each pair in a batch (its longer sequence), for length-grouped sampling."""
        return [max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in self.pairs]


# what `VRMTrainer(train_dataset=..., eval_dataset=...)` accepts
PreferenceData = str | Sequence[str] | Iterable[dict[str, Any]] | Sequence[PreferenceExample] | Dataset


def is_tokenized(data: Any) -> bool:
    return isinstance(data, PairDataset | CachedPairDataset)


def preference_examples(
    data: PreferenceData,
    name: str,
    args,
    *,
    split: str = "train",
    max_rows: int | None = None,
    dataset_config: str | None = None,
    rating_scale: Sequence[float] | None = None,
) -> list[PreferenceExample]:
    """`data` as normalized, checked preference pairs (`name`: "train" or "eval", for messages).

    File paths and `datasets` names are read (`split`, `dataset_config`, at most `max_rows` rows); a
    `datasets.Dataset` or any iterable of rows is parsed row by row; `PreferenceExample`s are kept. `args` (a
    `VRMTrainingArguments`) gives `attribute_names`, `objective_column` and `skip_invalid_rows`; `rating_scale`
    puts evaluation ratings on the training data's scale.
    """
    if isinstance(data, str | os.PathLike) or (
        isinstance(data, Sequence) and data and all(isinstance(item, str | os.PathLike) for item in data)
    ):
        sources = [os.fspath(data)] if isinstance(data, str | os.PathLike) else [os.fspath(d) for d in data]
        return _reported(
            name,
            args,
            lambda invalid: load_preferences(
                sources,
                split=split,
                attribute_names=args.attribute_names or (),
                objective_column=args.objective_column,
                max_rows=max_rows,
                rating_scale=rating_scale,
                invalid=invalid,
                dataset_config=dataset_config,
            ),
        )
    if isinstance(data, Sequence) and data and all(isinstance(item, PreferenceExample) for item in data):
        return list(data)[:max_rows] if max_rows is not None else list(data)

    def rows():
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise TypeError(
                    f"{name} dataset row {index}: expected a mapping of column names to values, got "
                    f"{type(row).__name__}"
                )
            yield f"{name} dataset:{index}", row

    return _reported(
        name,
        args,
        lambda invalid: parse_preferences(
            rows(),
            f"{name} dataset",
            attribute_names=args.attribute_names or (),
            objective_column=args.objective_column,
            max_rows=max_rows,
            rating_scale=rating_scale,
            invalid=invalid,
        ),
    )


def _reported(name: str, args, read) -> list[PreferenceExample]:
    """`read(invalid)`, saying which rows `--skip_invalid_rows` skipped."""
    invalid: list[tuple[str, str]] | None = [] if args.skip_invalid_rows else None
    examples = read(invalid)
    if invalid:
        shown = "; ".join(f"{location}: {reason}" for location, reason in invalid[:5])
        more = f" and {len(invalid) - 5} more" if len(invalid) > 5 else ""
        print(f"[vrm] {name} data: skipped {len(invalid)} invalid rows ({shown}{more})", flush=True)
    return examples


def check_shared_prompts(examples: Sequence[PreferenceExample], name: str) -> None:
    """The shared-prompt layout reads one prompt for both responses: rows whose chosen and rejected share none
    (conversations that differ from their first message) cannot be laid out so; name them and the way out."""
    empty = [
        e.location or f"{name} row {i}" for i, e in enumerate(examples) if not _text_of(e.prompt).strip()
    ]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(
            f"{len(empty)} {name} rows have no prompt shared by 'chosen' and 'rejected' ({shown}): the "
            "shared_prompt pair layout needs one; give a 'prompt' column, or pass --pair_layout separate"
        )


def _text_of(prompt) -> str:
    return prompt if isinstance(prompt, str) else "".join(str(m.get("content", "")) for m in prompt)


def data_sources(examples: Sequence[PreferenceExample]) -> list[str]:
    """The files (or datasets) the examples came from, read off their locations (`file.jsonl:12` -> `file.jsonl`)."""
    return sorted({example.location.rsplit(":", 1)[0] for example in examples if example.location})


def tokenize_pairs(
    pref_tokenizer: PreferenceTokenizer, examples: Sequence[PreferenceExample], name: str, args
) -> tuple[PairDataset, TruncationStats]:
    """Token pairs through `datasets.map`, cached on disk: the first process of each machine tokenizes, the
    others read its file."""
    with args.main_process_first(local=True, desc=f"tokenizing the {name} data"):
        pairs, stats, _ = tokenize_pairs_cached(
            pref_tokenizer,
            examples,
            cache_dir=args.tokenization_cache,
            num_proc=args.dataset_num_proc,
            desc=f"Tokenizing {name} pairs",
        )
    if args.process_index == 0:
        print(f"[vrm] {name} data: {stats.summary()}", flush=True)
    if not pairs:
        raise ValueError(f"no {name} pairs left after tokenization ({stats.summary()})")
    return PairDataset(pairs), stats
