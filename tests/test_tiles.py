"""Tile placement covers every pixel, never leaves the image, and follows the small-image rule."""

from __future__ import annotations

import numpy as np
import pytest

from dtkd_pipeline.tiles import axis_starts, cut_tiles, pad_bottom_right, plan_tiles


def test_axis_starts_clamp_last_tile_to_border() -> None:
    assert axis_starts(100, 64, 64) == [0, 36]
    assert axis_starts(128, 64, 64) == [0, 64]
    assert axis_starts(64, 64, 32) == [0]
    assert axis_starts(112, 64, 48) == [0, 48]


@pytest.mark.parametrize(
    ("height", "width", "stride"), [(100, 130, 64), (64, 64, 64), (200, 77, 40)]
)
def test_tiles_cover_every_pixel_and_stay_inside(height: int, width: int, stride: int) -> None:
    plan = plan_tiles(height, width, 64, stride, "pad")
    assert plan is not None and plan.pad_bottom == 0 and plan.pad_right == 0
    covered = np.zeros((height, width), bool)
    for y, x in plan.offsets:
        assert 0 <= y <= height - 64 and 0 <= x <= width - 64
        covered[y : y + 64, x : x + 64] = True
    assert covered.all()


def test_small_image_is_padded_or_skipped_by_rule() -> None:
    padded = plan_tiles(40, 100, 64, 64, "pad")
    assert padded is not None
    assert (padded.pad_bottom, padded.pad_right) == (24, 0)
    assert padded.offsets == [(0, 0), (0, 36)]
    assert plan_tiles(40, 100, 64, 64, "skip") is None


def test_cut_tiles_aligns_lr_and_hr_offsets() -> None:
    hr = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    lr = hr[::4, ::4]
    offsets = [(0, 0), (2, 3)]
    lr_tiles = cut_tiles(lr, offsets, 4)
    hr_tiles = cut_tiles(hr, offsets, 4, scale=4)
    assert lr_tiles.shape == (2, 3, 4, 4) and hr_tiles.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(hr_tiles[:, :, ::4, ::4], lr_tiles)


def test_symmetric_padding_handles_pads_larger_than_image() -> None:
    image = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    padded = pad_bottom_right(image, 5, 0)
    assert padded.shape == (7, 3, 1)
    np.testing.assert_array_equal(padded[2], image[1])
