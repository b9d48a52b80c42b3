"""Decomposed DWT KD loss and the subband layout shared with the teacher cache."""

from __future__ import annotations

import pytest
import pywt
import torch

from dtkd_pipeline.losses import (
    DecomposedDWTLoss,
    crop_subbands,
    dwt_subbands,
    group_weights,
    subband_names,
)

LEVEL_TWO_DETAILS = ("LH2", "HL2", "HH2")
# DTKD's J=2 Haar loss: LF (LL2) 1, MF (level-2 details) 2, HF (level-1 details) 1.
PAPER_WEIGHTS = {"LL2": 1.0, "LH2": 2.0, "HL2": 2.0, "HH2": 2.0, "LH1": 1.0, "HL1": 1.0, "HH1": 1.0}


def _pair(shape: tuple[int, ...] = (2, 3, 32, 32), seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def test_subband_names_are_coarsest_first() -> None:
    assert subband_names(2) == ("LL2", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1")
    assert subband_names(1) == ("LL1", "LH1", "HL1", "HH1")
    assert len(subband_names(4)) == 13


@pytest.mark.parametrize("wavelet", ["haar", "db2", "bior2.2"])
@pytest.mark.parametrize("mode", ["zero", "symmetric", "reflect", "periodic"])
def test_subbands_equal_pywavelets(wavelet: str, mode: str) -> None:
    x = torch.rand(2, 3, 20, 28, dtype=torch.float64)
    ours = dwt_subbands(x, levels=2, wavelet=wavelet, mode=mode)
    reference = pywt.wavedec2(x.numpy(), wavelet, mode=mode, level=2, axes=(-2, -1))
    expected = {"LL2": reference[0]}
    for level, details in zip((2, 1), reference[1:], strict=True):
        for orientation, band in zip(("LH", "HL", "HH"), details, strict=True):
            expected[f"{orientation}{level}"] = band
    assert list(ours) == list(expected)
    for name, band in expected.items():
        torch.testing.assert_close(ours[name], torch.from_numpy(band), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("wavelet", "mode"), [("haar", "zero"), ("db2", "symmetric")])
def test_loss_equals_weighted_pywavelets_subband_differences(wavelet: str, mode: str) -> None:
    """The loss transforms student − teacher once; the definition subtracts each image's bands."""
    student, teacher = (x.double() for x in _pair((2, 3, 24, 20)))
    weights = group_weights(2, (1.0, 2.0, 3.0))
    subbands = {}
    for image in (student, teacher):
        coefficients = pywt.wavedec2(image.numpy(), wavelet, mode=mode, level=2, axes=(-2, -1))
        names = subband_names(2)
        flat = [coefficients[0], *(band for details in coefficients[1:] for band in details)]
        subbands[id(image)] = dict(zip(names, flat, strict=True))
    expected = sum(
        weight * abs(subbands[id(student)][name] - subbands[id(teacher)][name]).mean()
        for name, weight in weights.items()
    )
    loss = DecomposedDWTLoss(2, wavelet, (1.0, 2.0, 3.0), mode=mode)
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-10)


def test_haar_subband_shapes_halve_per_level() -> None:
    bands = dwt_subbands(torch.rand(4, 3, 64, 48), levels=2)
    assert bands["LL2"].shape == (4, 3, 16, 12)
    assert bands["HH2"].shape == (4, 3, 16, 12)
    assert bands["LH1"].shape == (4, 3, 32, 24)


def test_loss_is_exactly_zero_when_student_equals_teacher() -> None:
    student, _ = _pair()
    assert DecomposedDWTLoss()(student, student.clone()).item() == 0.0


def test_constant_difference_is_pure_low_frequency() -> None:
    student, _ = _pair()
    offset = 0.3
    loss = DecomposedDWTLoss(levels=2, weights=(1.0, 2.0, 1.0))
    terms = loss.subband_terms(student, student - offset)
    # Orthonormal Haar: the approximation gains a factor 2 per level, details see nothing.
    assert terms["LL2"].item() == pytest.approx(4 * offset, rel=1e-5)
    assert all(terms[name].item() < 1e-6 for name in terms if name != "LL2")
    assert loss(student, student - offset).item() == pytest.approx(4 * offset, rel=1e-5)


def test_mid_frequency_weight_scales_exactly_the_level_two_details() -> None:
    student, teacher = _pair()
    base = DecomposedDWTLoss(weights=(1.0, 1.0, 1.0))
    doubled = DecomposedDWTLoss(weights=(1.0, 2.0, 1.0))
    only_mid = DecomposedDWTLoss(weights=(0.0, 1.0, 0.0))
    terms = base.subband_terms(student, teacher)
    level_two = sum(terms[name] for name in LEVEL_TWO_DETAILS)
    difference = doubled(student, teacher) - base(student, teacher)
    torch.testing.assert_close(difference, level_two, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(only_mid(student, teacher), level_two)


def test_default_is_the_papers_haar_two_levels_weighted_one_two_one() -> None:
    loss = DecomposedDWTLoss()
    assert (loss.levels, loss.wavelet, loss.uniform) == (2, "haar", False)
    assert loss.subband_weights == PAPER_WEIGHTS
    # group_weights' own default is the paper's too (spelled out, not compared with itself).
    assert group_weights(2) == PAPER_WEIGHTS


def test_subbands_get_the_weight_of_their_frequency_group() -> None:
    assert group_weights(2, (1.0, 2.0, 3.0)) == {
        "LL2": 1.0,
        "LH2": 2.0,
        "HL2": 2.0,
        "HH2": 2.0,
        "LH1": 3.0,
        "HL1": 3.0,
        "HH1": 3.0,
    }
    # J=3: level-2 and level-1 details are both high-frequency.
    assert group_weights(3, (1.0, 2.0, 3.0))["HH2"] == 3.0
    assert group_weights(3, (1.0, 2.0, 3.0))["HH3"] == 2.0


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_uniform_weights_sum_every_subband(levels: int) -> None:
    student, teacher = _pair()
    loss = DecomposedDWTLoss(levels=levels, uniform=True)
    assert set(loss.subband_weights.values()) == {1.0}
    assert len(loss.subband_weights) == 3 * levels + 1
    terms = loss.subband_terms(student, teacher)
    torch.testing.assert_close(loss(student, teacher), sum(terms.values()))


@pytest.mark.parametrize(
    ("wavelet", "mode"), [("haar", "zero"), ("db2", "zero"), ("db2", "symmetric")]
)
def test_gradient_matches_finite_differences_in_float64(wavelet: str, mode: str) -> None:
    student = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    loss = DecomposedDWTLoss(wavelet=wavelet, mode=mode)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))


