"""Image I/O (8/16-bit, gray, RGBA, palette), MATLAB-compatible bicubic resize, and BT.601 luma.

Conventions: numpy images are ``H×W×C`` float in [0, 1], RGB, channels last; torch tensors are
``(..., C, H, W)``, channels first (as the networks take them).

Pillow (13) reads 16-bit *colour* PNGs (RGB, RGBA, gray+alpha) as 8-bit, so those are decoded
here by a small numpy PNG decoder; 16-bit gray PNGs go through Pillow, which keeps all 16 bits.
16-bit colour TIFFs are still read by Pillow at 8-bit precision (a warning says so); convert them
to 16-bit PNG to keep the extra bits.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dtkd_pipeline import atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "ImageReadError",
    "LoadedImage",
    "as_saved_8bit",
    "bicubic_downscale_x4",
    "imresize",
    "list_images",
    "modcrop",
    "probe_image",
    "read_image",
    "resize_weights",
    "rgb_to_y",
    "to_uint8",
    "to_uint16",
    "write_image",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image: ``rgb`` float32 H×W×3 in [0, 1], ``alpha`` float32 H×W or None."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int  # 8 or 16: the precision of the stored samples
    path: Path


# --------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read a PNG/JPEG/WebP/TIFF/BMP file as float32 RGB in [0, 1], alpha kept separately.

    Gray becomes three equal channels; palette images are expanded; EXIF orientation is applied
    (as cv2.imread does). Any failure raises :class:`ImageReadError` naming the file.
    """
    path = _existing_file(path)
    with _reading(path):
        if _is_16bit_colour_png(_png_head(path)):
            return _read_png16(path)
        with Image.open(path) as image:
            image.load()
            # Read the stored bit depth first: the transposed copy has no format or TIFF tags.
            stored_bits = _stored_bits(image)
            return _from_pillow(ImageOps.exif_transpose(image), path, stored_bits)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header promises; :func:`read_image` gives the same size, bit depth
    and alpha, or finds the pixel data corrupt."""

    path: Path
    width: int  # after EXIF orientation, as read_image returns it
    height: int
    bit_depth: int
    has_alpha: bool


def probe_image(path: str | os.PathLike[str]) -> ImageHeader:
    """Read only the header: a cheap pre-scan that names unreadable files before costly work.

    Refuses what :func:`read_image` would refuse from the header alone (not an image, empty,
    float or 32-bit samples); truncated or corrupt pixel data shows only when the image is read.
    """
    path = _existing_file(path)
    with _reading(path):
        deep_colour = _is_16bit_colour_png(_png_head(path))
        with Image.open(path) as image:
            stored_bits = 16 if deep_colour else _stored_bits(image)
            _check_sample_format(image.mode, stored_bits, path)
            width, height = image.size
            if _orientation(image, path) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            bit_depth = 16 if deep_colour or _is_gray16(image.mode, stored_bits) else 8
            return ImageHeader(path, width, height, bit_depth, _has_alpha(image))


_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> (swap rows and columns, then flip rows, flip columns) to display it upright:
# 2 mirror, 3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate 90°
# anticlockwise. 1 and unknown values leave the image as stored.
_EXIF_TRANSFORMS = {
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}
_TRANSPOSING_ORIENTATIONS = {key for key, (swap, _, _) in _EXIF_TRANSFORMS.items() if swap}


def _orientation(image: Image.Image, path: Path) -> int:
    """EXIF orientation without decoding pixels (Pillow's PNG getexif() decodes the image to
    reach an eXIf chunk placed after the pixel data, so PNG chunks are walked here instead)."""
    if image.format != "PNG":
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    return _exif_orientation(_png_exif(path))


def _exif_orientation(raw: bytes | None) -> int:
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(_EXIF_ORIENTATION, 1))


def _png_exif(path: Path) -> bytes | None:
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


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to H×W(×C) samples, as ImageOps.exif_transpose does."""
    swap, flip_rows, flip_cols = _EXIF_TRANSFORMS.get(orientation, (False, False, False))
    if swap:
        pixels = np.swapaxes(pixels, 0, 1)
    if flip_rows:
        pixels = pixels[::-1]
    if flip_cols:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise ImageReadError(f"{path}: a link to {target}, which does not exist") from None
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot access the file ({err})") from None
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    if size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    return path


