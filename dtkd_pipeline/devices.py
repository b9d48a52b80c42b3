"""Which torch device a command runs on."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A requested device that this machine does not have."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU. A requested CUDA device must exist."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} requested but CUDA is not available; use cpu")
    return resolved
