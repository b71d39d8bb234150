"""Crash-safe file writing: results, caches and checkpoints appear whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a staging path to write `path` through; it is renamed into place only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, extension = os.path.splitext(os.path.basename(path))
    # same directory (the rename is atomic), same extension (writers that infer the format from it still work)
    staging = os.path.join(directory, f".{base}.tmp-{os.getpid()}{extension}")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_json(data: Any, path: str, indent: int | None = 2) -> None:
    """Write JSON atomically (temporary file, then rename); `indent=None`: compact."""
    with atomic_output(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent, separators=None if indent else (",", ":"))
