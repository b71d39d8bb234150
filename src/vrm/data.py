"""Preference data: reading files, TRL's formats, templating, tokenization with counted truncation, collation.

Accepted row formats (TRL's preference formats):

* standard, explicit prompt:       `{"prompt": str, "chosen": str, "rejected": str}`
* standard, implicit prompt:       `{"chosen": str, "rejected": str}` (the prompt is their common prefix)
* conversational, explicit prompt: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`
* conversational, implicit prompt: `{"chosen": [messages], "rejected": [messages]}` (common leading messages)

Optional columns: `margin` (float, subtracted inside the Bradley-Terry term), `subset` (reported separately by
`vrm eval`), per-objective ratings `{name}_chosen` / `{name}_rejected` and an objective label column (see
`load_preferences`).

A (prompt, response) becomes tokens in one of three input formats, recorded in the model config:

* `chat`:  the tokenizer's chat template; the prompt ends with the generation prompt (assistant header).
* `pair`:  encoder tokenizers with a separator: `[CLS] prompt [SEP] response [SEP]`.
* `plain`: `[BOS] prompt <marker> response [EOS]` with `PLAIN_RESPONSE_MARKER` between them.

The prompt and the response are tokenized separately, so the boundary is exact; the tokens that end every
prompt (`response_marker_ids`) let the model find it again in sequences tokenized elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .fileio import FILE_SUFFIXES, DataFormatError, check_text, finite_number, read_records
from .ratings import rating_ranges, rating_value, resolve_scale, set_rating_differences, sign_target

PLAIN_RESPONSE_MARKER = "\n\n### Response:\n"
INPUT_FORMATS = ("auto", "chat", "pair", "plain")
TRUNCATION_POLICIES = ("prompt_left", "drop")

Message = dict[str, str]
Text = str | list[Message]


@dataclass
class PreferenceExample:
    """One preference pair, normalized. `prompt` is text or a list of messages; responses are text or messages."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    attribute_targets: list[float] | None = (
        None  # per rated objective: 1 chosen better, 0 rejected better, nan
    )
    objective_label: int | None = None  # index of the objective the judge used (objective column); -1 unknown
    subset: str | None = None
    location: str = ""
    ratings_chosen: list[float] | None = None  # raw per-objective ratings of each response (nan: not rated)
    ratings_rejected: list[float] | None = None
    rating_differences: list[float] | None = None  # (rho+ - rho-) / range per objective, in [-1, 1]; nan unknown


