"""dtkd_pipeline.images: reading, probing, writing and listing images."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dtkd_pipeline import images
from dtkd_pipeline.images import ImageReadError, read_image, write_image
from tests.image_helpers import smooth_rgb

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------- round trips


def test_8bit_rgb_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    path = write_image(tmp_path / "a.png", pixels)
    loaded = read_image(path)
    assert loaded.bit_depth == 8 and loaded.alpha is None and loaded.path == path
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == (21, 34, 3)
    np.testing.assert_array_equal(images.to_uint8(loaded.rgb), pixels)


def test_gray_becomes_three_channels(tmp_path: Path) -> None:
    gray8 = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    gray16 = RNG.integers(0, 65536, (9, 7)).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")  # Pillow writes 16-bit gray itself
    loaded8, loaded16 = read_image(tmp_path / "g8.png"), read_image(tmp_path / "g16.png")
    assert loaded8.bit_depth == 8 and loaded16.bit_depth == 16
    for loaded, gray, peak in ((loaded8, gray8, 255), (loaded16, gray16, 65535)):
        assert loaded.rgb.shape == (9, 7, 3)
        for c in range(3):
            np.testing.assert_array_equal(np.round(loaded.rgb[..., c] * peak), gray)


def test_16bit_gray_tiff_and_exif_orientation(tmp_path: Path) -> None:
    gray16 = RNG.integers(0, 65536, (6, 10)).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    loaded = read_image(tmp_path / "g16.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(np.round(loaded.rgb[..., 0] * 65535), gray16)

    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    rotated = read_image(tmp_path / "r.jpg").rgb
    assert rotated.shape == (16, 8, 3)
    assert rotated[:4].mean() > 0.9 and rotated[-4:].mean() < 0.1  # white half is now on top


def _with_exif_chunk(path: Path, orientation: int, after_pixels: bool) -> Path:
    """Insert an eXIf chunk into a PNG, after IHDR or after the last IDAT (both are legal)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    chunk = (
        struct.pack(">I", len(body))
        + b"eXIf"
        + body
        + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    )
    data = path.read_bytes()
    at = data.rindex(b"IEND") - 4 if after_pixels else 8 + 25  # signature + IHDR chunk
    path.write_bytes(data[:at] + chunk + data[at:])
    return path


def test_every_exif_orientation_matches_pillow_on_numpy_decoded_pngs(tmp_path: Path) -> None:
    """16-bit colour PNGs bypass Pillow, so their EXIF orientation is applied here; each of the
    eight values must turn the pixels exactly as ImageOps.exif_transpose does."""
    pixels = RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        stored = Image.fromarray(pixels)
        exif = stored.getexif()
        exif[0x0112] = orientation
        stored.info["exif"] = exif.tobytes()
        upright = np.asarray(ImageOps.exif_transpose(stored))
        np.testing.assert_array_equal(images._orient(pixels, orientation), upright)

        path = write_image(tmp_path / f"o{orientation}.png", pixels / 255.0, bit_depth=16)
        loaded = read_image(_with_exif_chunk(path, orientation, after_pixels=orientation % 2 == 0))
        assert loaded.bit_depth == 16
        np.testing.assert_array_equal(images.to_uint8(loaded.rgb), upright, str(orientation))


def test_probe_image_sees_a_png_exif_chunk_after_the_pixel_data(tmp_path: Path) -> None:
    for name, bits in (("rgb8.png", 8), ("rgba16.png", 16)):
        rgb = smooth_rgb(8, 12)
        alpha = rgb[..., 0] if bits == 16 else None
        path = _with_exif_chunk(write_image(tmp_path / name, rgb, alpha, bit_depth=bits), 6, True)
        header, loaded = images.probe_image(path), read_image(path)
        assert (header.height, header.width) == loaded.rgb.shape[:2] == (12, 8), name
        if alpha is not None:
            assert loaded.alpha is not None and loaded.alpha.shape == (12, 8)


