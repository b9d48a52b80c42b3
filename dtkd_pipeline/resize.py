"""MATLAB-compatible bicubic resize (the DIV2K/BasicSR LR convention), modcrop, and the ×4
benchmark downscale built from them.

Conventions: numpy images are ``H×W×C`` (or ``H×W``) float, channels last; torch tensors are
``(..., H, W)``, channels first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["bicubic_downscale_x4", "imresize", "modcrop", "resize_weights"]

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


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
    import torch  # here, not at the top: resizing numpy images should not pay torch's import

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
