"""A numpy codec for 16-bit colour PNGs (RGB, RGBA, gray+alpha), which Pillow (13) reads at 8 bits
and cannot write; plus finding a PNG's eXIf chunk without decoding its pixels.

The codec knows bytes, not files: decoding errors raise :class:`PngDecodeError` with a message
that the caller prefixes with the file's name.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DecodedPng16",
    "PngDecodeError",
    "decode_png16",
    "encode_png16",
    "is_16bit_colour_png",
    "png_exif",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD_LEN = 8 + 8 + 13  # signature, IHDR length+type, IHDR data
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class PngDecodeError(ValueError):
    """The PNG data is truncated or corrupt; the message says how (it does not name the file)."""


@dataclass(frozen=True, eq=False)
class DecodedPng16:
    """A 16-bit PNG's samples as stored: ``samples`` uint16 H×W×C (C = 2 gray+alpha, 3 RGB,
    4 RGBA), its tRNS and eXIf chunk bodies (None when absent)."""

    samples: np.ndarray
    transparency: bytes | None
    exif: bytes | None

    @property
    def has_alpha_channel(self) -> bool:
        return self.samples.shape[-1] in (2, 4)


def is_16bit_colour_png(path: Path) -> bool:
    """Whether the file's header announces a 16-bit RGB, RGBA or gray+alpha PNG."""
    with open(path, "rb") as handle:
        head = handle.read(_PNG_HEAD_LEN)
    if len(head) < _PNG_HEAD_LEN or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 4, 6)


def png_exif(path: Path) -> bytes | None:
    """The body of a PNG's eXIf chunk wherever it sits; reads chunk headers and skips the data."""
    with open(path, "rb") as handle:
        handle.seek(len(_PNG_SIGNATURE))
        while len(head := handle.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return handle.read(length)
            if kind == b"IEND":
                break
            handle.seek(length + 4, os.SEEK_CUR)  # chunk data and CRC
    return None


# -------------------------------------------------------------------------------------- decoding


def decode_png16(data: bytes) -> DecodedPng16:
    """Decode a PNG that :func:`is_16bit_colour_png` accepted (any interlace, any row filters)."""
    header, idat, trns, exif = _read_chunks(data)
    width, height, _depth, colour, _compression, _filter, interlace = header
    if width == 0 or height == 0 or interlace > 1:
        raise PngDecodeError(f"corrupt PNG header ({width}×{height}, interlace {interlace})")
    channels = _PNG_CHANNELS[colour]
    raw = zlib.decompress(idat)
    bpp = 2 * channels
    if interlace:
        pixels = _unfilter_adam7(raw, height, width, bpp)
    else:
        pixels = _unfilter(raw, height, width, bpp)
    samples = pixels.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    return DecodedPng16(samples, trns, exif)


def _read_chunks(data: bytes) -> tuple[tuple[int, ...], bytes, bytes | None, bytes | None]:
    """(IHDR fields, joined IDAT data, tRNS body, eXIf body) up to IEND, each chunk's CRC
    checked."""
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    trns: bytes | None = None
    exif: bytes | None = None
    while True:
        if pos + 8 > len(data):
            raise PngDecodeError("truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PngDecodeError(f"truncated PNG (chunk {kind!r} cut short)")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise PngDecodeError(f"corrupt PNG (CRC mismatch in chunk {kind!r})")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            trns = body
        elif kind == b"eXIf":
            exif = body
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise PngDecodeError("corrupt PNG (missing IHDR or IDAT)")
    return header, b"".join(idat), trns, exif


def _unfilter_adam7(raw: bytes, height: int, width: int, bpp: int) -> np.ndarray:
    """Undo the row filters of each Adam7 pass and put its pixels in place; uint8
    (height, width, bpp)."""
    pixels = np.empty((height, width, bpp), np.uint8)
    offset = 0
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pw <= 0 or ph <= 0:
            continue  # empty passes carry no bytes, not even filter bytes
        size = ph * (pw * bpp + 1)
        pixels[y0::dy, x0::dx] = _unfilter(raw[offset : offset + size], ph, pw, bpp)
        offset += size
    return pixels


def _unfilter(raw: bytes, height: int, width: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters; returns uint8 (height, width, bpp).

    Sub/Average/Paeth make each pixel depend on its left, upper and upper-left neighbours, so the
    loop runs over anti-diagonals (all pixels on one are independent): height+width-1 vectorised
    steps instead of one Python step per byte.
    """
    stride = width * bpp
    if len(raw) < height * (stride + 1):
        raise PngDecodeError("truncated PNG (image data cut short)")
    rows = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    kinds = rows[:, 0].astype(np.int16)
    if kinds.max(initial=0) > 4:
        raise PngDecodeError(f"corrupt PNG (unknown row filter {kinds.max()})")
    filtered = rows[:, 1:].reshape(height, width, bpp).astype(np.int16)
    if not kinds.any():
        return filtered.astype(np.uint8)
    # One zero row above and one zero column left: PNG's "outside the image" neighbours.
    out = np.zeros((height + 1, width + 1, bpp), np.int16)
    for diagonal in range(height + width - 1):
        ys = np.arange(max(0, diagonal - width + 1), min(diagonal, height - 1) + 1)
        xs = diagonal - ys
        left, up, corner = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        kind = kinds[ys][:, None]
        estimate = left + up - corner
        dl, du, dc = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - corner)
        paeth = np.where((dl <= du) & (dl <= dc), left, np.where(du <= dc, up, corner))
        predictor = np.choose(kind, (0, left, up, (left + up) >> 1, paeth))
        out[ys + 1, xs + 1] = (filtered[ys, xs] + predictor) & 0xFF
    return out[1:, 1:].astype(np.uint8)


# -------------------------------------------------------------------------------------- encoding


def encode_png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA), which Pillow cannot write for colour."""
    if samples.ndim == 2:
        samples = samples[..., None]
    height, width, channels = samples.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    # astype keeps a non-contiguous layout (e.g. a permuted tensor's view), which view() rejects.
    big_endian = np.ascontiguousarray(samples.astype(">u2"))
    rows = big_endian.view(np.uint8).reshape(height, width * channels * 2)
    body = zlib.compress(_filter_rows(rows, channels * 2).tobytes(), 6)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _filter_rows(rows: np.ndarray, bpp: int, block: int = 256) -> np.ndarray:
    """Per row, the PNG filter with the smallest sum of |signed bytes| (libpng's heuristic).

    Works on blocks of rows to bound the memory of the five candidate filterings.
    """
    parts = []
    for start in range(0, rows.shape[0], block):
        prev = rows[start - 1 : start] if start else np.zeros_like(rows[:1])
        parts.append(_filter_block(rows[start : start + block], prev, bpp))
    return np.concatenate(parts)


def _filter_block(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    cur = rows.astype(np.int16)
    up = np.concatenate([prev, rows[:-1]]).astype(np.int16)
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    corner = np.zeros_like(cur)
    corner[:, bpp:] = up[:, :-bpp]
    estimate = left + up - corner
    dl, du, dc = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - corner)
    paeth = np.where((dl <= du) & (dl <= dc), left, np.where(du <= dc, up, corner))
    candidates = np.stack([cur, cur - left, cur - up, cur - ((left + up) >> 1), cur - paeth]) & 0xFF
    signed = np.minimum(candidates, 256 - candidates)
    best = signed.sum(axis=2).argmin(axis=0)
    chosen = candidates[best, np.arange(rows.shape[0])]
    return np.concatenate([best[:, None], chosen], axis=1).astype(np.uint8)
