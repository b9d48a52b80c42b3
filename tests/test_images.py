"""dtkd_pipeline.images: reading/writing, MATLAB bicubic imresize, BT.601 luma, listing."""

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
from dtkd_pipeline.images import ImageReadError, imresize, read_image, write_image

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


def _smooth_rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w, y / h, 0.5 + 0.4 * np.sin((x + y) / 5)], axis=-1)


# ----------------------------------------------------------------------------------- round trips


def test_8bit_rgb_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    path = write_image(tmp_path / "a.png", pixels)
    loaded = read_image(path)
    assert loaded.bit_depth == 8 and loaded.alpha is None and loaded.path == path
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == (21, 34, 3)
    np.testing.assert_array_equal(images.to_uint8(loaded.rgb), pixels)


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
    samples = np.round(_smooth_rgb(40, 50) * 65535).astype(np.uint16)
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
        rgb = _smooth_rgb(8, 12)
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
    rgb = _smooth_rgb(32, 48)
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


# ----------------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = write_image(tmp_path / "good.png", _smooth_rgb(64, 64)).read_bytes()
    jpeg = write_image(tmp_path / "good.jpg", _smooth_rgb(64, 64)).read_bytes()
    good16 = write_image(tmp_path / "g16.png", _smooth_rgb(64, 64), bit_depth=16).read_bytes()
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
    rgb = _smooth_rgb(8, 12)
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


# ---------------------------------------------------------------------------------- conversions


def test_to_uint8_rounds_half_to_even_and_clamps() -> None:
    x = np.array([-0.1, 0.0, 0.5, 0.25, 1.0, 1.7], np.float32)  # 0.5*255 = 127.5 -> 128 (even)
    expected = np.array([0, 0, 128, 64, 255, 255], np.uint8)  # 0.25*255 = 63.75 -> 64
    np.testing.assert_array_equal(images.to_uint8(x), expected)
    np.testing.assert_array_equal(images.to_uint8(torch.from_numpy(x)).numpy(), expected)
    halves = np.array([0.5, 1.5, 2.5, 3.5], np.float32) / 255  # not exact in float32: match torch
    np.testing.assert_array_equal(
        images.to_uint8(halves), images.to_uint8(torch.from_numpy(halves)).numpy()
    )