# ----- reading files ------------------------------------------------------------------------------------------
def read_source(
    source: str, split: str, invalid: list[tuple[str, str]] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) from a file or, for anything else, a `datasets` name's split.

    With an `invalid` list, unreadable rows are appended to it as (location, reason) and skipped."""
    if os.path.isfile(source) or source.endswith(FILE_SUFFIXES):
        yield from read_records(source, invalid)
        return
    import datasets  # a hub name, or a local folder of data files, as `datasets.load_dataset` reads them

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as err:  # noqa: BLE001 - re-raised with the source named
        raise DataFormatError(
            f"{source}: not a file, and loading it as a `datasets` name failed: {err}"
        ) from err
    for index, row in enumerate(dataset):
        yield f"{source}[{split}]: row {index}", row


# ----- normalizing rows ---------------------------------------------------------------------------------------
def _check_messages(value: Any, location: str, column: str) -> list[Message]:
    if not isinstance(value, list):
        raise DataFormatError(f"{location}: '{column}' must be text or a list of messages")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataFormatError(
                f"{location}: '{column}'[{index}] must be a message with 'role' and 'content' fields"
            )
        if not isinstance(message["role"], str):
            raise DataFormatError(f"{location}: '{column}'[{index}]['role'] must be text")
        if not isinstance(message["content"], str):
            raise DataFormatError(f"{location}: '{column}'[{index}]['content'] must be text")
        check_text(message["content"], location, f"{column}[{index}].content")
    return value


def check_text_or_messages(value: Any, location: str, column: str) -> Text:
    """A prompt or response field: valid text, or a list of well-formed messages; else a `DataFormatError`."""
    if isinstance(value, str):
        return check_text(value, location, column)
    return _check_messages(value, location, column)


def _split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt of two texts: their longest common prefix, cut back to a whitespace boundary."""
    length = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        length += 1
    cut = length
    while cut > 0 and not chosen[cut - 1].isspace():
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_row(
    row: dict[str, Any],
    location: str,
    *,
    attribute_names: Sequence[str] = (),
    objective_column: str | None = None,
    allow_empty: bool = False,
) -> PreferenceExample:
    """Normalize one row of any TRL preference format; raise `DataFormatError` naming the row on bad input.

    An empty response is an error unless `allow_empty` (evaluation: an empty answer is a bad answer)."""
    for column in ("chosen", "rejected"):
        if column not in row or row[column] is None:
            present = ", ".join(sorted(row)) or "none"
            raise DataFormatError(
                f"{location}: missing field '{column}' (a preference row needs 'chosen' and 'rejected', "
                f"optionally 'prompt'; columns present: {present})"
            )
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    for column in ("prompt", "chosen", "rejected"):
        if isinstance(row.get(column), str):
            check_text(row[column], location, column)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataFormatError(
            f"{location}: 'chosen' and 'rejected' must both be text or both be message lists"
        )
    if prompt is None:  # implicit prompt
        if isinstance(chosen, str):
            prompt, chosen, rejected = _split_common_prefix(chosen, rejected)
        else:
            chosen = _check_messages(chosen, location, "chosen")
            rejected = _check_messages(rejected, location, "rejected")
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif isinstance(prompt, str):
        if not isinstance(chosen, str):
            chosen = _check_messages(chosen, location, "chosen")
            rejected = _check_messages(rejected, location, "rejected")
    else:
        prompt = _check_messages(prompt, location, "prompt")
        if not isinstance(chosen, str):
            chosen = _check_messages(chosen, location, "chosen")
            rejected = _check_messages(rejected, location, "rejected")
    if not allow_empty and (_response_text(chosen) == "" or _response_text(rejected) == ""):
        raise DataFormatError(f"{location}: empty 'chosen' or 'rejected' response")

    # a blank cell (CSV has no null) is a missing value: no margin, no objective label (masked), no subset
    margin = finite_number(row.get("margin"), location, "margin")
    if objective_column is not None and _is_blank(row.get(objective_column)):
        row = {**row, objective_column: None}

    targets, objective_label = None, None
    ratings_chosen = ratings_rejected = None
    if attribute_names:
        ratings_chosen, ratings_rejected = (  # None, blank or NaN: not rated; inf or text: an error
            [rating_value(row.get(f"{n}_{side}"), location, f"{n}_{side}") for n in attribute_names]
            for side in ("chosen", "rejected")
        )
        targets = [sign_target(c, r) for c, r in zip(ratings_chosen, ratings_rejected, strict=True)]
        if objective_column is not None:
            objective_label = (
                -1
            )  # a row of a labelled dataset without a label: masked, every batch has the column
            if row.get(objective_column) is not None:
                label = str(row[objective_column])
                if label not in attribute_names:
                    raise DataFormatError(
                        f"{location}: '{objective_column}' is {label!r}, "
                        f"not one of the objectives {list(attribute_names)}"
                    )
                objective_label = list(attribute_names).index(label)
                targets[objective_label] = 1.0
    subset = None if _is_blank(row.get("subset")) else row.get("subset")
    if subset is not None and not isinstance(subset, str | int | float):
        raise DataFormatError(f"{location}: 'subset' must be a name (text), got {type(subset).__name__}")
    return PreferenceExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=margin,
        attribute_targets=targets,
        objective_label=objective_label,
        subset=None if subset is None else str(subset),
        location=location,
        ratings_chosen=ratings_chosen,
        ratings_rejected=ratings_rejected,
    )


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _response_text(response: Text) -> str:
    return response if isinstance(response, str) else "".join(m["content"] for m in response)


