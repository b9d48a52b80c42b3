"""dtkd_pipeline.png16: the numpy codec for 16-bit colour PNGs, through read_image/write_image."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtkd_pipeline.images import read_image, write_image
from tests.image_helpers import smooth_rgb

RNG = np.random.default_rng(0)
# Adam7 interlace passes (x0, y0, dx, dy), from the PNG specification.
ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_round_trip_is_exact(tmp_path: Path, channels: int) -> None:
    samples = RNG.integers(0, 65536, (19, 27, channels)).astype(np.uint16)
    samples[:10] = np.cumsum(RNG.integers(0, 300, (10, 27, channels)), axis=1)  # smooth rows
    colour = samples[..., :3] if channels >= 3 else samples[..., 0]
    alpha = samples[..., -1] if channels in (2, 4) else None
    path = write_image(tmp_path / "a.png", colour, alpha, bit_depth=16)
    loaded = read_image(path)
    assert loaded.bit_depth == 16
    expected_rgb = samples[..., :3] if channels >= 3 else np.repeat(samples[..., :1], 3, axis=2)
    np.testing.assert_array_equal(np.round(loaded.rgb * 65535), expected_rgb)
    if alpha is None:
        assert loaded.alpha is None
    else:
        np.testing.assert_array_equal(np.round(loaded.alpha * 65535), alpha)


def test_16bit_png_is_a_valid_png_for_pillow(tmp_path: Path) -> None:
    # Pillow keeps the high byte of 16-bit colour samples: an independent check of our encoder.
    samples = np.round(smooth_rgb(40, 50) * 65535).astype(np.uint16)
    path = write_image(tmp_path / "a.png", samples, bit_depth=16)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), (samples >> 8).astype(np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    """PNG row filtering written out byte by byte, straight from the PNG specification."""
    out = bytearray()
    for i, value in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((value - pred) % 256)
    return bytes([kind]) + bytes(out)


def _encode_rows(samples: np.ndarray) -> bytes:
    height, width, channels = samples.shape
    bpp = 2 * channels
    raw = samples.astype(">u2").tobytes()
    stride = width * bpp
    prev = bytes(stride)
    body = b""
    for y in range(height):
        row = raw[y * stride : (y + 1) * stride]
        body += _filter_row(y % 5, row, prev, bpp)  # every filter type in turn
        prev = row
    return body


@pytest.mark.parametrize("interlace", [0, 1])
def test_16bit_png_decoder_handles_all_filters_and_adam7(tmp_path: Path, interlace: int) -> None:
    height, width = 13, 11
    samples = RNG.integers(0, 65536, (height, width, 4)).astype(np.uint16)
    if interlace:
        body = b""
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.size:
                body += _encode_rows(sub)
    else:
        body = _encode_rows(samples)
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, interlace)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    png += _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b"")
    path = tmp_path / "hand.png"
    path.write_bytes(png)
    loaded = read_image(path)
    np.testing.assert_array_equal(np.round(loaded.rgb * 65535), samples[..., :3])
    np.testing.assert_array_equal(np.round(loaded.alpha * 65535), samples[..., 3])
