"""ITU-R BT.601 luma, as the SR papers score PSNR/SSIM on the Y channel.

Conventions: numpy images are channels last, torch tensors channels first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["rgb_to_y"]

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


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
