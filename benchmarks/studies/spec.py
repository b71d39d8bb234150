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
import re
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
    """The dataclass `kind` from a YAML mapping, validated against its field types (pydantic): a malformed file,
    an unknown or missing field, or a value of the wrong type is one `ValueError` naming the file and the field."""
    import pydantic
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except yaml.YAMLError as err:  # syntax errors and tags safe_load refuses (`!!python/object/apply`, ...)
        raise ValueError(f"{path}: not a valid {what} YAML file ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of {what} fields")
    known = config_fields(kind)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown} (known: {sorted(known)})")
    try:
        return pydantic.TypeAdapter(kind).validate_python(values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ValueError(
            f"{path}: field '{where}': {first['msg']} (got {first.get('input')!r:.80})"
        ) from None


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_name(name: str, what: str, path: str) -> str:
    """A name that becomes a file or directory name: letters, digits and `_.+-`, not starting with a dot, so that
    nothing is written (or later deleted) outside the results and work directories."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{path}: {what} {name!r} must be a plain name (letters, digits, _ . + -; no / or ..)"
        )
    return name
