"""LR-space chopping as upstream's `ImageSpliterTh` does it (reference §3.4).

Patches are chop×chop LR windows (or the full extent on an axis no longer than chop) at start
positions `range(0, L, stride)` clamped to `L - chop` and de-duplicated, taken row-major; each
patch is a full independent diffusion run, and the SR results are averaged uniformly (sum / count).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from dtkd_pipeline.tiles import axis_starts

DEFAULT_CHOP_SIZE = 512
"""Upstream CLI default (`--chop_size 512`); images up to this size per side are not chopped."""

_OFFICIAL_STRIDES = {512: 448, 256: 224, 64: 48}  # upstream `--chop_stride -1` (auto)


def default_chop_stride(chop_size: int) -> int:
    """Upstream's auto stride for its three chop sizes; 7/8 of the chop size otherwise."""
    return _OFFICIAL_STRIDES.get(chop_size, chop_size - chop_size // 8)


def chop_starts(length: int, chop: int, stride: int) -> list[int]:
    """Patch starts along one axis; `stride <= chop`, as `resolve_chop` ensures.

    For such strides upstream's clamped, de-duplicated `range(0, L, stride)` is exactly the
    training tiles' placement, so both use `axis_starts`.
    """
    if length <= chop:
        return [0]
    return axis_starts(length, chop, stride)


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
