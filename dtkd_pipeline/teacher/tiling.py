"""LR-space chopping as upstream's `ImageSpliterTh` does it (reference §3.4).

Patches are chop×chop LR windows (or the full extent on an axis no longer than chop) at start
positions `range(0, L, stride)` clamped to `L - chop` and de-duplicated, taken row-major; each
patch is a full independent diffusion run, and the SR results are averaged uniformly (sum / count).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

DEFAULT_CHOP_SIZE = 512
"""Upstream CLI default (`--chop_size 512`); images up to this size per side are not chopped."""

_OFFICIAL_STRIDES = {512: 448, 256: 224, 64: 48}  # upstream `--chop_stride -1` (auto)


def default_chop_stride(chop_size: int) -> int:
    """Upstream's auto stride for its three chop sizes; 7/8 of the chop size otherwise."""
    return _OFFICIAL_STRIDES.get(chop_size, chop_size - chop_size // 8)


def chop_starts(length: int, chop: int, stride: int) -> list[int]:
    if length <= chop:
        return [0]
    starts: list[int] = []
    for start in range(0, length, stride):
        start = min(start, length - chop)
        if start not in starts:
            starts.append(start)
    return starts


@dataclass(frozen=True)
class Patch:
    index: int
    top: int
    left: int
    height: int
    width: int


def chop_grid(height: int, width: int, chop: int, stride: int) -> list[Patch]:
    """Row-major LR patches covering a height×width image."""
    patch_h, patch_w = min(chop, height), min(chop, width)
    return [
        Patch(index, top, left, patch_h, patch_w)
        for index, (top, left) in enumerate(
            product(chop_starts(height, chop, stride), chop_starts(width, chop, stride))
        )
    ]
