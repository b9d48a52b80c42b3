"""Ablation KD losses: pixel L1, FFT amplitude/phase, DTCWT (optional dependency)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from dtkd_pipeline.losses import FFTKDLoss, PixelL1KDLoss
from dtkd_pipeline.losses.frequency import DTCWT_INSTALL_HINT, DTCWTKDLoss


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=generator), torch.rand(
        2, 3, 16, 16, generator=generator
    )


def test_pixel_l1_equals_l1_loss() -> None:
    student, teacher = _pair()
    torch.testing.assert_close(PixelL1KDLoss()(student, teacher), F.l1_loss(student, teacher))
    with pytest.raises(ValueError, match="same shape"):
        PixelL1KDLoss()(student, teacher[..., :8])


def test_fft_loss_zero_when_equal_positive_otherwise() -> None:
    student, teacher = _pair()
    loss = FFTKDLoss()
    assert loss(student, student.clone()).item() == 0.0
    assert loss(student, teacher).item() > 0.0


def test_fft_phase_difference_is_wrapped() -> None:
    """A circular shift gives phase differences past ±π; they count modulo 2π."""
    _, teacher = _pair()
    student = torch.roll(teacher, shifts=(5, 3), dims=(-2, -1))
    phase_only = FFTKDLoss(amplitude_weight=0.0, phase_weight=1.0)
    student_phase = torch.fft.fft2(student, norm="ortho").angle()
    teacher_phase = torch.fft.fft2(teacher, norm="ortho").angle()
    wrapped = torch.remainder(student_phase - teacher_phase + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(
        phase_only(student, teacher), wrapped.abs().mean(), atol=1e-5, rtol=0
    )
    assert phase_only(student, teacher).item() <= math.pi
    # A circular shift leaves amplitudes unchanged.
    amplitude_only = FFTKDLoss(amplitude_weight=1.0, phase_weight=0.0)
    assert amplitude_only(student, teacher).item() < 1e-5


def test_fft_gradient_is_finite_where_phase_is_undefined() -> None:
    student = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)  # only DC is non-zero
    FFTKDLoss()(student, torch.rand(1, 1, 8, 8)).backward()
    assert torch.isfinite(student.grad).all()


def test_fft_gradcheck_float64() -> None:
    student = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: FFTKDLoss()(s, teacher), (student,))


def test_losses_are_fp32_under_autocast() -> None:
    student, teacher = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for loss in (PixelL1KDLoss(), FFTKDLoss()):
            assert loss(student.bfloat16(), teacher).dtype == torch.float32


def test_dtcwt_missing_dependency_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_wavelets", None)  # makes the import fail
    with pytest.raises(ImportError) as error:
        DTCWTKDLoss()
    assert 'pip install "dtkd-pipeline[dtcwt]"' in str(error.value)
    assert DTCWT_INSTALL_HINT in str(error.value)


def test_dtcwt_loss_is_zero_for_equal_inputs_and_differentiable() -> None:
    """The DTCWT ablation (Table 5); pytorch-wavelets comes with the dev extra."""
    student, teacher = _pair()
    student.requires_grad_(True)
    loss = DTCWTKDLoss()
    assert loss(student, student.detach().clone()).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(student, teacher)
    assert value.item() > 0.0
    value.backward()
    assert torch.isfinite(student.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(student.bfloat16(), teacher).dtype == torch.float32
