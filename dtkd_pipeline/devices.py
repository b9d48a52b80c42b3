"""Which torch device a command runs on."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A requested device that this machine does not have, or cannot run a setting on."""


def require_cuda_for(precision: str, device_type: str, key: str) -> None:
    """fp32 runs anywhere; the tensor-core precisions (tf32, bf16, fp16) only on CUDA: CPU autocast
    without native bf16 ran 10-100x slower than fp32 and gains nothing (docs/performance.md).

    ``key`` names the setting in the message (``--precision``, ``distill.precision``, ...).
    """
    if precision != "fp32" and device_type != "cuda":
        raise DeviceError(
            f"{key}={precision} needs a CUDA device, but this run is on {device_type}: "
            f"use {key}=fp32"
        )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU. A requested CUDA device must exist."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        message = f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N"
        raise DeviceError(message) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} requested but CUDA is not available; use cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise DeviceError(
            f"device {str(device)!r} requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s): use cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    return resolved
