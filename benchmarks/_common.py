"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def attention_ops_for_students(enabled: bool) -> Iterator[None]:
    """The "opsattn" lever: student window attention as the official ops instead of SDPA."""
    from dtkd_pipeline.student.swinir import WindowAttention

    previous = WindowAttention.use_sdpa
    WindowAttention.use_sdpa = not enabled
    try:
        yield
    finally:
        WindowAttention.use_sdpa = previous
