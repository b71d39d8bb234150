"""Reading preference rows: files or `datasets` names, TRL's preference formats normalized to `PreferenceExample`.

Accepted row formats (TRL's preference formats):

* standard, explicit prompt:       `{"prompt": str, "chosen": str, "rejected": str}`
* standard, implicit prompt:       `{"chosen": str, "rejected": str}` (the prompt is their common prefix)
* conversational, explicit prompt: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`
* conversational, implicit prompt: `{"chosen": [messages], "rejected": [messages]}` (common leading messages)

Optional columns: `margin` (float, subtracted inside the Bradley-Terry term), `subset` (reported separately by
`vrm eval`), per-objective ratings `{name}_chosen` / `{name}_rejected` and an objective label column (see
`load_preferences`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from vrm.data.examples import Message, PreferenceExample, Text
from vrm.data.files import FILE_SUFFIXES, DataFormatError, check_text, finite_number, read_records
from vrm.data.ratings import rating_ranges, rating_value, resolve_scale, set_rating_differences, sign_target


# ----- reading files ------------------------------------------------------------------------------------------
def read_source(
    source: str, split: str, invalid: list[tuple[str, str]] | None = None, name: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, row) from a file or, for anything else, a `datasets` name's split (of its
    configuration `name`, as `datasets.load_dataset(source, name, split=split)`).

    With an `invalid` list, unreadable rows are appended to it as (location, reason) and skipped."""
    if os.path.isfile(source) or source.endswith(FILE_SUFFIXES):
        yield from read_records(source, invalid)
        return
    import datasets  # a hub name, or a local folder of data files, as `datasets.load_dataset` reads them

    try:
        dataset = datasets.load_dataset(source, name=name, split=split)
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
        raise DataFormatError(
            f"{location}: empty 'chosen' or 'rejected' response: a pair to learn from needs two answers (pass "
            "--skip_invalid_rows to skip such rows; evaluation scores an empty answer as a bad one)"
        )

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
    dataset_config: str | None = None,
) -> list[PreferenceExample]:
    """Read preference pairs from files (jsonl/json/parquet/csv, optionally .gz) or `datasets` names.

    `dataset_config` is the configuration of `datasets` names (`--dataset_config`); the other arguments are
    `parse_preferences`'.
    """
    if isinstance(sources, str):
        sources = [sources]

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for source in sources:
            yield from read_source(source, split, invalid, dataset_config)

    return parse_preferences(
        rows(),
        ", ".join(sources),
        attribute_names=attribute_names,
        objective_column=objective_column,
        max_rows=max_rows,
        rating_scale=rating_scale,
        invalid=invalid,
    )


def parse_preferences(
    rows: Iterable[tuple[str, dict[str, Any]]],
    what: str,
    *,
    attribute_names: Sequence[str] = (),
    objective_column: str | None = None,
    max_rows: int | None = None,
    rating_scale: Sequence[float] | None = None,
    invalid: list[tuple[str, str]] | None = None,
) -> list[PreferenceExample]:
    """Normalize (location, row) pairs of any TRL preference format into `PreferenceExample`s (`what` names the
    data in errors).

    `attribute_names` are the objectives with known per-response judgements: for each name, the columns
    `{name}_chosen` and `{name}_rejected` hold ratings (higher is better), and/or `objective_column` holds the
    name of the objective on which the chosen response is better (as RMB's `objective` column does).
    Ratings are also kept as graded differences `(rho+ - rho-) / range_k` in [-1, 1] (`rating_differences`),
    with `range_k` the spread of objective k's ratings in these rows, or `rating_scale` when given (pass the
    training data's `rating_ranges` when reading evaluation data, so both are on one scale).
    With an `invalid` list, rows that cannot be used are appended to it as (location, reason) and skipped
    instead of raising (`vrm train --skip_invalid_rows`).
    """
    examples: list[PreferenceExample] = []
    for location, row in rows:
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
    if not examples:
        raise DataFormatError(f"{what}: no preference rows found")
    if attribute_names:
        own = rating_ranges(examples)
        set_rating_differences(examples, resolve_scale(rating_scale, own, what))
    return examples
