"""The manifest of a `vrm score` output: what its rows were scored from, so that a resumed run adds to it only
when the input, the model and the settings are the same (else its old rows would silently be kept)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import torch

from vrm.models.integrity import one_line


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_checksum(model: torch.nn.Module) -> list[float]:
    """Sum and absolute sum of all parameters (float64, rounded to 6 significant digits).

    Reductions on another device (or in another order) can differ in the last digits: compare checksums with
    `checksums_match` (a relative tolerance), not exactly."""
    with torch.no_grad():  # reductions in float64 without a float64 copy of each weight
        sums = torch.stack(
            [
                torch.stack(
                    [p.sum(dtype=torch.float64), torch.linalg.vector_norm(p, 1, dtype=torch.float64)]
                ).cpu()
                for p in model.parameters()
            ]
        )
    return [float(f"{value:.6g}") for value in sums.sum(0).tolist()]


CHECKSUM_RTOL = 1e-4


def checksums_match(old, new, rtol: float = CHECKSUM_RTOL) -> bool:
    """Whether two `weights_checksum`s are the same weights, up to the reductions' rounding (`rtol`)."""
    if not (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)):
        return False
    try:
        return all(
            math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=0.0) for a, b in zip(old, new, strict=True)
        )
    except (TypeError, ValueError):
        return False


def score_manifest(pipeline, input_path: str, **settings: Any) -> dict[str, Any]:
    """What a `vrm score` output is made from: the input's content, the model (config and a weight checksum)
    and the settings that change the written scores. A resumed run must match it."""
    model = pipeline.model
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }
    return {
        "input": {"path": os.path.abspath(input_path), "sha256": file_sha256(input_path)},
        "model": {
            "path": model.config._name_or_path or None,
            "config_sha256": hashlib.sha256(
                json.dumps(config, sort_keys=True, default=str).encode()
            ).hexdigest(),
            "weights_checksum": weights_checksum(model),
        },
        "settings": {
            "normalize": pipeline.normalize,
            "conservative_lambda": float(pipeline.conservative_lambda),
            "max_length": pipeline.template.max_length,
            "input_format": pipeline.template.input_format,
            **settings,
        },
    }


def check_manifest(manifest_path: str, manifest: dict[str, Any], output_path: str) -> None:
    """Refuse to add to an output made from another input, model or settings (its rows would be kept)."""
    rerun = "pass --overwrite to score it again from scratch, or choose another --output"
    if not os.path.exists(manifest_path):
        raise ValueError(
            f"{output_path} already holds rows but has no {manifest_path} to say what from; {rerun}"
        )
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (OSError, ValueError) as err:
        raise ValueError(f"{manifest_path}: unreadable ({one_line(err)}); {rerun}") from None
    differences = []
    if old.get("input", {}).get("sha256") != manifest["input"]["sha256"]:
        differences.append(f"another input ({old.get('input', {}).get('path')})")
    model = {k: v for k, v in manifest["model"].items() if k not in ("path", "weights_checksum")}
    old_model = old.get("model", {})
    if {k: old_model.get(k) for k in model} != model or not checksums_match(
        old_model.get("weights_checksum"), manifest["model"]["weights_checksum"]
    ):
        differences.append(f"another model ({old.get('model', {}).get('path')})")
    for key, value in manifest["settings"].items():
        if old.get("settings", {}).get(key) != value:
            differences.append(f"{key}={old.get('settings', {}).get(key)!r} (now {value!r})")
    if differences:
        raise ValueError(f"{output_path} was scored from {', '.join(differences)}; {rerun}")
