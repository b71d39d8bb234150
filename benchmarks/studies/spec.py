"""What a run is (`RunSpec` and its resumable key) and how a study's YAML file becomes its dataclass.

A run is a model name (a variant, proxy or head), a training seed and the training options of `training`
(`ModelArguments` and `VRMTrainingArguments` fields). Its key names its run file: the name, the seed and a hash
of the options, so a finished run is found again (and never retrained) however the study is resumed, and a
changed option is a new run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Config = TypeVar("Config")


def digest(values: Mapping[str, Any]) -> str:
    """A short, stable hash of JSON-able values (key order does not matter)."""
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def run_key(name: str, seed: int, hashed: Mapping[str, Any]) -> str:
    """`<name>-s<seed>-<hash of hashed>`: the file name of a run."""
    return f"{name}-s{seed}-{digest(hashed)}"


@dataclass(frozen=True)
class RunSpec:
    """One training run: the model's name in tables, its seed and its training options (seed excluded)."""

    name: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return run_key(self.name, self.seed, self.options)

    def with_seed(self, seed: int) -> RunSpec:
        return dataclasses.replace(self, seed=seed)


def grid_points(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest (the order runs are tried in)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**point, key: value} for point in points for value in values]
    return points


def config_fields(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def read_yaml_config(path: str, kind: type[Config], what: str) -> Config:
    """The dataclass `kind` from a YAML mapping; unknown or missing fields are errors naming the file."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of {what} fields")
    known = config_fields(kind)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown} (known: {sorted(known)})")
    try:
        return kind(**values)
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None