def load_preferences(
    sources: str | Sequence[str],
    *,
    split: str = "train",
    attribute_names: Sequence[str] = (),
    objective_column: str | None = None,
    max_rows: int | None = None,
    rating_scale: Sequence[float] | None = None,
    invalid: list[tuple[str, str]] | None = None,
) -> list[PreferenceExample]:
    """Read preference pairs from files (jsonl/json/parquet/csv, optionally .gz) or `datasets` names.

    `attribute_names` are the objectives with known per-response judgements: for each name, the columns
    `{name}_chosen` and `{name}_rejected` hold ratings (higher is better), and/or `objective_column` holds the
    name of the objective on which the chosen response is better (as RMB's `objective` column does).
    Ratings are also kept as graded differences `(rho+ - rho-) / range_k` in [-1, 1] (`rating_differences`),
    with `range_k` the spread of objective k's ratings in these rows, or `rating_scale` when given (pass the
    training data's `rating_ranges` when reading evaluation data, so both are on one scale).
    With an `invalid` list, rows that cannot be used are appended to it as (location, reason) and skipped
    instead of raising (`vrm train --skip_invalid_rows`).
    """
    if isinstance(sources, str):
        sources = [sources]
    examples: list[PreferenceExample] = []
    for source in sources:
        for location, row in read_source(source, split, invalid):
            try:
                example = parse_row(
                    row, location, attribute_names=attribute_names, objective_column=objective_column
                )
            except DataFormatError as err:
                if invalid is None:
                    raise
                invalid.append((location, str(err).removeprefix(f"{location}: ")))
                continue
            examples.append(example)
            if max_rows is not None and len(examples) >= max_rows:
                break
        if max_rows is not None and len(examples) >= max_rows:
            break
    if not examples:
        raise DataFormatError(f"{', '.join(sources)}: no preference rows found")
    if attribute_names:
        own = rating_ranges(examples)
        set_rating_differences(examples, resolve_scale(rating_scale, own, ", ".join(sources)))
    return examples


# ----- templating and tokenization ----------------------------------------------------------------------------
@dataclass
class TruncationStats:
    """How many pairs needed truncation or were dropped; printed after tokenization, never silent."""

    pairs: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped_too_long: int = 0
    dropped_identical: int = 0
    marker_mismatch: int = 0

    def summary(self) -> str:
        text = (
            f"{self.pairs} pairs -> {self.kept} kept; truncated: {self.prompt_truncated} prompts (from the left), "
            f"{self.response_truncated} responses (from the right); dropped: {self.dropped_too_long} too long, "
            f"{self.dropped_identical} with identical chosen/rejected tokens"
        )
        if self.marker_mismatch:
            text += f"; {self.marker_mismatch} prompts do not end with the response marker"
        return text


@dataclass
class TokenizedPair:
    chosen_input_ids: list[int]
    rejected_input_ids: list[int]
    prompt_length: int
    margin: float | None
    attribute_targets: list[float] | None
    subset: str | None
    objective_label: int | None = None
    rating_differences: list[float] | None = None


def prepare_tokenizer(tokenizer):
    """Give a tokenizer without a pad token one (its EOS or UNK token): padding is masked anyway."""
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def _as_messages(text: Text, role: str) -> list[Message]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _as_plain(text: Text) -> str:
    if isinstance(text, str):
        return text
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in text)


