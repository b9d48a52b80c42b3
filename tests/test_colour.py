"""dtkd_pipeline.colour: BT.601 luma."""

from __future__ import annotations

import numpy as np
import torch

from dtkd_pipeline import colour


def test_rgb_to_y_bt601() -> None:
    rgb = np.array([[[0, 0, 0], [1, 1, 1], [1, 0, 0]]], np.float64)
    y = colour.rgb_to_y(rgb)
    np.testing.assert_allclose(y, [[16 / 255, 235 / 255, (16 + 65.481) / 255]], atol=1e-6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    y_t = colour.rgb_to_y(chw)
    assert y_t.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(y_t[0, 0].numpy(), y, atol=1e-12)
