"""build_kd_loss and the stage-two objective L1(student, GT) + λ(t)·L_KD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dtkd_pipeline.losses import (
    KD_LOSS_KINDS,
    DecomposedDWTLoss,
    DistillationObjective,
    build_kd_loss,
    dwt_subbands,
)


@pytest.mark.parametrize("kind", KD_LOSS_KINDS)
def test_every_kind_builds_and_is_zero_for_equal_inputs(kind: str) -> None:
    loss = build_kd_loss(kind)
    x = torch.rand(1, 3, 16, 16)
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.rand(1, 3, 16, 16)).item() > 0.0


def test_dwt_kinds_take_levels_wavelet_weights() -> None:
    loss = build_kd_loss("dwt", levels=3, wavelet="db2", weights=(1, 3, 1))
    assert isinstance(loss, DecomposedDWTLoss)
    assert (loss.levels, loss.wavelet) == (3, "db2")
    assert loss.subband_weights["HH3"] == 3.0
    uniform = build_kd_loss("dwt_uniform", levels=4)
    assert len(uniform.subband_weights) == 13
    assert set(uniform.subband_weights.values()) == {1.0}


def test_dwt_kind_defaults_to_the_papers_two_level_haar_weighted_one_two_one() -> None:
    loss = build_kd_loss("dwt")
    assert isinstance(loss, DecomposedDWTLoss)
    assert (loss.levels, loss.wavelet, loss.uniform) == (2, "haar", False)
    assert loss.subband_weights == {
        "LL2": 1.0,
        "LH2": 2.0,
        "HL2": 2.0,
        "HH2": 2.0,
        "LH1": 1.0,
        "HL1": 1.0,
        "HH1": 1.0,
    }


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="dwt, dwt_uniform, pixel_l1, fft, dtcwt"):
        build_kd_loss("feature")


def test_objective_parts_and_schedule() -> None:
    student = torch.rand(2, 3, 16, 16, requires_grad=True)
    truth, teacher = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    kd_loss = build_kd_loss("dwt")
    objective = DistillationObjective(kd_loss, final_weight=0.8, total_iterations=100)

    start = objective(student, truth, teacher, iteration=0)
    assert set(start) == {"task", "kd", "lambda", "total"}
    assert start["lambda"].item() == 0.0
    torch.testing.assert_close(start["total"], F.l1_loss(student, truth))

    middle = objective(student, truth, teacher, iteration=50)
    assert middle["lambda"].item() == pytest.approx(0.4)
    torch.testing.assert_close(middle["kd"], kd_loss(student, teacher))
    torch.testing.assert_close(middle["total"], middle["task"] + 0.4 * middle["kd"])
    middle["total"].backward()
    # The gradient is the task's plus 0.4 x the KD loss's, not the task's alone.
    task_only = student.detach().clone().requires_grad_()
    kd_only = student.detach().clone().requires_grad_()
    F.l1_loss(task_only, truth).backward()
    kd_loss(kd_only, teacher).backward()
    assert task_only.grad is not None and kd_only.grad is not None
    torch.testing.assert_close(student.grad, task_only.grad + 0.4 * kd_only.grad)

    constant = DistillationObjective(kd_loss, 0.8, 100, schedule="constant")
    assert constant(student, truth, teacher, iteration=0)["lambda"].item() == pytest.approx(0.8)


def test_objective_with_cached_teacher_subbands() -> None:
    student, truth, teacher = (torch.rand(1, 3, 16, 16) for _ in range(3))
    objective = DistillationObjective(build_kd_loss("dwt"), 1.0, 10)
    recomputed = objective(student, truth, teacher, iteration=10)
    cached = objective(student, truth, iteration=10, teacher_subbands=dwt_subbands(teacher))
    torch.testing.assert_close(cached["total"], recomputed["total"])
    with pytest.raises(ValueError, match="teacher"):
        objective(student, truth, iteration=10)


def test_objective_validates_schedule_up_front() -> None:
    with pytest.raises(ValueError, match="mode"):
        DistillationObjective(build_kd_loss("pixel_l1"), 1.0, 10, schedule="step")
    with pytest.raises(ValueError, match="total_iterations"):
        DistillationObjective(build_kd_loss("pixel_l1"), 1.0, 0)


@pytest.mark.parametrize("kind", KD_LOSS_KINDS)
def test_no_gradient_flows_into_an_online_teacher(kind: str) -> None:
    student = torch.rand(1, 3, 16, 16, requires_grad=True)
    teacher = torch.rand(1, 3, 16, 16, requires_grad=True)
    objective = DistillationObjective(build_kd_loss(kind), 1.0, 10)
    objective(student, torch.rand(1, 3, 16, 16), teacher, iteration=5)["total"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    bands = {name: band.requires_grad_() for name, band in dwt_subbands(teacher.detach()).items()}
    cached = DistillationObjective(build_kd_loss("dwt"), 1.0, 10)
    cached(student, torch.rand(1, 3, 16, 16), iteration=5, teacher_subbands=bands)[
        "total"
    ].backward()
    assert all(band.grad is None for band in bands.values())