def test_rgb_to_y_bt601() -> None:
    rgb = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0]]], np.float64)
    y = images.rgb_to_y(rgb)
    np.testing.assert_allclose(y, [[16 / 255, 235 / 255, (16 + 65.481) / 255]], atol=1e-6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    y_t = images.rgb_to_y(chw)
    assert y_t.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(y_t[0, 0].numpy(), y, atol=1e-12)


# ------------------------------------------------------------------------------------- imresize


def test_tap_counts_and_normalisation() -> None:
    # kernel width 4/s (+2 guard taps), minus the columns that are zero everywhere
    for scale, taps in ((0.25, 16), (0.5, 8), (2.0, 4), (4.0, 4)):
        weights, indices = images.resize_weights(64, int(64 * scale), scale)
        assert weights.shape[1] == taps, scale
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
        assert indices.min() >= 0 and indices.max() < 64


def test_constant_image_stays_constant() -> None:
    image = np.full((37, 50, 3), 0.3, np.float32)
    for scale in (0.25, 0.5, 1 / 3, 2.0, 4.0):
        np.testing.assert_allclose(imresize(image, scale), 0.3, atol=1e-6)


def test_linear_ramp_is_sampled_at_matlab_coordinates() -> None:
    ramp = np.tile(np.arange(64, dtype=np.float64), (8, 1))[..., None]
    for scale, margin in ((0.25, 2), (0.5, 3), (2.0, 4), (4.0, 8)):
        out = imresize(ramp, scale)[0, :, 0]
        x_out = np.arange(out.size)
        x_in = (x_out + 0.5) / scale - 0.5
        inner = slice(margin, out.size - margin)
        np.testing.assert_allclose(out[inner], x_in[inner], atol=1e-9)


@pytest.mark.parametrize(
    "scale", [np.float32(0.25), np.float64(0.25), torch.tensor(0.25)], ids=["np32", "np64", "torch"]
)
def test_numpy_and_torch_scalar_scales_resize_like_a_float(scale: object) -> None:
    image = np.random.default_rng(0).random((16, 12, 3))
    np.testing.assert_array_equal(imresize(image, scale), imresize(image, 0.25))


def test_hand_computed_downscale_x4_weights() -> None:
    # Output pixel x (1-based) sits at u = 4x - 1.5; an impulse at input 10 (1-based) contributes
    # 0.25 * k((u - 10)/4) with Keys' a = -0.5 kernel, values worked out by hand.
    k = {0.125: 0.9638671875, 0.875: 0.0908203125, 1.125: -0.0478515625, 1.875: -0.0068359375}
    signal = np.zeros((32, 1, 1))
    signal[9] = 1.0
    out = imresize(signal, (0.25, 1.0))[:, 0, 0]
    expected = np.zeros(8)
    expected[:4] = [0.25 * k[1.875], 0.25 * k[0.875], 0.25 * k[0.125], 0.25 * k[1.125]]
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # separable: a 2-D impulse gives the outer product
    image = np.zeros((32, 32))
    image[9, 9] = 1.0
    np.testing.assert_allclose(imresize(image, 0.25), np.outer(out, out), atol=1e-12)


def test_hand_computed_upscale_x2_weights() -> None:
    # k(0.25) = 111/128, k(0.75) = 29/128, k(1.25) = -9/128, k(1.75) = -3/128
    signal = np.zeros((1, 8))
    signal[0, 3] = 1.0
    out = imresize(signal, (1.0, 2.0))[0]
    expected = np.array([0, 0, 0, -3, -9, 29, 111, 111, 29, -9, -3, 0, 0, 0, 0, 0]) / 128
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_interior_matches_pillow_bicubic() -> None:
    # Pillow's BICUBIC is the same a = -0.5 kernel, stretched when shrinking, but clamps at the
    # borders instead of mirroring: away from the borders both must agree.
    image = RNG.random((48, 60)).astype(np.float32)
    for scale in (0.25, 0.5, 2.0):
        out = imresize(image, scale)
        pil = Image.fromarray(image, "F").resize(out.shape[::-1], Image.Resampling.BICUBIC)
        margin = 4 if scale < 1 else 8
        inner = (slice(margin, -margin),) * 2
        np.testing.assert_allclose(out[inner], np.asarray(pil)[inner], atol=1e-5)


def test_shapes_torch_and_validation() -> None:
    image = RNG.random((101, 66, 3)).astype(np.float32)
    out = imresize(image, 0.25)
    assert out.shape == (26, 17, 3) and out.dtype == np.float32  # ceil(in * scale)
    assert imresize(image, output_shape=(50, 40)).shape == (50, 40, 3)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    out_t = imresize(tensor, 0.25)
    assert out_t.shape == (1, 3, 26, 17)
    np.testing.assert_allclose(out_t[0].permute(1, 2, 0).numpy(), out, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one of scale and output_shape"):
        imresize(image, 0.5, output_shape=(10, 10))
    with pytest.raises(TypeError, match="float image in"):
        imresize(np.zeros((4, 4), np.uint8), 0.5)


def test_bicubic_downscale_x4_crops_hr_to_multiple_of_4() -> None:
    hr = RNG.random((51, 66, 3)).astype(np.float32)
    lr, cropped = images.bicubic_downscale_x4(hr)
    assert cropped.shape == (48, 64, 3) and lr.shape == (12, 16, 3)
    np.testing.assert_array_equal(cropped, hr[:48, :64])
    np.testing.assert_allclose(lr, imresize(hr[:48, :64], 0.25))


# -------------------------------------------------------------------------------------- listing


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


def test_a_float_colour_tiff_is_refused_saying_which_tiffs_are_read(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(
        tmp_path / "f.tif", RNG.random((8, 8, 3)).astype(np.float32), photometric="rgb"
    )
    with pytest.raises(ImageReadError, match="only 8- and 16-bit integer samples are read"):
        read_image(tmp_path / "f.tif")
