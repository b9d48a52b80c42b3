"""Image I/O: read, probe, write and list images (8/16-bit, gray, RGBA, palette, EXIF orientation).

Conventions: numpy images are ``H×W×C`` float in [0, 1], RGB, channels last; torch tensors are
``(..., C, H, W)``, channels first (as the networks take them).

Pillow (13) reads 16-bit *colour* PNGs (RGB, RGBA, gray+alpha) as 8-bit, so those are decoded
by the numpy codec in :mod:`dtkd_pipeline.png16`; 16-bit gray PNGs go through Pillow, which keeps
all 16 bits. 16-bit RGB(A) and gray+alpha TIFFs in the common layouts (strips, uncompressed or
deflate) are read in full by :mod:`dtkd_pipeline.tiff16`; other RGB(A) ones (LZW, tiles) are
read by Pillow at 8-bit precision and a warning names the file: convert them to 16-bit PNG to
keep the extra bits. Pillow opens no 16-bit gray+alpha TIFF, so other layouts of those are
refused with the same advice.

MATLAB bicubic resize lives in :mod:`dtkd_pipeline.resize`; BT.601 luma in
:mod:`dtkd_pipeline.colour`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dtkd_pipeline import atomic
from dtkd_pipeline.png16 import (
    DecodedPng16,
    PngDecodeError,
    decode_png16,
    encode_png16,
    is_16bit_colour_png,
    png_exif,
)
from dtkd_pipeline.tiff16 import (
    DecodedTiff16,
    TiffDecodeError,
    decode_tiff16,
    has_alpha_sample,
    is_decodable_16bit_tiff,
    read_tiff_tags,
    refuse_undecodable_16bit_gray_alpha,
    stored_size,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "ImageReadError",
    "LoadedImage",
    "as_saved_8bit",
    "list_images",
    "probe_image",
    "read_image",
    "to_uint8",
    "to_uint16",
    "unreadable_advice",
    "write_image",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


def unreadable_advice(files: str, *other_ways: str) -> str:
    """What to do about unreadable images, worded alike by every command: replace or remove
    ``files`` ("the file", "them"), or one of the command's ``other_ways`` past them."""
    return ", or ".join((f"replace or remove {files}", *other_ways))


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
        if is_16bit_colour_png(path):
            return _from_png16(decode_png16(path.read_bytes()), path)
        tiff_tags = _decodable_16bit_tiff_tags(path)
        if tiff_tags is not None:
            return _from_tiff16(decode_tiff16(path.read_bytes(), tiff_tags), path)
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
        tiff_tags = _decodable_16bit_tiff_tags(path)
        if tiff_tags is not None:
            return _tiff16_header(tiff_tags, path)
        deep_colour = is_16bit_colour_png(path)
        with Image.open(path) as image:
            stored_bits = 16 if deep_colour else _stored_bits(image)
            _check_sample_format(image.mode, stored_bits, path)
            width, height = _stored_size(image)
            if _orientation(image, path) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            bit_depth = 16 if deep_colour or _is_gray16(image.mode, stored_bits) else 8
            return ImageHeader(path, width, height, bit_depth, _has_alpha(image))


_EXIF_ORIENTATION = 0x0112
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_ORIENTATION = 256, 257, 274
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


def _decodable_16bit_tiff_tags(path: Path) -> Mapping[int, Any] | None:
    """The tags of a TIFF that :mod:`dtkd_pipeline.tiff16` decodes, else None (other files go to
    Pillow); a 16-bit gray+alpha TIFF in another layout is refused, since Pillow opens none."""
    tags = read_tiff_tags(path)
    if tags is None:
        return None
    refuse_undecodable_16bit_gray_alpha(tags)
    if not is_decodable_16bit_tiff(tags):
        return None
    _check_pixel_limit(path, *stored_size(tags))  # Image.open checks the files Pillow decodes
    return tags