def test_rgba_keeps_alpha_separately(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(images.to_uint8(loaded.rgb), rgba[..., :3])
    np.testing.assert_array_equal(images.to_uint8(loaded.alpha), rgba[..., 3])
    write_image(tmp_path / "b.png", loaded.rgb, loaded.alpha)
    assert Image.open(tmp_path / "b.png").mode == "RGBA"


def test_a_gray_tiff_with_premultiplied_alpha_reads_like_a_premultiplied_rgba_one(
    tmp_path: Path,
) -> None:
    """Pillow opens 8-bit gray + associated alpha as mode "La"; its colour is divided back out
    by alpha, as for premultiplied RGBA, and the alpha is kept separately."""
    tifffile = pytest.importorskip("tifffile")
    alpha = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    alpha[0, :2] = (0, 255)
    gray = (RNG.integers(0, 256, (6, 7)) * alpha // 255).astype(np.uint8)  # premultiplied
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([gray, alpha]), extrasamples=[1])
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([gray, gray, gray, alpha]), extrasamples=[1])
    assert Image.open(tmp_path / "la.tif").mode == "La"
    la, rgba = read_image(tmp_path / "la.tif"), read_image(tmp_path / "rgba.tif")
    np.testing.assert_array_equal(la.rgb, rgba.rgb)
    assert la.alpha is not None and rgba.alpha is not None
    np.testing.assert_array_equal(la.alpha, rgba.alpha)
    np.testing.assert_array_equal(la.alpha, alpha / np.float32(255))
    seen = alpha > 0
    np.testing.assert_allclose((la.rgb[..., 0] * la.alpha)[seen], gray[seen] / 255, atol=1 / 255)
    assert la.rgb[0, 1, 0] == gray[0, 1] / np.float32(255)  # opaque: stored as it is
    header = images.probe_image(tmp_path / "la.tif")
    assert (header.height, header.width, header.bit_depth, header.has_alpha) == (6, 7, 8, True)


def test_palette_images_are_expanded(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, 768, dtype=np.uint8)
    index = RNG.integers(0, 256, (5, 9), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.tolist())
    image.save(tmp_path / "p.png")
    loaded = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(images.to_uint8(loaded.rgb), palette.reshape(256, 3)[index])
    assert loaded.alpha is None
    image.save(tmp_path / "pt.png", transparency=int(index[0, 0]))
    alpha = read_image(tmp_path / "pt.png").alpha
    np.testing.assert_array_equal(alpha, (index != index[0, 0]).astype(np.float32))


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".tif", ".bmp"])
def test_jpeg_webp_tiff_bmp_round_trip_within_their_precision(tmp_path: Path, suffix: str) -> None:
    rgb = smooth_rgb(32, 48)
    loaded = read_image(write_image(tmp_path / f"a{suffix.upper()}", rgb))
    error = np.abs(loaded.rgb - rgb)
    if suffix == ".jpg":  # lossy
        assert error.mean() < 0.01
    else:
        assert error.max() <= 0.5 / 255 + 1e-6


