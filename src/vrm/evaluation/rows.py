"""The rows `vrm eval` scores: read leniently, optionally limited (`--max_rows`) or sampled (`--sample`).

A benchmark is never refused for one odd row: rows that cannot be used (unparsable JSON, no answer at all, a
wrong type) are skipped and listed with their locations (`file:line`) in `InvalidRows`, which the report
prints; an empty response is a legitimate (bad) answer and is scored.

`stratified_sample(subsets, n, seed)` draws `n` rows stratified by subset: each subset gets a share
proportional to its size (largest remainders round up, ties by subset name), and at least one row when `n` is
at least the number of subsets (given by the largest quotas); rows are drawn without replacement by
`numpy.random.default_rng(seed)` and kept in file order, so a (file, n, seed) always gives the same rows. With
`--sample`, RewardBench 2 Ties rows are drawn by prompt: `ref:N` and `tied:N` count as one draw and come
together (the Ties score compares them).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vrm.data.rows import read_source

LISTED_INVALID_ROWS = 200  # locations kept in the JSON report (the count is always exact)


@dataclass
class InvalidRows:
    """Rows skipped because they cannot be used: (location, reason) each, in file order."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, location: str, reason: str) -> None:
        self.rows.append((location, reason))

    def __len__(self) -> int:
        return len(self.rows)

    def as_dict(self) -> dict[str, Any]:
        listed = [{"location": loc, "reason": reason} for loc, reason in self.rows[:LISTED_INVALID_ROWS]]
        return {"count": len(self.rows), "rows": listed}


def describe_invalid(entry: dict[str, Any], shown: int = 5) -> str | None:
    """One line naming the skipped rows of a report entry (None when there are none)."""
    invalid = entry.get("invalid_rows") or {}
    count = int(invalid.get("count", 0))
    if not count:
        return None
    rows = invalid.get("rows") or []
    named = ", ".join(f"{r['location']} ({r['reason']})" for r in rows[:shown])
    more = f" and {count - min(shown, len(rows))} more" if count > min(shown, len(rows)) else ""
    return f"{count} unusable row(s) skipped: {named}{more}"


def stratified_sample(subsets: Sequence[str | None], n: int, seed: int = 0) -> list[int]:
    """Indices (sorted) of `n` items drawn stratified by subset, deterministic for a seed (see module doc)."""
    if n < 0:
        raise ValueError(f"--sample must be >= 0, got {n}")
    total = len(subsets)
    if n >= total:
        return list(range(total))
    groups: dict[str, list[int]] = defaultdict(list)
    for index, subset in enumerate(subsets):
        groups["" if subset is None else str(subset)].append(index)
    names = sorted(groups)
    exact = {name: n * len(groups[name]) / total for name in names}
    quota = {name: math.floor(exact[name]) for name in names}
    by_remainder = sorted(names, key=lambda name: (-(exact[name] - quota[name]), name))
    for name in by_remainder[: n - sum(quota.values())]:  # largest remainders round up
        quota[name] += 1
    if n >= len(names):  # every subset is represented: the largest quotas give one row each to empty ones
        for name in names:
            if quota[name] == 0:
                donor = max(names, key=lambda other: (quota[other], other))
                quota[donor] -= 1
                quota[name] = 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for name in names:
        picked = rng.choice(len(groups[name]), size=quota[name], replace=False)
        chosen.extend(groups[name][int(i)] for i in picked)
    return sorted(chosen)


def read_eval_rows(
    source: str,
    split: str,
    *,
    max_rows: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> tuple[list[tuple[str, dict[str, Any]]], InvalidRows]:
    """(location, row) pairs to evaluate and the unreadable rows: the first `max_rows` readable rows, then, with
    `sample`, a stratified sample of them (see `stratified_sample`)."""
    invalid: list[tuple[str, str]] = []
    rows = list(itertools.islice(read_source(source, split, invalid), max_rows))
    if sample is not None:

        def subset(row: dict[str, Any]) -> str | None:
            value = row.get("subset")
            return value if isinstance(value, str) else None if value is None else repr(value)

        units = _sampling_units([row for _, row in rows])
        picked = stratified_sample([subset(rows[unit[0]][1]) for unit in units], sample, seed)
        rows = [rows[i] for i in sorted(i for u in picked for i in units[u])]
    return rows, InvalidRows(invalid)


def _sampling_units(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Row indices grouped into what `--sample` draws: one row each, except RewardBench 2 Ties rows, whose
    `ref:N` and `tied:N` rows (scored together, by prompt number N) are drawn together."""
    units: list[list[int]] = []
    ties: dict[str, int] = {}  # prompt number -> its unit
    for index, row in enumerate(rows):
        subset, row_id = row.get("subset"), row.get("id")
        kind, _, number = row_id.partition(":") if isinstance(row_id, str) else ("", "", "")
        if isinstance(subset, str) and subset.lower() == "ties" and kind in ("ref", "tied") and number:
            if number in ties:
                units[ties[number]].append(index)
                continue
            ties[number] = len(units)
        units.append([index])
    return units
