"""Reading 16-bit colour TIFFs at full depth with numpy: Pillow (13) reads RGB(A) at 8 bits and
cannot open gray+alpha at all.

Covers the layouts 16-bit RGB(A) and gray+alpha exports use most: strips (not tiles),
uncompressed or deflate, with or without the horizontal-difference predictor, samples
interleaved or in planes. Other 16-bit RGB(A) TIFFs (LZW, tiles, ...) are left to Pillow; other
16-bit gray+alpha TIFFs are refused, since Pillow opens none. Pillow's tag parser reads the
header; this module decodes the strips. Decoding errors raise :class:`TiffDecodeError` with a
message that the caller prefixes with the file's name.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL.TiffImagePlugin import ImageFileDirectory_v2

__all__ = [
    "DecodedTiff16",
    "TiffDecodeError",
    "decode_tiff16",
    "has_alpha_sample",
    "is_decodable_16bit_tiff",
    "read_tiff_tags",
    "refuse_undecodable_16bit_gray_alpha",
    "stored_size",
]

_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _PHOTOMETRIC = 256, 257, 258, 259, 262
_STRIP_OFFSETS, _SAMPLES_PER_PIXEL, _ROWS_PER_STRIP, _STRIP_BYTE_COUNTS = 273, 277, 278, 279
_PLANAR_CONFIG, _PREDICTOR, _TILE_WIDTH, _EXTRA_SAMPLES, _SAMPLE_FORMAT = 284, 317, 322, 338, 339
_ORIENTATION = 274

_MIN_IS_WHITE, _MIN_IS_BLACK, _RGB = 0, 1, 2
_COLOUR_SAMPLES = {_MIN_IS_BLACK: 1, _RGB: 3}  # gray is expanded to RGB by the caller
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")  # little- and big-endian classic TIFF (not BigTIFF)
_UNCOMPRESSED, _DEFLATE = 1, (8, 32946)  # 32946: the pre-standard deflate code, still written
_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 1, 2
_SEPARATE_PLANES = 2
_HORIZONTAL_DIFFERENCE = 2


class TiffDecodeError(ValueError):
    """The TIFF data is truncated or corrupt, or its layout is not read; the message says how
    (it does not name the file)."""


@dataclass(frozen=True, eq=False)
class DecodedTiff16:
    """``colour`` uint16 H×W×3 (RGB) or H×W×1 (gray) as stored (not yet turned upright),
    ``alpha`` uint16 H×W or None (colour already divided by it when the file stores premultiplied
    colour), and the TIFF orientation tag (1 when absent)."""

    colour: np.ndarray
    alpha: np.ndarray | None
    orientation: int


def read_tiff_tags(path: Path) -> Mapping[int, Any] | None:
    """The tags of the first image in a TIFF file (as Pillow's ``tag_v2`` holds them, orientation
    included), or None when ``path`` is not a classic TIFF. Read here rather than through
    ``Image.open``, which refuses a 16-bit gray+alpha TIFF before its tags can be seen.

    A first tag directory cut short or placed past the end is refused as corrupt: Pillow only
    warns and keeps what it read, which ends in a misleading "cannot identify" later."""
    with path.open("rb") as file:
        header = file.read(8)
        if header[:4] not in _TIFF_MAGIC:
            return None
        tags = ImageFileDirectory_v2(ifh=header) if len(header) == 8 else None
        if tags is None or not _directory_fits(file, tags.next, header[:2] == b"II"):
            raise TiffDecodeError("corrupt or truncated TIFF (its tag directory is cut short)")
        file.seek(tags.next)
        tags.load(file)
    return tags


def _directory_fits(file: BinaryIO, offset: int, little_endian: bool) -> bool:
    """Whether the tag directory at ``offset`` (entry count, then 12-byte entries) lies within the
    file. The next-directory offset after it may be missing: Pillow reads such files."""
    size = file.seek(0, 2)
    file.seek(offset)
    count_bytes = file.read(2)
    if len(count_bytes) < 2:
        return False
    entries = int.from_bytes(count_bytes, "little" if little_endian else "big")
    return offset + 2 + 12 * entries <= size


def is_decodable_16bit_tiff(tags: Mapping[int, Any]) -> bool:
    """Whether a TIFF's tags describe a 16-bit RGB, RGBA or gray+alpha image that
    :func:`decode_tiff16` reads (plain 16-bit gray is left to Pillow, which keeps all 16 bits)."""
    channels = int(tags.get(_SAMPLES_PER_PIXEL, 1))
    colour = _COLOUR_SAMPLES.get(tags.get(_PHOTOMETRIC, -1))
    return (
        (channels in (3, 4) if colour == 3 else colour == 1 and channels == 2)
        and _values(tags.get(_BITS, (1,))) == (16,) * channels
        and set(_values(tags.get(_SAMPLE_FORMAT, (1,)))) == {1}  # unsigned integers
        and tags.get(_COMPRESSION, _UNCOMPRESSED) in (_UNCOMPRESSED, *_DEFLATE)
        and tags.get(_PREDICTOR, 1) in (1, _HORIZONTAL_DIFFERENCE)
        and _TILE_WIDTH not in tags
        and _STRIP_OFFSETS in tags
        and _STRIP_BYTE_COUNTS in tags
    )


def refuse_undecodable_16bit_gray_alpha(tags: Mapping[int, Any]) -> None:
    """Refuse a 16-bit gray+alpha TIFF that :func:`decode_tiff16` cannot read: Pillow opens none,
    and its "cannot identify" error would blame the sample format."""
    gray = tags.get(_PHOTOMETRIC) in (_MIN_IS_WHITE, _MIN_IS_BLACK)
    two_16bit_samples = _values(tags.get(_BITS, (1,))) == (16, 16)
    if gray and two_16bit_samples and not is_decodable_16bit_tiff(tags):
        raise TiffDecodeError(
            "a 16-bit gray+alpha TIFF in a layout this reader does not decode (it reads "
            "unsigned samples, black as zero, in strips, uncompressed or deflate); convert it "
            "to a 16-bit gray+alpha PNG, or save the TIFF that way"
        )


def has_alpha_sample(tags: Mapping[int, Any]) -> bool:
    """Whether a TIFF that :func:`is_decodable_16bit_tiff` accepted stores alpha after its colour
    (an extra sample of unspecified meaning is not alpha; Pillow drops it too)."""
    extra = _values(tags.get(_EXTRA_SAMPLES, ()))
    has_extra = int(tags[_SAMPLES_PER_PIXEL]) > _COLOUR_SAMPLES[tags[_PHOTOMETRIC]]
    return has_extra and bool(extra) and extra[0] in (_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA)


def stored_size(tags: Mapping[int, Any]) -> tuple[int, int]:
    """(width, height) as stored, before orientation; a TIFF without them is corrupt."""
    if _WIDTH not in tags or _HEIGHT not in tags:
        raise TiffDecodeError("corrupt TIFF (no ImageWidth or ImageLength tag)")
    return int(tags[_WIDTH]), int(tags[_HEIGHT])


def decode_tiff16(data: bytes, tags: Mapping[int, Any]) -> DecodedTiff16:
    """Decode the first image of a TIFF file (``data``, its bytes) from its parsed ``tags``
    (:func:`read_tiff_tags`), which :func:`is_decodable_16bit_tiff` accepted."""
    width, height = stored_size(tags)
    channels = int(tags[_SAMPLES_PER_PIXEL])
    planes = channels if tags.get(_PLANAR_CONFIG, 1) == _SEPARATE_PLANES else 1
    rows_per_strip = min(int(tags.get(_ROWS_PER_STRIP, height)), height)
    if rows_per_strip < 1:
        raise TiffDecodeError(f"corrupt TIFF (RowsPerStrip is {rows_per_strip})")
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
    colour, alpha = _split_alpha(samples, tags)
    return DecodedTiff16(colour, alpha, int(tags.get(_ORIENTATION, 1)))


def _split_alpha(
    samples: np.ndarray, tags: Mapping[int, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour, alpha or None); an extra sample of unspecified meaning is dropped."""
    colour = samples[..., : _COLOUR_SAMPLES[tags[_PHOTOMETRIC]]]
    if not has_alpha_sample(tags):
        return np.ascontiguousarray(colour), None
    alpha = np.ascontiguousarray(samples[..., -1])
    if _values(tags[_EXTRA_SAMPLES])[0] == _ASSOCIATED_ALPHA:
        # Colour stored premultiplied: divide it back out.
        scale = np.where(alpha > 0, 65535.0 / np.maximum(alpha, 1), 0.0)[..., None]
        colour = np.round(np.clip(colour * scale, 0, 65535)).astype(np.uint16)
    return np.ascontiguousarray(colour), alpha


def _values(value: Any) -> tuple[int, ...]:
    """A TIFF tag's values as a tuple (Pillow gives a single value as a bare number)."""
    return tuple(int(v) for v in value) if isinstance(value, tuple | list) else (int(value),)