def _png_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_PNG_HEAD_LEN)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever Pillow raises for a bad file into an ImageReadError naming ``path``."""
    try:
        yield
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        hint = ""
        if path.suffix.lower() in (".tif", ".tiff"):  # Pillow opens no float or 32-bit colour TIFF
            hint = " (TIFF: only 8- and 16-bit integer samples are read; save it as such)"
        raise ImageReadError(
            f"{path}: not an image, or a format Pillow cannot identify{hint}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as err:
        # Pillow signals truncated or corrupt data with all of these.
        raise ImageReadError(f"{path}: corrupt or truncated image ({err})") from err
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: {err}") from err


def _is_gray16(mode: str, stored_bits: int) -> bool:
    return mode in ("I;16", "I;16L", "I;16B", "I;16N") or (mode == "I" and stored_bits == 16)


def _check_sample_format(mode: str, stored_bits: int, path: Path) -> None:
    if mode in ("I", "F") and not _is_gray16(mode, stored_bits):
        raise ImageReadError(
            f"{path}: {'floating-point' if mode == 'F' else '32-bit integer'} images have no "
            "defined [0, 1] range; save it as an 8- or 16-bit image"
        )


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _from_pillow(image: Image.Image, path: Path, stored_bits: int) -> LoadedImage:
    mode = image.mode
    if _is_gray16(mode, stored_bits):
        gray = np.asarray(image).astype(np.float32) / 65535.0
        alpha = None
        key = image.info.get("transparency")
        if isinstance(key, int):  # 16-bit gray PNG with a tRNS colour key
            alpha = (np.asarray(image) != key).astype(np.float32)
        return LoadedImage(np.repeat(gray[..., None], 3, axis=2), alpha, 16, path)
    _check_sample_format(mode, stored_bits, path)
    bit_depth = 8
    if stored_bits > 8:
        warnings.warn(
            f"{path}: {stored_bits}-bit colour image read at 8-bit precision (Pillow's limit); "
            "convert it to 16-bit PNG to keep all bits",
            stacklevel=3,
        )
    if _has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return LoadedImage(
            np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].copy(), bit_depth, path
        )
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(rgb, None, bit_depth, path)


def _stored_bits(image: Image.Image) -> int:
    """Bits per sample in the file (mode "I" is how Pillow holds both 16- and 32-bit integers)."""
    if image.format == "PNG":
        return 16 if image.mode.startswith("I") else 8
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258, (8,))
        return max(bits) if isinstance(bits, tuple | list) else int(bits)
    return 8


# ------------------------------------------------------------- 16-bit colour PNG (numpy decoder)

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


def _is_16bit_colour_png(head: bytes) -> bool:
    if len(head) < _PNG_HEAD_LEN or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path) -> LoadedImage:
    data = path.read_bytes()
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    trns: bytes | None = None
    exif: bytes | None = None
    while True:
        if pos + 8 > len(data):
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ImageReadError(f"{path}: truncated PNG (chunk {kind!r} cut short)")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise ImageReadError(f"{path}: corrupt PNG (CRC mismatch in chunk {kind!r})")
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
        raise ImageReadError(f"{path}: corrupt PNG (missing IHDR or IDAT)")
    width, height, _depth, colour, _compression, _filter, interlace = header
    if width == 0 or height == 0 or interlace > 1:
        raise ImageReadError(
            f"{path}: corrupt PNG header ({width}×{height}, interlace {interlace})"
        )
    channels = _PNG_CHANNELS[colour]
    raw = zlib.decompress(b"".join(idat))
    bpp = 2 * channels
    if interlace:
        pixels = np.empty((height, width, bpp), np.uint8)
        offset = 0
        for x0, y0, dx, dy in _ADAM7:
            pw, ph = -(-(width - x0) // dx), -(-(height - y0) // dy)
            if pw <= 0 or ph <= 0:
                continue  # empty passes carry no bytes, not even filter bytes
            size = ph * (pw * bpp + 1)
            pixels[y0::dy, x0::dx] = _unfilter(raw[offset : offset + size], ph, pw, bpp, path)
            offset += size
    else:
        pixels = _unfilter(raw, height, width, bpp, path)
    samples = pixels.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    values = samples.astype(np.float32) / 65535.0
    alpha = None
    if colour in (4, 6):
        alpha = np.ascontiguousarray(values[..., -1])
        values = values[..., :-1]
    elif trns is not None and len(trns) == 6:  # RGB colour key: that exact colour is transparent
        key = np.frombuffer(trns, ">u2")
        alpha = (~np.all(samples == key, axis=-1)).astype(np.float32)
    rgb = np.repeat(values, 3, axis=2) if values.shape[-1] == 1 else values
    orientation = _exif_orientation(exif)
    if alpha is not None:
        alpha = _orient(alpha, orientation)
    return LoadedImage(_orient(rgb, orientation), alpha, 16, path)


def _unfilter(raw: bytes, height: int, width: int, bpp: int, path: Path) -> np.ndarray:
    """Undo PNG row filters; returns uint8 (height, width, bpp).

    Sub/Average/Paeth make each pixel depend on its left, upper and upper-left neighbours, so the
    loop runs over anti-diagonals (all pixels on one are independent): height+width-1 vectorised
    steps instead of one Python step per byte.
    """
    stride = width * bpp
    if len(raw) < height * (stride + 1):
        raise ImageReadError(f"{path}: truncated PNG (image data cut short)")
    rows = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    kinds = rows[:, 0].astype(np.int16)
    if kinds.max(initial=0) > 4:
        raise ImageReadError(f"{path}: corrupt PNG (unknown row filter {kinds.max()})")
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


# --------------------------------------------------------------------------------------- writing


def to_uint8(x: Array) -> Array:
    """The SR convention: round(clamp(x, 0, 1) · 255), rounding half to even (like torch.round)."""
    if isinstance(x, np.ndarray):
        return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return (x.clamp(0, 1) * 255).round().to(_torch().uint8)


def as_saved_8bit(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an 8-bit PNG would store it, back in [0, 1]: what metrics should score."""
    return (x.clamp(0, 1) * 255).round() / 255