def test_precomputed_teacher_subbands_equal_recomputed_for_haar() -> None:
    """Stage two crops cached subbands of a whole teacher tile along with the patch."""
    tile = torch.rand(2, 3, 64, 64)
    cached = {name: band.half() for name, band in dwt_subbands(tile, levels=2).items()}
    exact = dwt_subbands(tile, levels=2)
    top, left, size = 12, 28, 32
    teacher_patch = tile[..., top : top + size, left : left + size]
    student = torch.rand(2, 3, size, size)
    loss = DecomposedDWTLoss()

    recomputed = loss(student, teacher_patch)
    from_exact = loss(student, teacher_subbands=crop_subbands(exact, top, left, size, size))
    torch.testing.assert_close(from_exact, recomputed, atol=1e-6, rtol=1e-6)
    from_cache = loss(student, teacher_subbands=crop_subbands(cached, top, left, size, size))
    torch.testing.assert_close(from_cache, recomputed, atol=2e-3, rtol=0)
    assert from_cache.dtype == torch.float32


def test_crop_and_teacher_subband_validation() -> None:
    bands = dwt_subbands(torch.rand(1, 3, 32, 32), levels=2)
    with pytest.raises(ValueError, match="multiple of 4"):
        crop_subbands(bands, 2, 0, 16, 16)
    student = torch.rand(1, 3, 16, 16)
    loss = DecomposedDWTLoss()
    with pytest.raises(ValueError, match="cropped with the"):
        loss(student, teacher_subbands=bands)
    with pytest.raises(ValueError, match="lack"):
        loss(student, teacher_subbands={"LL2": bands["LL2"]})
    with pytest.raises(ValueError, match="teacher output or its precomputed subbands"):
        loss(student)


def test_runs_in_fp32_under_bfloat16_autocast() -> None:
    student, teacher = _pair()
    layer = torch.nn.Conv2d(3, 3, 1)
    loss = DecomposedDWTLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(student)
        assert output.dtype == torch.bfloat16
        value = loss(output, teacher)
    assert value.dtype == torch.float32
    expected = loss(output.float(), teacher)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_invalid_levels_wavelet_mode_and_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="levels"):
        DecomposedDWTLoss(levels=0)
    with pytest.raises(ValueError, match="wavelet"):
        DecomposedDWTLoss(wavelet="nope")
    with pytest.raises(ValueError, match="boundary mode"):
        DecomposedDWTLoss(mode="periodization")
    with pytest.raises(ValueError, match="three finite non-negative"):
        DecomposedDWTLoss(weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="three finite non-negative"):
        DecomposedDWTLoss(weights=(1.0, -2.0, 1.0))


def test_dwt_subbands_keep_input_dtype_under_autocast() -> None:
    x = torch.rand(1, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bands = dwt_subbands(x)
    assert all(band.dtype == torch.float32 for band in bands.values())
    torch.testing.assert_close(bands["HH1"], dwt_subbands(x)["HH1"])