def test_write_is_atomic_and_checks_arguments(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4, 3)), bit_depth=16)
    with pytest.raises(TypeError, match="8-bit image must be float or uint8"):
        write_image(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint16), bit_depth=8)
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "b.jpg", np.zeros((4, 4, 3)), np.ones((4, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# ------------------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = write_image(tmp_path / "good.png", smooth_rgb(64, 64)).read_bytes()
    jpeg = write_image(tmp_path / "good.jpg", smooth_rgb(64, 64)).read_bytes()
    good16 = write_image(tmp_path / "g16.png", smooth_rgb(64, 64), bit_depth=16).read_bytes()
    corrupt = bytearray(good)
    corrupt[60:80] = b"\x00" * 20  # inside IDAT: CRC and zlib both break
    files = {
        "empty": b"",
        "text": b"this is not an image\n",
        "truncated_png": good[: len(good) // 2],
        "truncated_jpg": jpeg[: len(jpeg) // 2],
        "truncated_png16": good16[: len(good16) // 2],
        "corrupt_png": bytes(corrupt),
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / f"{name}{'.jpg' if 'jpg' in name else '.png'}"
        path.write_bytes(data)
        paths[name] = path
    return paths


def test_bad_files_raise_image_read_error_naming_the_file(tmp_path: Path) -> None:
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert str(path) in str(info.value), name
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    assert issubclass(ImageReadError, ValueError)


def _varied_images(tmp_path: Path) -> list[Path]:
    """8/16-bit, gray, alpha, palette with a transparent index, EXIF-rotated, other formats."""
    rgb = smooth_rgb(8, 12)
    paths = [
        write_image(tmp_path / "rgb8.png", rgb),
        write_image(tmp_path / "rgba16.png", rgb, rgb[..., 0], bit_depth=16),
        write_image(tmp_path / "rgb16.png", rgb, bit_depth=16),
        write_image(tmp_path / "rgb.tif", rgb),
        write_image(tmp_path / "rgb.webp", rgb),
    ]
    Image.fromarray(RNG.integers(0, 65536, (9, 7)).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(RNG.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(RNG.integers(0, 256, (5, 9), dtype=np.uint8), "P")
    palette.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
    palette.save(tmp_path / "pt.png", transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "r.png", exif=exif)
    names = ("g16.png", "la.png", "pt.png", "r.jpg", "r.png")
    return paths + [tmp_path / name for name in names]


def test_probe_image_promises_what_read_image_delivers(tmp_path: Path) -> None:
    for path in _varied_images(tmp_path):
        header, loaded = images.probe_image(path), read_image(path)
        assert (header.height, header.width) == loaded.rgb.shape[:2], path.name
        assert header.bit_depth == loaded.bit_depth, path.name
        assert header.has_alpha == (loaded.alpha is not None), path.name


def test_probe_image_gives_a_rotated_tiff_its_upright_size(tmp_path: Path) -> None:
    """Pillow opens a TIFF with its orientation tag already applied to the size: probing must not
    turn it a second time."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "r.tif", exif=exif)
    header, loaded = images.probe_image(tmp_path / "r.tif"), read_image(tmp_path / "r.tif")
    assert loaded.rgb.shape[:2] == (16, 8)
    assert (header.height, header.width) == (16, 8)


def test_probe_image_refuses_what_the_header_shows_is_not_an_image(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    for name in ("empty", "text"):
        with pytest.raises(ImageReadError, match=re.escape(str(bad[name]))):
            images.probe_image(bad[name])
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match="floating-point"):
        images.probe_image(tmp_path / "float.tif")
    # Truncated pixel data passes the header and is found only when decoding.
    assert images.probe_image(bad["truncated_png"]).width == 64
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(bad["truncated_png"])


def test_a_float_colour_tiff_is_refused_saying_which_tiffs_are_read(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(
        tmp_path / "f.tif", RNG.random((8, 8, 3)).astype(np.float32), photometric="rgb"
    )
    with pytest.raises(ImageReadError, match="only 8- and 16-bit integer samples are read"):
        read_image(tmp_path / "f.tif")


# ----------------------------------------------------------------------------------- conversions


def test_to_uint8_rounds_half_to_even_and_clamps() -> None:
    x = np.array([-0.1, 0.0, 0.5, 0.25, 1.0, 1.7], np.float32)  # 0.5*255 = 127.5 -> 128 (even)
    expected = np.array([0, 0, 128, 64, 255, 255], np.uint8)  # 0.25*255 = 63.75 -> 64
    np.testing.assert_array_equal(images.to_uint8(x), expected)
    np.testing.assert_array_equal(images.to_uint8(torch.from_numpy(x)).numpy(), expected)
    halves = np.array([0.5, 1.5, 2.5, 3.5], np.float32) / 255  # not exact in float32: match torch
    np.testing.assert_array_equal(
        images.to_uint8(halves), images.to_uint8(torch.from_numpy(halves)).numpy()
    )


# --------------------------------------------------------------------------------------- listing


def test_list_images_sorted_case_insensitive(tmp_path: Path) -> None:
    names = ["b.PNG", "a.jpg", "c.JpEg", "d.webp", "e.tif", "f.TIFF", "g.bmp", "notes.txt"]
    for name in [*names, ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a folder with an image suffix is not an image
    found = [p.name for p in images.list_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "c.JpEg", "d.webp", "e.tif", "f.TIFF", "g.bmp"]
    recursive = [p.relative_to(tmp_path).as_posix() for p in images.list_images(tmp_path, True)]
    assert recursive == [*found, "sub/0.png"]
    with pytest.raises(NotADirectoryError, match="missing does not exist"):
        images.list_images(tmp_path / "missing")
