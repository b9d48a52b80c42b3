"""dtkd_pipeline.tiff16: 16-bit RGB(A) and gray+alpha TIFFs read at full depth, through
read_image/probe_image.

The files are written by tifffile, an independent TIFF writer (a dev dependency).
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from dtkd_pipeline.images import ImageReadError, probe_image, read_image

RNG = np.random.default_rng(0)


def _samples(height: int, width: int, channels: int) -> np.ndarray:
    """Random 16-bit samples whose low bytes matter (an 8-bit read cannot match them)."""
    return RNG.integers(0, 65536, (height, width, channels)).astype(np.uint16)


def _write(path: Path, samples: np.ndarray, photometric: str = "rgb", **options: Any) -> Path:
    if options.get("planarconfig") == "separate":
        samples = np.moveaxis(samples, -1, 0)  # tifffile takes planes first
    tifffile.imwrite(path, samples, photometric=photometric, **options)
    return path


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"byteorder": ">"},
        {"compression": "zlib"},
        {"compression": "zlib", "predictor": True},
        {"planarconfig": "separate", "compression": "zlib", "predictor": True},
        {"rowsperstrip": 3, "byteorder": ">", "predictor": True, "compression": "zlib"},
    ],
    ids=["plain", "big-endian", "deflate", "predictor", "planes", "strips"],
)
def test_16bit_rgb_tiff_is_read_at_full_depth(tmp_path: Path, options: dict[str, Any]) -> None:
    samples = _samples(11, 13, 3)
    path = _write(tmp_path / "rgb16.tif", samples, **options)
    loaded, header = read_image(path), probe_image(path)
    assert loaded.bit_depth == header.bit_depth == 16 and loaded.alpha is None
    np.testing.assert_array_equal(np.round(loaded.rgb * 65535), samples)
    assert (header.height, header.width, header.has_alpha) == (11, 13, False)


def test_16bit_rgba_tiff_keeps_its_alpha_at_full_depth(tmp_path: Path) -> None:
    samples = _samples(7, 9, 4)
    path = _write(tmp_path / "rgba16.tif", samples, extrasamples=["unassalpha"])
    loaded, header = read_image(path), probe_image(path)
    assert loaded.bit_depth == header.bit_depth == 16 and header.has_alpha
    np.testing.assert_array_equal(np.round(loaded.rgb * 65535), samples[..., :3])
    assert loaded.alpha is not None
    np.testing.assert_array_equal(np.round(loaded.alpha * 65535), samples[..., 3])


def test_premultiplied_16bit_tiff_colour_is_divided_by_its_alpha(tmp_path: Path) -> None:
    straight = _samples(6, 8, 3).astype(np.float64) / 65535
    alpha = RNG.integers(1, 65536, (6, 8)).astype(np.float64) / 65535
    alpha[0, 0] = 0.0  # fully transparent: no colour to recover, read as black
    premultiplied = np.round(np.dstack([straight * alpha[..., None], alpha]) * 65535)
    path = _write(
        tmp_path / "pre.tif", premultiplied.astype(np.uint16), extrasamples=["assocalpha"]
    )
    loaded = read_image(path)
    assert loaded.alpha is not None
    np.testing.assert_array_equal(
        loaded.alpha, (np.round(alpha * 65535) / 65535).astype(np.float32)
    )
    visible = alpha > 0.01  # dividing by a tiny alpha magnifies the premultiplied rounding
    np.testing.assert_allclose(loaded.rgb[visible], straight[visible], atol=1e-3)
    np.testing.assert_array_equal(loaded.rgb[0, 0], 0.0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"planarconfig": "separate", "compression": "zlib", "predictor": True},
        {"rowsperstrip": 3, "byteorder": ">", "extratags": [(274, "H", 1, 6, True)]},
    ],
    ids=["plain", "planes", "strips-rotated"],
)
def test_16bit_gray_alpha_tiff_reads_as_three_equal_channels_and_its_alpha(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """As an 8-bit gray+alpha (LA) image reads: gray in R, G and B, alpha beside it; at 16 bits."""
    samples = _samples(7, 9, 2)
    path = _write(
        tmp_path / "la16.tif", samples, "minisblack", extrasamples=["unassalpha"], **options
    )
    if options.get("extratags"):  # orientation 6: rotate 90° clockwise to display
        samples = np.rot90(samples, k=-1)
    loaded, header = read_image(path), probe_image(path)
    assert loaded.bit_depth == header.bit_depth == 16 and header.has_alpha
    assert (header.height, header.width) == samples.shape[:2]
    np.testing.assert_array_equal(np.round(loaded.rgb * 65535), np.repeat(samples[..., :1], 3, 2))
    assert loaded.alpha is not None
    np.testing.assert_array_equal(np.round(loaded.alpha * 65535), samples[..., 1])


def test_premultiplied_16bit_gray_alpha_tiff_is_divided_by_its_alpha(tmp_path: Path) -> None:
    straight = RNG.integers(0, 65536, (6, 8)).astype(np.float64) / 65535
    alpha = RNG.integers(1, 65536, (6, 8)).astype(np.float64) / 65535
    alpha[0, 0] = 0.0  # fully transparent: read as black, as for premultiplied RGBA
    premultiplied = np.round(np.dstack([straight * alpha, alpha]) * 65535).astype(np.uint16)
    path = _write(tmp_path / "pre.tif", premultiplied, "minisblack", extrasamples=["assocalpha"])
    loaded = read_image(path)
    assert loaded.alpha is not None
    np.testing.assert_array_equal(np.round(loaded.alpha * 65535), premultiplied[..., 1])
    visible = alpha > 0.01  # dividing by a tiny alpha magnifies the premultiplied rounding
    for channel in range(3):
        np.testing.assert_allclose(loaded.rgb[..., channel][visible], straight[visible], atol=1e-3)
    np.testing.assert_array_equal(loaded.rgb[0, 0], 0.0)


def test_a_16bit_gray_alpha_tiff_in_tiles_is_refused_naming_the_file_and_what_to_save(
    tmp_path: Path,
) -> None:
    """Pillow opens no 16-bit gray+alpha TIFF, so one this reader cannot decode is refused with
    its layout named, not with Pillow's "cannot identify" (which blames the sample format)."""
    path = _write(
        tmp_path / "tiled.tif",
        _samples(32, 32, 2),
        "minisblack",
        extrasamples=["unassalpha"],
        tile=(16, 16),
    )
    expected = (
        f"{re.escape(str(path))}: a 16-bit gray\\+alpha TIFF in a layout .*16-bit gray\\+alpha PNG"
    )
    for reader in (read_image, probe_image):
        with pytest.raises(ImageReadError, match=expected):
            reader(path)


