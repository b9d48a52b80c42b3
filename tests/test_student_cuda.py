"""CUDA: the student's half-precision and compiled paths (skipped without a GPU).

On the CPU these paths are either refused (bf16/fp16 autocast) or checked with inductor's C++
backend (tests/test_upscale.py); here they run the CUDA kernels and CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dtkd_pipeline.losses import build_kd_loss
from dtkd_pipeline.student import build_student
from dtkd_pipeline.upscale import upscale_tensor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _student(arch: str = "swinir-tiny-x4") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student(arch).cuda().eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / F.mse_loss(a, b))).item()


def _image(height: int = 40, width: int = 56) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, height, width, generator=generator)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_upscale_stays_close_to_fp32(precision: str) -> None:
    model, lr = _student("swinir-s-x4"), _image()
    reference = upscale_tensor(model, lr, tile=0)
    half = upscale_tensor(model, lr, tile=0, precision=precision)
    assert _psnr(half, reference) > 35


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_tiled_upscale_matches_eager(mode: str) -> None:
    model, lr = _student(), _image()
    settings = {"tile": 16, "overlap": 4, "batch_size": 4, "precision": "bf16"}
    eager = upscale_tensor(model, lr, **settings)
    first = upscale_tensor(model, lr, **settings, compile_mode=mode)
    again = upscale_tensor(model, lr, **settings, compile_mode=mode)  # graph replays
    assert _psnr(first, eager) > 40
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_compiled_training_step_builds_the_shift_mask_on_the_device() -> None:
    """torch.compile failed on the GPU when the mask was built on the CPU inside the graph."""
    model = _student().train()
    compiled = torch.compile(model)
    kd_loss = build_kd_loss("dwt").cuda()
    lr, teacher = torch.rand(2, 3, 16, 16, device="cuda"), torch.rand(2, 3, 64, 64, device="cuda")
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sr = compiled(lr)
        loss = kd_loss(sr.float(), teacher)
        loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()  # no drop-path: compiled and eager outputs comparable
    with torch.no_grad():
        assert _psnr(compiled(lr).clamp(0, 1), model(lr).clamp(0, 1)) > 50


def test_window_attention_trains_on_the_memory_efficient_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SwinIR-s (head dim 10, padded to 16) runs forward and backward on the fused
    memory-efficient kernel alone, and agrees with the official explicit ops."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dtkd_pipeline.student.swinir import WindowAttention

    model = _student("swinir-s-x4")  # eval: no drop-path, so both runs see the same graph
    lr = torch.rand(2, 3, 32, 32, device="cuda")

    def forward_backward() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sr = model(lr).float()
        sr.square().mean().backward()
        return sr.detach(), [p.grad.float().clone() for p in model.parameters()]

    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        fused, fused_grads = forward_backward()
    monkeypatch.setattr(WindowAttention, "use_sdpa", False)
    official, official_grads = forward_backward()
    assert _psnr(fused.clamp(0, 1), official.clamp(0, 1)) > 35
    for fused_grad, official_grad in zip(fused_grads, official_grads, strict=True):
        scale = official_grad.abs().max().clamp_min(1e-8)
        assert (fused_grad - official_grad).abs().max() / scale < 0.1  # bf16 rounding
