"""KD loss factory and the stage-two objective: L1(student, GT) + λ(t)·L_KD(student, teacher)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from dtkd_pipeline.losses.frequency import DTCWTKDLoss, FFTKDLoss, PixelL1KDLoss
from dtkd_pipeline.losses.schedule import KD_WEIGHT_MODES, kd_weight
from dtkd_pipeline.losses.wavelet import DecomposedDWTLoss

KdLossKind = Literal["dwt", "dwt_uniform", "pixel_l1", "fft", "dtcwt"]
KD_LOSS_KINDS: tuple[str, ...] = get_args(KdLossKind)


def build_kd_loss(
    kind: str,
    levels: int = 2,
    wavelet: str = "haar",
    weights: Sequence[float] = (1.0, 2.0, 1.0),
) -> nn.Module:
    """The distillation loss for `kind` (one of KD_LOSS_KINDS).

    `levels` applies to the DWT kinds and the DTCWT, `wavelet` and `weights` to the DWT kinds
    (`dwt_uniform` ignores `weights`: every subband weighs 1).
    """
    if kind == "dwt":
        return DecomposedDWTLoss(levels, wavelet, weights)
    if kind == "dwt_uniform":
        return DecomposedDWTLoss(levels, wavelet, weights, uniform=True)
    if kind == "pixel_l1":
        return PixelL1KDLoss()
    if kind == "fft":
        return FFTKDLoss()
    if kind == "dtcwt":
        return DTCWTKDLoss(levels=levels)
    raise ValueError(f"unknown KD loss kind {kind!r}; valid kinds: {', '.join(KD_LOSS_KINDS)}")


class DistillationObjective(nn.Module):
    """Total loss of stage two, with its parts returned for logging.

    forward(...) -> {"task": L1(student, GT), "kd": L_KD, "lambda": λ(t), "total": task + λ·kd};
    all fp32 scalar tensors, "total" carrying the gradient.
    """

    def __init__(
        self,
        kd_loss: nn.Module,
        final_weight: float,
        total_iterations: int,
        schedule: str = "linear",
    ) -> None:
        super().__init__()
        # Validate once here rather than at the first training step.
        kd_weight(0, total_iterations, final_weight, schedule)
        self.kd_loss = kd_loss
        self.final_weight = final_weight
        self.total_iterations = total_iterations
        self.schedule = schedule

    def extra_repr(self) -> str:
        return (
            f"final_weight={self.final_weight}, total_iterations={self.total_iterations}, "
            f"schedule={self.schedule!r} (one of {KD_WEIGHT_MODES})"
        )

    def forward(
        self,
        student: torch.Tensor,
        ground_truth: torch.Tensor,
        teacher: torch.Tensor | None = None,
        *,
        iteration: int,
        teacher_subbands: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        weight = kd_weight(iteration, self.total_iterations, self.final_weight, self.schedule)
        # The teacher is a target: an online teacher (outputs with a graph) must get no gradient.
        teacher = teacher.detach() if teacher is not None else None
        if teacher_subbands is not None:
            teacher_subbands = {name: band.detach() for name, band in teacher_subbands.items()}
        with torch.autocast(student.device.type, enabled=False):
            task = F.l1_loss(student.float(), ground_truth.float())
        if teacher_subbands is not None:
            kd = self.kd_loss(student, teacher, teacher_subbands=teacher_subbands)
        elif teacher is None:
            raise ValueError("give the teacher output or its precomputed subbands")
        else:
            kd = self.kd_loss(student, teacher)
        lam = torch.tensor(weight, dtype=torch.float32, device=task.device)
        return {"task": task, "kd": kd, "lambda": lam, "total": task + weight * kd}
