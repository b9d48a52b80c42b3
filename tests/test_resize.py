"""dtkd_pipeline.resize: MATLAB-compatible bicubic imresize, modcrop and the x4 benchmark LR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dtkd_pipeline import resize
from dtkd_pipeline.resize import imresize

RNG = np.random.default_rng(0)


def test_tap_counts_and_normalisation() -> None:
    # kernel width 4/s (+2 guard taps), minus the columns that are zero everywhere
    for scale, taps in ((0.25, 16), (0.5, 8), (2.0, 4), (4.0, 4)):
        weights, indices = resize.resize_weights(64, int(64 * scale), scale)
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


def _keys_cubic(t: np.ndarray) -> np.ndarray:
    """Keys' a = -0.5 kernel, written out independently of `resize._cubic`."""
    t = np.abs(t)
    inner = 1.5 * t**3 - 2.5 * t**2 + 1
    outer = -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return np.where(t <= 1, inner, np.where(t < 2, outer, 0.0))


def _matlab_resize_1d(signal: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize of a 1-D signal, tap by tap: pixel centres at (x + 0.5)/scale - 0.5, the
    kernel stretched by 1/scale when shrinking, weights normalised, and the signal extended past
    its ends by mirroring with the edge sample repeated (np.pad's 'symmetric')."""
    stretch = min(scale, 1.0)
    half_width = 2 / stretch
    pad = int(np.ceil(half_width)) + 2
    padded = np.pad(signal, pad, mode="symmetric")
    out = np.empty(int(np.ceil(signal.size * scale)))
    for x in range(out.size):
        centre = (x + 0.5) / scale - 0.5
        taps = np.arange(np.floor(centre - half_width), np.ceil(centre + half_width) + 1)
        weights = stretch * _keys_cubic(stretch * (centre - taps))
        out[x] = weights @ padded[taps.astype(int) + pad] / weights.sum()
    return out


@pytest.mark.parametrize("length", [36, 37])
@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0, 4.0])
def test_borders_are_mirrored_with_the_edge_repeated_as_matlab_does(
    length: int, scale: float
) -> None:
    """The whole output, borders included, equals the tap-by-tap formula: replicated or reflected
    (edge not repeated) borders change the first and last few outputs only, which the interior
    checks above cannot see."""
    signal = RNG.random(length)
    out = imresize(signal[:, None], (scale, 1.0))[:, 0]
    np.testing.assert_allclose(out, _matlab_resize_1d(signal, scale), rtol=0, atol=1e-12)


def test_x4_benchmark_lr_equals_the_separable_matlab_formula_everywhere() -> None:
    hr = RNG.random((26, 21, 3))
    lr, cropped = resize.bicubic_downscale_x4(hr)
    expected = np.empty(lr.shape)
    for channel in range(3):
        rows = np.stack([_matlab_resize_1d(col, 0.25) for col in cropped[..., channel].T], 1)
        expected[..., channel] = np.stack([_matlab_resize_1d(row, 0.25) for row in rows])
    np.testing.assert_allclose(lr, expected, rtol=0, atol=1e-12)


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
    lr, cropped = resize.bicubic_downscale_x4(hr)
    assert cropped.shape == (48, 64, 3) and lr.shape == (12, 16, 3)
    np.testing.assert_array_equal(cropped, hr[:48, :64])
    np.testing.assert_allclose(lr, imresize(hr[:48, :64], 0.25))
