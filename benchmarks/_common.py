"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import torch


def device_name(device: torch.device) -> str:
    """What the figures were measured on, for every printed table."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