def test_16bit_tiff_orientation_turns_it_upright_as_pillow_does(tmp_path: Path) -> None:
    """Pillow turns the 8-bit views upright (the high bytes read from the file, the low bytes
    written as an 8-bit image with the same orientation): together they are the reference."""
    samples = _samples(5, 8, 3)
    for orientation in range(1, 9):
        path = _write(
            tmp_path / f"o{orientation}.tif", samples, extratags=[(274, "H", 1, orientation, True)]
        )
        exif = Image.Exif()
        exif[0x0112] = orientation
        low = Image.fromarray((samples & 0xFF).astype(np.uint8))
        low.save(tmp_path / "low.tif", exif=exif)
        with Image.open(path) as high, Image.open(tmp_path / "low.tif") as low:
            high_bytes = np.asarray(ImageOps.exif_transpose(high)).astype(np.uint16)
            low_bytes = np.asarray(ImageOps.exif_transpose(low)).astype(np.uint16)
        loaded, header = read_image(path), probe_image(path)
        assert loaded.bit_depth == 16
        upright = (high_bytes << 8) | low_bytes
        np.testing.assert_array_equal(np.round(loaded.rgb * 65535), upright, str(orientation))
        assert (header.height, header.width) == loaded.rgb.shape[:2], orientation


def test_a_16bit_tiff_this_reader_cannot_decode_warns_naming_the_file(tmp_path: Path) -> None:
    """Tiled TIFFs go to Pillow, which keeps only the high byte of each sample: say so."""
    samples = _samples(32, 32, 3)
    path = _write(tmp_path / "tiled.tif", samples, tile=(16, 16))
    expected = "16-bit colour image read at 8-bit precision.*read in full only in strips"
    expected = f"{re.escape(str(path))}: {expected}"
    with pytest.warns(UserWarning, match=expected):
        loaded = read_image(path)
    assert loaded.bit_depth == probe_image(path).bit_depth == 8
    np.testing.assert_array_equal(np.round(loaded.rgb * 255), samples >> 8)


