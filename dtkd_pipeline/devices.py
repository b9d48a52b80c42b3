"""Which torch device a command runs on."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A requested device that this machine does not have."""


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