def to_uint16(x: np.ndarray) -> np.ndarray:
    """round(clamp(x, 0, 1) · 65535) as uint16, for 16-bit output."""
    return np.round(np.clip(x, 0, 1) * 65535).astype(np.uint16)


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
) -> Path:
    """Write ``rgb`` (H×W×3, or H×W gray) and optional ``alpha`` (H×W) atomically.

    Float inputs are [0, 1] and quantised with :func:`to_uint8` / :func:`to_uint16`; uint8 (for
    ``bit_depth=8``) and uint16 (for ``bit_depth=16``) are written as they are. The format follows
    the suffix (PNG, JPEG, WebP (lossless), TIFF, BMP); 16-bit needs PNG. The file appears
    complete or not at all: a temporary file in the same folder is renamed over ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported image suffix {suffix!r}")
    if bit_depth == 16 and suffix != ".png":
        raise ValueError(f"{path}: 16-bit output needs a .png file")
    samples = _quantise(rgb, bit_depth, "rgb")
    if samples.ndim == 3 and samples.shape[2] == 1:
        samples = samples[..., 0]
    if samples.ndim not in (2, 3) or (samples.ndim == 3 and samples.shape[2] != 3):
        raise ValueError(f"rgb must be H×W×3 or H×W, got shape {rgb.shape}")
    if alpha is not None:
        alpha_samples = _quantise(alpha, bit_depth, "alpha")
        if alpha_samples.shape != samples.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match image {samples.shape[:2]}")
        if suffix in (".jpg", ".jpeg", ".bmp"):
            raise ValueError(f"{path}: {suffix} cannot store alpha; use .png")
        samples = np.dstack([samples, alpha_samples])
    encoded = _encode_png16(samples) if bit_depth == 16 else _encode_pillow(samples, suffix)
    atomic.write_bytes(path, encoded)
    return path


def _quantise(x: np.ndarray, bit_depth: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        return to_uint8(x) if bit_depth == 8 else to_uint16(x)
    expected = np.uint8 if bit_depth == 8 else np.uint16
    if x.dtype != expected:
        raise TypeError(f"{what}: a {bit_depth}-bit image must be float or {np.dtype(expected)}")
    return x


def _encode_pillow(samples: np.ndarray, suffix: str) -> bytes:
    import io

    image = Image.fromarray(np.ascontiguousarray(samples))
    buffer = io.BytesIO()
    options: dict[str, Any] = {
        # 4:4:4 chroma: subsampling would blur exactly the detail SR outputs are judged on.
        ".jpg": {"format": "JPEG", "quality": 95, "subsampling": 0},
        ".jpeg": {"format": "JPEG", "quality": 95, "subsampling": 0},
        ".webp": {"format": "WEBP", "lossless": True},
        ".tif": {"format": "TIFF", "compression": "tiff_deflate"},
        ".tiff": {"format": "TIFF", "compression": "tiff_deflate"},
        ".bmp": {"format": "BMP"},
    }.get(suffix, {"format": "PNG"})
    image.save(buffer, **options)
    return buffer.getvalue()


def _encode_png16(samples: np.ndarray) -> bytes:
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


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` by extension (case-insensitive), sorted by relative path.

    Hidden files (names starting with '.') are skipped: they are editor/OS droppings such as
    macOS ``._name.png`` resource forks, never images. A link to a missing file is listed, so
    that reading it names it instead of the image silently dropping out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} does not exist or is not a folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and (p.is_file() or (p.is_symlink() and not p.exists()))
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# ------------------------------------------------------------------------- MATLAB bicubic resize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'), support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_weights(
    in_len: int, out_len: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's 1-D contributions: ``(weights, indices)``, both ``(out_len, taps)``.

    Output pixel ``x`` (1-based) sits at input coordinate ``u = x/scale + (1 - 1/scale)/2``, i.e.
    ``(x0 + 0.5)/scale - 0.5`` 0-based. When shrinking with antialiasing the kernel is stretched
    to ``scale·k(scale·d)`` (width ``4/scale``). Each row is normalised to sum 1; indices outside
    the image are mirrored with the edge pixel repeated ('symmetric'); tap columns that are zero
    for every output are dropped, as MATLAB does. For ×1/4 that leaves 16 taps, ×1/2 8, ×2 and ×4 4.
    """
    shrink = antialias and scale < 1
    width = 4.0 / scale if shrink else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps)  # 1-based, may fall outside [1, in_len]
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if shrink else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    period = 2 * in_len
    wrapped = np.mod(indices.astype(np.int64) - 1, period)  # 0-based, one mirror period
    indices0 = np.where(wrapped < in_len, wrapped, period - 1 - wrapped)
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices0[:, used]