class PreferenceTokenizer:
    """Turns (prompt, response) into token ids with an exact prompt length, under a length budget.

    Args:
        tokenizer: a `transformers` tokenizer.
        max_length: the budget for prompt + response tokens.
        truncation: `prompt_left` — cut responses longer than `max_length - max_prompt_length` from the right,
            then cut the prompt from the left (keeping its leading special token and the response marker);
            `drop` — drop pairs that do not fit. Both count what they did in `TruncationStats`.
        max_prompt_length: tokens of prompt always kept when responses are long (default `max_length // 2`).
        input_format: `auto` (chat template if the tokenizer has one, `pair` for encoder tokenizers with a
            separator, else `plain`), or one of `chat`, `pair`, `plain`.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int = 512,
        truncation: str = "prompt_left",
        max_prompt_length: int | None = None,
        input_format: str = "auto",
        is_causal: bool = True,
    ):
        if truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.max_length = int(max_length)
        self.truncation = truncation
        self.max_prompt_length = max_prompt_length if max_prompt_length is not None else self.max_length // 2
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be between 0 and max_length ({self.max_length})"
            )
        if input_format == "auto":
            if getattr(tokenizer, "chat_template", None):
                input_format = "chat"
            elif tokenizer.sep_token_id is not None and not is_causal:
                input_format = "pair"
            else:
                input_format = "plain"
        self.input_format = input_format
        self.response_marker_ids = self._response_marker()
        prefix = tokenizer.cls_token_id if input_format == "pair" else tokenizer.bos_token_id
        adds_prefix = prefix is not None and tokenizer("a").input_ids[:1] == [prefix]
        self.prefix_ids = [prefix] if adds_prefix and input_format != "chat" else []

    @classmethod
    def from_model_config(cls, tokenizer, config, **overrides) -> PreferenceTokenizer:
        """The tokenizer a trained model expects, from the tokenization block of its config (`settings()` as
        recorded at training time; checkpoints without `max_prompt_length` get `max_length // 2`, as before).

        The recorded `truncation` policy applies to training only: evaluating and scoring always truncate by
        `prompt_left` (counted in the stats), so that no benchmark row is dropped because the model was trained
        with `--truncation drop`. Pass `truncation=` to override."""
        block = getattr(config, "tokenization", None) or {}
        kwargs = {
            "max_length": block.get("max_length") or 512,
            "max_prompt_length": block.get("max_prompt_length"),
            "truncation": "prompt_left",
            "input_format": block.get("input_format") or "auto",
            "is_causal": bool(config.is_causal),
        }
        kwargs.update(overrides)
        if "max_length" in overrides and "max_prompt_length" not in overrides:  # keep it inside the new budget
            recorded = kwargs["max_prompt_length"]
            if recorded is not None and not 0 < recorded < kwargs["max_length"]:
                kwargs["max_prompt_length"] = None
        return cls(tokenizer, **kwargs)

    def settings(self) -> dict[str, Any]:
        """What a checkpoint records about this tokenization (`vrm.config.record_tokenization`)."""
        return {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "truncation": self.truncation,
            "input_format": self.input_format,
            "response_marker_ids": self.response_marker_ids,
        }

    def _encode(self, text: str) -> list[int]:
        # verbose=False: the tokenizer's "longer than model_max_length" warning fires before our truncation
        return self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids

    def _response_marker(self) -> list[int] | None:
        if self.input_format == "pair":
            return [self.tokenizer.sep_token_id]
        if self.input_format == "plain":
            return self._encode(PLAIN_RESPONSE_MARKER)
        probe = [{"role": "user", "content": "Hello"}]
        without = self.tokenizer.apply_chat_template(probe, tokenize=False)
        with_prompt = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        suffix = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
        return self._encode(suffix) if suffix else None

    def encode_parts(self, prompt: Text, response: Text) -> tuple[list[int], list[int]]:
        """Token ids of the templated prompt (ending with the response marker) and of the response."""
        if self.input_format == "chat":
            messages = _as_messages(prompt, "user")
            prompt_text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            full_text = self.tokenizer.apply_chat_template(
                messages + _as_messages(response, "assistant"), tokenize=False
            )
            if full_text.startswith(prompt_text):
                response_text = full_text[len(prompt_text) :]
            else:  # templates that rewrite earlier turns: keep the prompt as templated, append the answer
                response_text = _as_plain(response) + (self.tokenizer.eos_token or "")
            return self._encode(prompt_text), self._encode(response_text)
        prompt_ids = self.prefix_ids + self._encode(_as_plain(prompt)) + list(self.response_marker_ids or [])
        response_ids = self._encode(_as_plain(response))
        end = self.tokenizer.sep_token_id if self.input_format == "pair" else self.tokenizer.eos_token_id
        if end is not None:
            response_ids.append(end)
        return prompt_ids, response_ids

    def _cut_prompt(self, prompt_ids: list[int], budget: int) -> list[int]:
        """Drop prompt tokens from the left, keeping the leading special token and the response marker."""
        head = len(self.prefix_ids)
        tail = len(self.response_marker_ids or [])
        keep = max(budget - head - tail, 0)
        body = prompt_ids[head : len(prompt_ids) - tail]
        return prompt_ids[:head] + body[len(body) - keep :] + prompt_ids[len(prompt_ids) - tail :]

    def _fit(
        self, prompt_ids: list[int], responses: list[list[int]], stats: TruncationStats
    ) -> tuple[list[int], list[list[int]]] | None:
        """Apply the truncation policy; None means the pair is dropped."""
        longest = max(len(r) for r in responses)
        if len(prompt_ids) + longest <= self.max_length:
            return prompt_ids, responses
        if self.truncation == "drop":
            stats.dropped_too_long += 1
            return None
        protected = len(self.prefix_ids) + len(self.response_marker_ids or [])
        response_budget = self.max_length - max(min(len(prompt_ids), self.max_prompt_length), protected)
        if longest > response_budget:
            responses = [r[:response_budget] for r in responses]
            stats.response_truncated += 1
            longest = response_budget
        if len(prompt_ids) + longest > self.max_length:
            prompt_ids = self._cut_prompt(prompt_ids, self.max_length - longest)
            stats.prompt_truncated += 1
        return prompt_ids, responses

    def tokenize_pairs(
        self, examples: Sequence[PreferenceExample]
    ) -> tuple[list[TokenizedPair], TruncationStats]:
        """Tokenize pairs; over-long ones are truncated or dropped by policy and counted in the stats."""
        stats = TruncationStats(pairs=len(examples))
        marker = self.response_marker_ids
        out: list[TokenizedPair] = []
        for example in examples:
            prompt_ids, chosen_ids = self.encode_parts(example.prompt, example.chosen)
            _, rejected_ids = self.encode_parts(example.prompt, example.rejected)
            if marker and prompt_ids[-len(marker) :] != marker:
                stats.marker_mismatch += 1
            fitted = self._fit(prompt_ids, [chosen_ids, rejected_ids], stats)
            if fitted is None:
                continue
            prompt_ids, (chosen_ids, rejected_ids) = fitted
            if chosen_ids == rejected_ids:
                stats.dropped_identical += 1
                continue
            out.append(
                TokenizedPair(
                    chosen_input_ids=prompt_ids + chosen_ids,
                    rejected_input_ids=prompt_ids + rejected_ids,
                    prompt_length=len(prompt_ids),
                    margin=example.margin,
                    attribute_targets=example.attribute_targets,
                    subset=example.subset,
                    objective_label=example.objective_label,
                    rating_differences=example.rating_differences,
                )
            )
        stats.kept = len(out)
        return out, stats

    def fit(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int]]:
        """Fit one (prompt, response) into `max_length`, truncating (never dropping) by the `prompt_left` rule."""
        policy, self.truncation = self.truncation, "prompt_left"
        try:
            prompt_ids, (response_ids,) = self._fit(prompt_ids, [response_ids], TruncationStats())
        finally:
            self.truncation = policy
        return prompt_ids, response_ids

    def tokenize_single(self, prompt: Text, response: Text) -> tuple[list[int], int]:
        """Token ids of one (prompt, response) and its prompt length; over-long inputs are always truncated."""
        prompt_ids, response_ids = self.fit(*self.encode_parts(prompt, response))
        return prompt_ids + response_ids, len(prompt_ids)


# ----- batching -----------------------------------------------------------------------------------------------
def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest in the batch: (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "left":
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def length_sorted_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad_token_id: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches of sequences sorted by length (little padding): (indices into `sequences`, ids, mask)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = pad_sequences([sequences[i] for i in index], pad_token_id)
        yield index, ids, mask


@dataclass
class PreferenceCollator:
    """Pads a list of `TokenizedPair` into the tensors `VRMForSequenceClassification.forward_pairs` takes."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        chosen_ids, chosen_mask = pad_sequences(
            [p.chosen_input_ids for p in pairs], self.pad_token_id, self.padding_side
        )
        rejected_ids, rejected_mask = pad_sequences(
            [p.rejected_input_ids for p in pairs], self.pad_token_id, self.padding_side
        )
        batch = {
            "chosen_input_ids": chosen_ids,
            "chosen_attention_mask": chosen_mask,
            "rejected_input_ids": rejected_ids,
            "rejected_attention_mask": rejected_mask,
            "prompt_lengths": torch.tensor([p.prompt_length for p in pairs], dtype=torch.long),
        }
        batch.update(collate_targets(pairs))
        return batch


def collate_targets(pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
    """`margin` [B], `attribute_targets` [B, K'] (NaN where unknown), `objective_labels` [B] (-1 where
    unknown) and `rating_differences` [B, K'] (NaN where unknown), each when any pair of the batch has one."""
    batch: dict[str, torch.Tensor] = {}
    if any(p.margin is not None for p in pairs):
        batch["margin"] = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    if any(p.attribute_targets is not None for p in pairs):
        width = max(len(p.attribute_targets or []) for p in pairs)
        batch["attribute_targets"] = torch.tensor(
            [p.attribute_targets or [math.nan] * width for p in pairs], dtype=torch.float32
        )
    if any(p.objective_label is not None for p in pairs):
        batch["objective_labels"] = torch.tensor(
            [-1 if p.objective_label is None else p.objective_label for p in pairs], dtype=torch.long
        )
    if any(p.rating_differences is not None for p in pairs):
        width = max(len(p.rating_differences or []) for p in pairs)
        batch["rating_differences"] = torch.tensor(
            [p.rating_differences or [math.nan] * width for p in pairs], dtype=torch.float32
        )
    return batch