def _check_pixel_limit(path: Path, width: int, height: int) -> None:
    """Apply Pillow's decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no limit),
    to an image decoded without Pillow: refused past twice the limit, a warning past it."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = width * height
    if limit is None or pixels <= limit:
        return
    refused = pixels > 2 * limit
    message = (
        f"{pixels} pixels, more than {'twice ' if refused else ''}PIL.Image.MAX_IMAGE_PIXELS "
        f"({limit}): this could be a decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS to "
        "read a file you trust"
    )
    if refused:
        raise Image.DecompressionBombError(message)  # _reading names the file
    warnings.warn(f"{path}: {message}", Image.DecompressionBombWarning, stacklevel=4)


def _tiff16_header(tags: Mapping[int, Any], path: Path) -> ImageHeader:
    width, height = stored_size(tags)
    if int(tags.get(_TIFF_ORIENTATION, 1)) in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(path, width, height, 16, has_alpha_sample(tags))


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as stored, before orientation. Pillow reports a rotated TIFF's size
    already turned upright (recent versions), so a TIFF's is taken from its tags."""
    if image.format == "TIFF":
        return int(image.tag_v2[_TIFF_WIDTH]), int(image.tag_v2[_TIFF_HEIGHT])
    return image.size


def _orientation(image: Image.Image, path: Path) -> int:
    """EXIF orientation without decoding pixels (Pillow's PNG getexif() decodes the image to
    reach an eXIf chunk placed after the pixel data, so PNG chunks are walked here instead)."""
    if image.format != "PNG":
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    return _exif_orientation(png_exif(path))


def _exif_orientation(raw: bytes | None) -> int:
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(_EXIF_ORIENTATION, 1))


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


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever Pillow raises for a bad file into an ImageReadError naming ``path``."""
    try:
        yield
    except ImageReadError:
        raise
    except (PngDecodeError, TiffDecodeError) as err:
        raise ImageReadError(f"{path}: {err}") from None
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
            f"{path}: {stored_bits}-bit colour image read at 8-bit precision (Pillow's limit; "
            "16-bit TIFFs are read in full only in strips, uncompressed or deflate); convert it "
            "to 16-bit PNG to keep all bits",
            stacklevel=3,
        )
    if mode == "La":
        # Premultiplied gray: Pillow divides it back out only into "LA" (it converts "La"
        # nowhere else), as it does "RGBa" into "RGBA".
        image = image.convert("LA")
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


def _from_png16(decoded: DecodedPng16, path: Path) -> LoadedImage:
    samples = decoded.samples
    if decoded.has_alpha_channel:
        colour, alpha = samples[..., :-1], _unit_range(samples[..., -1])
    else:
        colour, alpha = samples, None
        if decoded.transparency is not None and len(decoded.transparency) == 6:
            # RGB colour key: that exact colour is transparent.
            key = np.frombuffer(decoded.transparency, ">u2")
            alpha = (~np.all(samples == key, axis=-1)).astype(np.float32)
    return _from_16bit(colour, alpha, _exif_orientation(decoded.exif), path)


def _from_tiff16(decoded: DecodedTiff16, path: Path) -> LoadedImage:
    alpha = None if decoded.alpha is None else _unit_range(decoded.alpha)
    return _from_16bit(decoded.colour, alpha, decoded.orientation, path)


def _from_16bit(
    colour: np.ndarray, alpha: np.ndarray | None, orientation: int, path: Path
) -> LoadedImage:
    """uint16 ``colour`` (H×W×3, or H×W×1 gray) and float ``alpha``, turned upright."""
    values = _unit_range(colour)
    rgb = np.repeat(values, 3, axis=2) if values.shape[-1] == 1 else values
    if alpha is not None:
        alpha = _orient(alpha, orientation)
    return LoadedImage(_orient(rgb, orientation), alpha, 16, path)


def _unit_range(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 65535.0


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
    complete or not at all: a temporary file in the same folder is renamed over ``path``. The
    temporary's name carries this process's id, so one a killed writer left is recognised as
    dead (see :func:`~dtkd_pipeline.atomic.remove_dead_hidden_temporaries`).
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
    encoded = encode_png16(samples) if bit_depth == 16 else _encode_pillow(samples, suffix)
    atomic.write_bytes(path, encoded, temporary=atomic.hidden_pid_temporary(path))
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


def _torch() -> Any:
    # Imported on demand: reading and resizing numpy images should not pay torch's import time.
    import torch

    return torch