def imresize(
    img: Array,
    scale: float | tuple[float, float] | None = None,
    output_shape: tuple[int, int] | None = None,
    *,
    antialias: bool = True,
) -> Array:
    """MATLAB-compatible bicubic ``imresize`` (the DIV2K/BasicSR LR convention).

    Kernel: Keys' cubic with a = -0.5,
    ``k(t) = 1.5|t|³ - 2.5|t|² + 1`` for |t| ≤ 1, ``-0.5|t|³ + 2.5|t|² - 4|t| + 2`` for
    1 < |t| ≤ 2, else 0; stretched by 1/scale when shrinking (antialiasing); borders mirrored
    ('symmetric'); see :func:`resize_weights`. The dimension with the smaller scale is resized
    first (MATLAB's order; height first on ties). Output size is ``ceil(in · scale)`` per side, or
    ``output_shape`` (then scale = out/in per side). Values are not clamped (bicubic overshoots).

    ``img``: numpy float H×W or H×W×C (channels last, computed in float64, returned in the input
    dtype) or a torch float tensor ``(..., H, W)`` (channels first, computed in its own dtype and
    device).
    """
    is_numpy = isinstance(img, np.ndarray)
    if is_numpy and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"imresize needs a float image in [0, 1], got dtype {img.dtype}")
    if not is_numpy and not img.is_floating_point():
        raise TypeError(f"imresize needs a float tensor, got dtype {img.dtype}")
    axes = (0, 1) if is_numpy else (img.ndim - 2, img.ndim - 1)
    in_shape = (img.shape[axes[0]], img.shape[axes[1]])
    scales, out_shape = _resize_geometry(in_shape, scale, output_shape)
    out = img.astype(np.float64) if is_numpy else img
    for dim in sorted(range(2), key=lambda d: scales[d]):  # stable: height first on ties
        weights, indices = resize_weights(in_shape[dim], out_shape[dim], scales[dim], antialias)
        out = _apply_1d(out, weights, indices, axes[dim])
    return out.astype(img.dtype, copy=False) if is_numpy else out


