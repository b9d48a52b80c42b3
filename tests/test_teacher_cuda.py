"""CUDA mixed precision: bf16 autocast stays close to fp32 (VQ distances and GroupNorm in fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dtkd_pipeline.teacher import load_teacher

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_close_to_fp32_on_cuda(resshift_parity_dir: Path) -> None:
    data = torch.load(resshift_parity_dir / "basic.pt", weights_only=False)
    kwargs = {
        "unet": resshift_parity_dir / "unet.pth",
        "autoencoder": resshift_parity_dir / "vq_basic.pth",
        "device": "cuda",
    }
    fp32 = load_teacher(resshift_parity_dir / "config.yaml", precision="fp32", **kwargs)
    bf16 = load_teacher(resshift_parity_dir / "config.yaml", precision="bf16", **kwargs)
    lr = data["lr01"].repeat(2, 1, 1, 1)
    out32 = fp32.sample(lr, seed=3, rng="per-sample")
    out16 = bf16.sample(lr, seed=3, rng="per-sample")
    assert out16.dtype == torch.float32 and out16.shape == (2, 3, 256, 256)
    assert torch.isfinite(out16).all()
    assert (out16 - out32).abs().mean().item() < 0.05
    # Same seed, same device: the per-sample noise is reproducible run to run.
    again = fp32.sample(lr, seed=3, rng="per-sample")
    assert (again - out32).abs().mean().item() < 1e-4


def test_large_tile_uses_sdpa_without_oom(resshift_parity_dir: Path) -> None:
    teacher = load_teacher(
        resshift_parity_dir / "config.yaml",
        unet=resshift_parity_dir / "unet.pth",
        autoencoder=resshift_parity_dir / "vq_basic.pth",
        device="cuda",
        precision="bf16",
    )
    out = teacher.sample(torch.rand(1, 3, 256, 256), seed=1, chop_size=512)
    assert out.shape == (1, 3, 1024, 1024) and torch.isfinite(out).all()
