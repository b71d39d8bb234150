"""The HTTP reward server (needs the `serve` extra): the FastAPI app (`app`), its options (`config`), request and
response bodies with the server's limits (`requests`), and dynamic batching shared fairly between requests across
one or more model replicas (`batching`).

The names below are imported on first use, so that building `vrm serve`'s options (`ServerConfig`) does not wait
for torch and FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DynamicBatcher": "vrm.serving.batching",
    "ServedModel": "vrm.serving.app",
    "ServerConfig": "vrm.serving.config",
    "build_app": "vrm.serving.app",
    "run_server": "vrm.serving.app",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vrm.serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