def _resize_geometry(
    in_shape: tuple[int, int],
    scale: float | tuple[float, float] | None,
    output_shape: tuple[int, int] | None,
) -> tuple[tuple[float, float], tuple[int, int]]:
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if output_shape is not None:
        out = (int(output_shape[0]), int(output_shape[1]))
        if min(out) < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        return (out[0] / in_shape[0], out[1] / in_shape[1]), out
    # np.ndim covers numpy and 0-d torch scalars too, which are not int | float.
    scales = (float(scale), float(scale)) if np.ndim(scale) == 0 else tuple(scale)
    if len(scales) != 2 or min(scales) <= 0:
        raise ValueError(f"scale must be positive (one value or two), got {scale}")
    out = (math.ceil(in_shape[0] * scales[0]), math.ceil(in_shape[1] * scales[1]))
    return (scales[0], scales[1]), out


def _apply_1d(img: Array, weights: np.ndarray, indices: np.ndarray, axis: int) -> Array:
    if isinstance(img, np.ndarray):
        shape = [1] * img.ndim
        shape[axis] = -1
        out = np.zeros((*img.shape[:axis], weights.shape[0], *img.shape[axis + 1 :]))
        for tap in range(weights.shape[1]):  # taps ≤ 18: far less memory than gathering all
            out += weights[:, tap].reshape(shape) * np.take(img, indices[:, tap], axis=axis)
        return out
    torch = _torch()
    shape = [1] * img.ndim
    shape[axis] = -1
    w = torch.as_tensor(weights, dtype=img.dtype, device=img.device)
    idx = torch.as_tensor(indices, device=img.device)
    out = None
    for tap in range(weights.shape[1]):
        term = w[:, tap].reshape(shape) * img.index_select(axis, idx[:, tap])
        out = term if out is None else out + term
    return out


def modcrop(img: Array, scale: int) -> Array:
    """Crop the bottom/right so height and width are multiples of ``scale`` (top-left kept)."""
    if isinstance(img, np.ndarray):
        h, w = img.shape[:2]
        return img[: h - h % scale, : w - w % scale]
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_downscale_x4(hr: Array) -> tuple[Array, Array]:
    """The SR benchmark LR: ``(imresize(modcrop(hr, 4), 1/4), modcrop(hr, 4))``.

    The HR image is first cropped at the bottom/right to a multiple of 4 (BasicSR/KAIR modcrop), so
    the LR is exactly a quarter of the returned HR and the pair stays pixel-aligned.
    """
    cropped = modcrop(hr, 4)
    return imresize(cropped, 0.25), cropped


# -------------------------------------------------------------------------------------- colour


def rgb_to_y(img: Array) -> Array:
    """ITU-R BT.601 luma as the SR papers compute it (MATLAB ``rgb2ycbcr``), in [16/255, 235/255].

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in [0, 1]. numpy: channels
    last (..., 3) -> (...); torch: channels first (..., 3, H, W) -> (..., 1, H, W).
    """
    if isinstance(img, np.ndarray):
        if img.shape[-1] != 3:
            raise ValueError(f"expected channels last (..., 3), got shape {img.shape}")
        coeffs = np.array([65.481, 128.553, 24.966], dtype=img.dtype)
        return (img @ coeffs + 16.0) / 255.0
    if img.shape[-3] != 3:
        raise ValueError(f"expected channels first (..., 3, H, W), got shape {tuple(img.shape)}")
    r, g, b = img.unbind(dim=-3)
    return ((65.481 * r + 128.553 * g + 24.966 * b + 16.0) / 255.0).unsqueeze(-3)


def _torch() -> Any:
    # Imported on demand: reading and resizing numpy images should not pay torch's import time.
    import torch

    return torch
