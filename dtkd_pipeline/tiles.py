"""Where fixed-size training tiles sit inside an image, and how small images are brought up to size.

Tiles are placed like ResShift's chopper: starts every ``stride`` pixels, with a last start clamped
to ``length - tile`` so the far border is always covered and no tile hangs off the image. The
teacher's chopper (teacher/tiling.py) places its patches with the same `axis_starts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TilePlan:
    """Tile offsets (LR pixels, top-left y, x) of one image, and the LR padding it needs first."""

    offsets: list[tuple[int, int]]
    pad_bottom: int
    pad_right: int


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis; assumes length >= tile."""
    if length < tile:
        raise ValueError(f"axis of {length} px is shorter than the {tile}-px tile")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def plan_tiles(
    lr_height: int,
    lr_width: int,
    tile: int,
    stride: int,
    small_images: Literal["pad", "skip"],
) -> TilePlan | None:
    """Plan the tiles of an LR image of the given size; None when the image is skipped as too small.

    Rule for images smaller than one tile on some side: with ``pad`` they are mirror-padded on the
    bottom/right up to the tile size (prepare-data notes images that fill under half a tile), with
    ``skip`` they are left out of the training set.
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    pad_bottom = max(0, tile - lr_height)
    pad_right = max(0, tile - lr_width)
    if (pad_bottom or pad_right) and small_images == "skip":
        return None
    height, width = lr_height + pad_bottom, lr_width + pad_right
    offsets = [
        (y, x) for y in axis_starts(height, tile, stride) for x in axis_starts(width, tile, stride)
    ]
    return TilePlan(offsets=offsets, pad_bottom=pad_bottom, pad_right=pad_right)


def pad_bottom_right(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """Mirror-pad an HxWxC image on the bottom and right ('symmetric' works for any pad size)."""
    if bottom == 0 and right == 0:
        return image
    return np.pad(image, ((0, bottom), (0, right), (0, 0)), mode="symmetric")


def cut_tiles(
    image: np.ndarray, offsets: list[tuple[int, int]], tile: int, scale: int = 1
) -> np.ndarray:
    """Cut N x C x (tile*scale)^2 tiles out of an HxWxC image at LR offsets times scale."""
    size = tile * scale
    crops = [image[y * scale : y * scale + size, x * scale : x * scale + size] for y, x in offsets]
    return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))