def test_truncated_16bit_tiff_strip_data_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut.tif", _samples(16, 16, 3))
    with tifffile.TiffFile(path) as tif:  # tifffile writes the header first, the pixels last
        assert tif.pages[0].dataoffsets[0] > tif.pages[0].offset
    path.write_bytes(path.read_bytes()[:-100])
    assert probe_image(path).bit_depth == 16  # the header is intact
    with pytest.raises(ImageReadError, match=f"{re.escape(str(path))}: truncated TIFF"):
        read_image(path)


@pytest.mark.parametrize("kept", [6, 30])  # the header cut; the tag directory cut
@pytest.mark.parametrize("bits", [8, 16])
def test_a_tiff_cut_inside_its_tag_directory_is_refused_as_truncated_without_pillow_warnings(
    tmp_path: Path, kept: int, bits: int
) -> None:
    samples = _samples(16, 16, 3) >> (16 - bits)
    path = _write(tmp_path / "cut.tif", samples.astype(np.uint8 if bits == 8 else np.uint16))
    path.write_bytes(path.read_bytes()[:kept])
    expected = f"{re.escape(str(path))}: corrupt or truncated TIFF \\(its tag directory is cut"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Corrupt EXIF data" would be one
        for read in (probe_image, read_image):
            with pytest.raises(ImageReadError, match=expected):
                read(path)


def _overwrite_tag(path: Path, code: int, *, new_code: int | None = None, value: int = -1) -> None:
    """Damage one tag of a little-endian TIFF's first image in place: give it ``new_code`` (a
    private code: the tag is gone) or store ``value`` as its single LONG value."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[code]
        entry, value_at = tag.offset, tag.valueoffset
    data = bytearray(path.read_bytes())
    if new_code is not None:
        data[entry : entry + 2] = struct.pack("<H", new_code)
    if value >= 0:
        data[value_at : value_at + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("channels", "photometric"), [(3, "rgb"), (2, "minisblack")], ids=["rgb", "gray-alpha"]
)
@pytest.mark.parametrize("size_tag", [256, 257], ids=["width", "height"])
def test_a_16bit_tiff_without_its_size_tags_is_refused_naming_the_file(
    tmp_path: Path, channels: int, photometric: str, size_tag: int
) -> None:
    extra = {"extrasamples": ["unassalpha"]} if channels == 2 else {}
    path = _write(tmp_path / "sizeless.tif", _samples(8, 8, channels), photometric, **extra)
    _overwrite_tag(path, size_tag, new_code=65000)
    for reader in (read_image, probe_image):
        with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: "):
            reader(path)


def test_a_16bit_tiff_with_zero_rows_per_strip_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = _write(tmp_path / "zero_rows.tif", _samples(8, 8, 3))
    _overwrite_tag(path, 278, value=0)  # RowsPerStrip
    expected = f"{re.escape(str(path))}: corrupt TIFF \\(RowsPerStrip is 0\\)"
    with pytest.raises(ImageReadError, match=expected):
        read_image(path)


def test_a_16bit_tiff_over_pillows_pixel_limit_is_refused_as_pillow_refuses_other_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) holds for the 16-bit TIFFs
    decoded here without Pillow too: refused past twice the limit, a warning past it."""
    path = _write(tmp_path / "big16.tif", _samples(8, 8, 3))
    eight_bit = tmp_path / "big8.tif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(eight_bit)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 64 pixels > 2 x 20
    for reader in (read_image, probe_image):
        for image in (eight_bit, path):
            expected = f"^{re.escape(str(image))}: .*64 pixels.*decompression bomb"
            with pytest.raises(ImageReadError, match=expected):
                reader(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # over the limit, under twice it
    for reader in (read_image, probe_image):
        warning = f"^{re.escape(str(path))}: 64 pixels.*decompression bomb"
        with pytest.warns(Image.DecompressionBombWarning, match=warning):
            assert reader(path).bit_depth == 16
