"""Preference data, from rows to batches: reading files and `datasets` in TRL's formats (`rows`), per-objective
ratings (`ratings`), templating and tokenization with counted truncation (`tokenization`, cached through
`datasets.map` in `tokenization_cache`), collation (`collate`) and the shared-prompt pair layout (`pair_layout`),
the frozen-backbone state cache (`state_cache`), crash-safe files (`files`), and data makers: the synthetic world
(`synthetic`) and public-feedback recipes (`recipes`).

The names below need neither torch nor transformers (so `vrm synth` and reading data stay fast); the batching and
backbone-state modules (`collate`, `pair_layout`, `state_cache`) are imported from their modules."""

from vrm.data.examples import Message, PreferenceExample, Text
from vrm.data.files import DataFormatError, atomic_output, read_records, write_json
from vrm.data.rows import load_preferences, parse_preferences, parse_row
from vrm.data.tokenization import PreferenceTokenizer, TokenizedPair, TruncationStats

__all__ = [
    "DataFormatError",
    "Message",
    "PreferenceExample",
    "PreferenceTokenizer",
    "Text",
    "TokenizedPair",
    "TruncationStats",
    "atomic_output",
    "load_preferences",
    "parse_preferences",
    "parse_row",
    "read_records",
    "write_json",
]
