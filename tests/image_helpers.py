"""Test building blocks for image tests: a smooth synthetic RGB image."""

from __future__ import annotations

import numpy as np


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """A float32 H×W×3 image in [0, 1] with gentle gradients (lossless formats keep it exactly)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w, y / h, 0.5 + 0.4 * np.sin((x + y) / 5)], axis=-1)
