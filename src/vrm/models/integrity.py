"""Is a model whole and finite? Weights files that load, and no NaN / infinite parameters or losses.

A diverged run (NaN weights) must not be saved as a model, and a corrupt `model.safetensors` or an invalid
`config.json` must be a one-line error naming the file, never a traceback from deep inside a loader.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import Any

import torch


class ModelLoadError(ValueError):
    """A saved model cannot be loaded; the message names the file."""


class NonFiniteError(ValueError):
    """NaN or infinite values where only finite ones make sense: weights, a training loss, rewards."""


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def first_non_finite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (None if all are finite)."""
    named = [
        (name, t)
        for name, t in named
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta" and t.numel()
    ]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all().cpu() for _, t in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def check_finite_weights(named: Iterable[tuple[str, Any]], where: str) -> None:
    """Raise `NonFiniteError` (prefixed with `where`) if any weight is NaN or infinite."""
    name = first_non_finite(named)
    if name is not None:
        raise NonFiniteError(f"{where}: the weights hold NaN or infinite values (first in '{name}')")


def check_weight_files(path: str) -> None:
    """Each `*.safetensors` file of a model directory has a valid header and its full length (cheap: no data
    is read), else a `ModelLoadError` naming the file."""
    from safetensors import safe_open

    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - SafetensorError and OSError, re-raised naming the file
            raise ModelLoadError(f"{file}: corrupt or truncated weights file ({one_line(err)})") from None


def load_checked(model_class, path: str, **kwargs: Any):
    """`model_class.from_pretrained(path, **kwargs)` for a local model directory, with one-line errors naming
    `config.json` or the weights file, and a refusal of NaN / infinite weights."""
    if not os.path.isdir(path):
        return model_class.from_pretrained(path, **kwargs)  # a hub name: the hub's own errors
    try:
        config_class = getattr(model_class, "config_class", None)
        if config_class is None:  # an Auto class
            from transformers import AutoConfig as config_class
        config = config_class.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - invalid JSON, invalid values: one line naming the file
        raise ModelLoadError(f"{os.path.join(path, 'config.json')}: {one_line(err)}") from None
    check_weight_files(path)
    try:
        model = model_class.from_pretrained(path, config=config, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the directory named
        raise ModelLoadError(f"{path}: cannot load the model ({one_line(err)})") from err
    check_finite_weights(model.named_parameters(), f"{path}: not loaded")
    return model
