"""Where and in which precision a trained reward model runs: `--device` / `--dtype` of `vrm eval`, `vrm score`,
`vrm bench bon`, `RewardPipeline.from_pretrained` and `VRMRewardFunction`.

The default, `auto`, is CUDA in bfloat16 when a GPU is there (bfloat16 where the GPU supports it, else float16),
else the CPU in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {  # torch attribute of each accepted name (torch loads only when a model does)
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device | None) -> str:
    """`None` / `auto`: `cuda` when available, else `cpu`; anything else must be a torch device that exists."""
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {str(device)!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
    return str(parsed)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """`None` / `auto`: bfloat16 on CUDA (float16 on GPUs without bfloat16), float32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype {dtype} is not one of: {', '.join(DTYPE_CHOICES)}")
        return dtype
    if dtype is None or str(dtype) == "auto":
        if str(resolve_device(device)).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {str(dtype)!r} is not one of: {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, DTYPE_NAMES[name])


def resolve(device: Any = None, dtype: Any = None) -> tuple[str, torch.dtype]:
    """The (device, dtype) a model is loaded with; a bad value is a `ValueError` naming it."""
    device = resolve_device(device)
    return device, resolve_dtype(dtype, device)
