"""Preference data, one module per stage, re-exported here under their historical import path.

* `vrm.rows`: reading files or `datasets` names, TRL's preference formats -> `PreferenceExample`.
* `vrm.tokenization`: templating and tokenization with counted truncation -> `TokenizedPair`, `TruncationStats`.
* `vrm.collate`: padding and collation into the tensors the model takes.

`from vrm.data import ...` keeps working for every name below.
"""

from __future__ import annotations

from .collate import PreferenceCollator, collate_targets, length_sorted_batches, pad_sequences
from .fileio import FILE_SUFFIXES, DataFormatError, check_text, finite_number, read_records
from .ratings import rating_ranges, rating_value, resolve_scale, set_rating_differences, sign_target
from .rows import (
    Message,
    PreferenceExample,
    Text,
    check_text_or_messages,
    load_preferences,
    parse_row,
    read_source,
)
from .tokenization import (
    INPUT_FORMATS,
    PLAIN_RESPONSE_MARKER,
    TRUNCATION_POLICIES,
    PreferenceTokenizer,
    TokenizedPair,
    TruncationStats,
    prepare_tokenizer,
)

__all__ = [
    "FILE_SUFFIXES",
    "INPUT_FORMATS",
    "PLAIN_RESPONSE_MARKER",
    "TRUNCATION_POLICIES",
    "DataFormatError",
    "Message",
    "PreferenceCollator",
    "PreferenceExample",
    "PreferenceTokenizer",
    "Text",
    "TokenizedPair",
    "TruncationStats",
    "check_text",
    "check_text_or_messages",
    "collate_targets",
    "finite_number",
    "length_sorted_batches",
    "load_preferences",
    "pad_sequences",
    "parse_row",
    "prepare_tokenizer",
    "rating_ranges",
    "rating_value",
    "read_records",
    "read_source",
    "resolve_scale",
    "set_rating_differences",
    "sign_target",
]
