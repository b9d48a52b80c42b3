"""Reading 16-bit colour TIFFs at full depth with numpy: Pillow (13) reads them at 8 bits.

Covers the layouts 16-bit RGB(A) exports use most: strips (not tiles), uncompressed or deflate,
with or without the horizontal-difference predictor, samples interleaved or in planes. Other
16-bit colour TIFFs (LZW, tiles, ...) are left to Pillow. Pillow still parses the header; this
module reads its tags and decodes the strips. Decoding errors raise :class:`TiffDecodeError` with
a message that the caller prefixes with the file's name.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["DecodedTiff16", "TiffDecodeError", "decode_tiff16", "is_decodable_16bit_colour_tiff"]

_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _PHOTOMETRIC = 256, 257, 258, 259, 262
_STRIP_OFFSETS, _SAMPLES_PER_PIXEL, _ROWS_PER_STRIP, _STRIP_BYTE_COUNTS = 273, 277, 278, 279
_PLANAR_CONFIG, _PREDICTOR, _TILE_WIDTH, _EXTRA_SAMPLES, _SAMPLE_FORMAT = 284, 317, 322, 338, 339
_ORIENTATION = 274

_RGB = 2
_UNCOMPRESSED, _DEFLATE = 1, (8, 32946)  # 32946: the pre-standard deflate code, still written
_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 1, 2
_SEPARATE_PLANES = 2
_HORIZONTAL_DIFFERENCE = 2


class TiffDecodeError(ValueError):
    """The TIFF data is truncated or corrupt; the message says how (it does not name the file)."""


@dataclass(frozen=True, eq=False)
class DecodedTiff16:
    """``rgb`` uint16 H×W×3 as stored (not yet turned upright), ``alpha`` uint16 H×W or None
    (colour already divided by it when the file stores premultiplied colour), and the TIFF
    orientation tag (1 when absent)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    orientation: int


def is_decodable_16bit_colour_tiff(image: Image.Image) -> bool:
    """Whether ``image`` (opened, not loaded) is a 16-bit RGB(A) TIFF that :func:`decode_tiff16`
    reads. Check before ``load()``: Pillow drops the orientation tag once it has applied it."""
    if image.format != "TIFF":
        return False
    tags = image.tag_v2
    channels = int(tags.get(_SAMPLES_PER_PIXEL, 1))
    return (
        channels in (3, 4)
        and tags.get(_PHOTOMETRIC) == _RGB
        and _values(tags.get(_BITS, (1,))) == (16,) * channels
        and set(_values(tags.get(_SAMPLE_FORMAT, (1,)))) == {1}  # unsigned integers
        and tags.get(_COMPRESSION, _UNCOMPRESSED) in (_UNCOMPRESSED, *_DEFLATE)
        and tags.get(_PREDICTOR, 1) in (1, _HORIZONTAL_DIFFERENCE)
        and _TILE_WIDTH not in tags
        and _STRIP_OFFSETS in tags
        and _STRIP_BYTE_COUNTS in tags
    )


def decode_tiff16(data: bytes, tags: Mapping[int, Any]) -> DecodedTiff16:
    """Decode the first image of a TIFF file (``data``, its bytes) from its parsed ``tags``
    (Pillow's ``tag_v2``), which :func:`is_decodable_16bit_colour_tiff` accepted."""
    width, height = int(tags[_WIDTH]), int(tags[_HEIGHT])
    channels = int(tags[_SAMPLES_PER_PIXEL])
    planes = channels if tags.get(_PLANAR_CONFIG, 1) == _SEPARATE_PLANES else 1
    rows_per_strip = min(int(tags.get(_ROWS_PER_STRIP, height)), height)
    strips_per_plane = math.ceil(height / rows_per_strip)
    offsets, counts = _values(tags[_STRIP_OFFSETS]), _values(tags[_STRIP_BYTE_COUNTS])
    if len(offsets) != planes * strips_per_plane or len(counts) != len(offsets):
        raise TiffDecodeError(
            f"corrupt TIFF ({len(offsets)} strips for {planes} plane(s) of {height} rows)"
        )
    dtype = np.dtype("<u2" if data[:2] == b"II" else ">u2")
    deflated = tags.get(_COMPRESSION, _UNCOMPRESSED) in _DEFLATE
    samples_per_pixel = channels // planes
    strips = []
    for offset, count in zip(offsets, counts, strict=True):
        raw = data[offset : offset + count]
        if len(raw) != count:
            raise TiffDecodeError("truncated TIFF (strip data cut short)")
        strips.append(zlib.decompress(raw) if deflated else raw)
    plane_arrays = []
    for plane in range(planes):
        rows = []
        for index in range(strips_per_plane):
            strip_rows = min(rows_per_strip, height - index * rows_per_strip)
            values = strip_rows * width * samples_per_pixel
            raw = strips[plane * strips_per_plane + index]
            if len(raw) < values * 2:
                raise TiffDecodeError("truncated TIFF (strip data cut short)")
            strip = np.frombuffer(raw, dtype, count=values)
            rows.append(strip.reshape(strip_rows, width, samples_per_pixel))
        plane_arrays.append(np.concatenate(rows))
    samples = np.concatenate(plane_arrays, axis=2).astype(np.uint16)
    if tags.get(_PREDICTOR, 1) == _HORIZONTAL_DIFFERENCE:
        # Each sample was stored as the difference to its left neighbour, modulo 2^16.
        samples = np.cumsum(samples, axis=1, dtype=np.uint16)
    rgb, alpha = _split_alpha(samples, _values(tags.get(_EXTRA_SAMPLES, ())))
    return DecodedTiff16(rgb, alpha, int(tags.get(_ORIENTATION, 1)))


def _split_alpha(
    samples: np.ndarray, extra: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB, alpha or None); a fourth sample of unspecified meaning is dropped, as Pillow does."""
    rgb = samples[..., :3]
    kind = extra[0] if samples.shape[-1] == 4 and extra else None
    if kind not in (_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA):
        return np.ascontiguousarray(rgb), None
    alpha = np.ascontiguousarray(samples[..., 3])
    if kind == _ASSOCIATED_ALPHA:  # colour stored premultiplied: divide it back out
        scale = np.where(alpha > 0, 65535.0 / np.maximum(alpha, 1), 0.0)[..., None]
        rgb = np.round(np.clip(rgb * scale, 0, 65535)).astype(np.uint16)
    return np.ascontiguousarray(rgb), alpha


def _values(value: Any) -> tuple[int, ...]:
    """A TIFF tag's values as a tuple (Pillow gives a single value as a bare number)."""
    return tuple(int(v) for v in value) if isinstance(value, tuple | list) else (int(value),)
