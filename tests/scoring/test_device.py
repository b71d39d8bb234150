"""Resolving `--device` / `--dtype` for the scoring commands."""

import pytest
import torch

from vrm.scoring.device import resolve


def test_device_and_dtype_names_resolve_or_are_refused():
    cuda = torch.cuda.is_available()
    assert resolve(None, None)[0] == ("cuda" if cuda else "cpu")
    assert resolve("auto", "auto") == (("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32))
    assert resolve("cpu", "bf16") == ("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="dtype 'int8' is not one of: auto, float32, bfloat16, float16"):
        resolve("cpu", "int8")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve("toaster", None)
