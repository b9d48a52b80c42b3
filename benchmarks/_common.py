"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import torch

from dtkd_pipeline.evaluate.efficiency import device_name as _hardware_name


def device_name(device: torch.device) -> str:
    """What the figures were measured on, for every printed table (CPUs with their threads)."""
    if device.type == "cuda":
        return _hardware_name(device)
    return f"CPU {_hardware_name(device)} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
