"""Output-level KD losses in other comparison domains, for the ablations: pixel, FFT, DTCWT.

All compare student and teacher outputs of the same shape with autocast disabled, in fp32 (fp64
inputs stay fp64, except for the DTCWT whose filters are fp32), and return a scalar.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DTCWT_INSTALL_HINT = 'pip install "dtkd-pipeline[dtcwt]"'


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} "
            "must have the same shape"
        )


class PixelL1KDLoss(nn.Module):
    """mean|student − teacher| in pixel space (plain output-level KD)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_same_shape(student, teacher)
        with torch.autocast(student.device.type, enabled=False):
            return (_at_least_fp32(student) - _at_least_fp32(teacher)).abs().mean()


class FFTKDLoss(nn.Module):
    """L1 between 2-D spectra: amplitude_weight·mean|Δ|F|| + phase_weight·mean|Δφ|.

    Spectra use `torch.fft.fft2(norm="ortho")` over the last two dims. The phase difference is
    taken as arg(S·conj(T)), which is already wrapped to (−π, π]: a student phase of π−ε against
    a teacher phase of −π+ε counts as 2ε, not 2π−2ε. Where either spectrum is (near) zero the phase
    is undefined, so those frequencies contribute no phase term and no (NaN) gradient.
    """

    def __init__(
        self, amplitude_weight: float = 1.0, phase_weight: float = 1.0, eps: float = 1e-8
    ) -> None:
        super().__init__()
        for name, value in (("amplitude_weight", amplitude_weight), ("phase_weight", phase_weight)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and non-negative, got {value}")
        self.amplitude_weight = amplitude_weight
        self.phase_weight = phase_weight
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_same_shape(student, teacher)
        with torch.autocast(student.device.type, enabled=False):
            student_spectrum = torch.fft.fft2(_at_least_fp32(student), norm="ortho")
            teacher_spectrum = torch.fft.fft2(_at_least_fp32(teacher), norm="ortho")
            amplitude = (student_spectrum.abs() - teacher_spectrum.abs()).abs().mean()
            cross = student_spectrum * teacher_spectrum.conj()
            defined = cross.abs() > self.eps
            # Substitute a harmless point where the phase is undefined so atan2 stays finite.
            real = torch.where(defined, cross.real, torch.ones_like(cross.real))
            imag = torch.where(defined, cross.imag, torch.zeros_like(cross.imag))
            phase = torch.atan2(imag, real).abs().mean()
            return self.amplitude_weight * amplitude + self.phase_weight * phase


def _import_dtcwt_forward() -> type[nn.Module]:
    try:
        from pytorch_wavelets import DTCWTForward
    except ImportError as error:  # also pkg_resources missing under setuptools >= 82
        raise ImportError(
            f"the DTCWT loss needs pytorch-wavelets, an optional extra: {DTCWT_INSTALL_HINT} "
            f"(it pins setuptools<82, which pytorch-wavelets 1.3.0 needs); import failed: {error}"
        ) from error
    return DTCWTForward


class DTCWTKDLoss(nn.Module):
    """L1 between dual-tree complex wavelet transforms: lowpass plus per-level magnitudes.

    L = mean|ΔYl| + Σ_j mean|Δ|Yh_j||, |z| = sqrt(re² + im² + eps) (eps keeps the gradient finite
    at zero). Uses pytorch-wavelets' DTCWTForward (J=2, 'near_sym_b', 'qshift_b'), an optional
    dependency imported when the loss is built; its backward fails under autocast, hence fp32.
    """

    def __init__(
        self,
        levels: int = 2,
        biort: str = "near_sym_b",
        qshift: str = "qshift_b",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        dtcwt_forward = _import_dtcwt_forward()
        self.transform = dtcwt_forward(J=levels, biort=biort, qshift=qshift)
        self.levels = levels
        self.eps = eps

    def _magnitudes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        lowpass, highpasses = self.transform(x)
        return lowpass, [
            torch.sqrt(band[..., 0] ** 2 + band[..., 1] ** 2 + self.eps) for band in highpasses
        ]

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_same_shape(student, teacher)
        with torch.autocast(student.device.type, enabled=False):
            # Its filters are float32 buffers, so inputs are float32 whatever their dtype.
            student_low, student_high = self._magnitudes(student.float())
            teacher_low, teacher_high = self._magnitudes(teacher.float())
            loss = (student_low - teacher_low).abs().mean()
            for student_band, teacher_band in zip(student_high, teacher_high, strict=True):
                loss = loss + (student_band - teacher_band).abs().mean()
            return loss
