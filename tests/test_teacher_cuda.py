"""CUDA: fp32 and bf16 autocast runs of the tiny parity teacher (skipped without a GPU).

The fixture weights are random (not trained), so bf16 rounding is amplified more than it would be
with the released checkpoints; the bounds below come from CPU bf16-autocast measurements of the same
modules (about 2 % relative error per network call) with headroom.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from dtkd_pipeline.teacher import Teacher, load_teacher

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _teacher(directory: Path, precision: str) -> Teacher:
    return load_teacher(
        directory / "config.yaml",
        unet=directory / "unet.pth",
        autoencoder=directory / "vq_basic.pth",
        device="cuda",
        precision=precision,  # type: ignore[arg-type]
    )


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.float().cpu()
    return ((actual - expected).norm() / expected.norm()).item()


def test_network_calls_close_to_cpu_fixture(resshift_parity_dir: Path) -> None:
    data = torch.load(resshift_parity_dir / "basic.pt", weights_only=False)
    call = data["unet_calls"][0]
    y_up = F.interpolate(data["encode"][0]["y_in"], scale_factor=4, mode="bicubic").cuda()
    for precision, bound in (("fp32", 5e-3), ("bf16", 0.05)):  # fp32 bound allows TF32 convs
        teacher = _teacher(resshift_parity_dir, precision)
        with torch.inference_mode(), teacher._autocast():
            unet_out = teacher.unet(call["x_scaled"].cuda(), call["t"].cuda(), call["lq"].cuda())
            z_y = teacher.autoencoder.encode(y_up)
            decoded = teacher.autoencoder.decode(data["decode_in"][-1].cuda())
        assert _relative_error(unet_out, call["out"]) < bound, precision
        assert _relative_error(z_y, data["encode"][0]["z_y"]) < bound, precision
        assert _relative_error(decoded, data["decode_out"][-1]) < 2 * bound, precision


def test_bf16_sampling_runs_batched(resshift_parity_dir: Path) -> None:
    data = torch.load(resshift_parity_dir / "basic.pt", weights_only=False)
    lr = data["lr01"].repeat(2, 1, 1, 1)
    fp32 = _teacher(resshift_parity_dir, "fp32").sample(lr, seed=3)
    bf16 = _teacher(resshift_parity_dir, "bf16").sample(lr, seed=3)
    assert bf16.dtype == torch.float32 and bf16.shape == (2, 3, 256, 256)
    assert torch.isfinite(bf16).all() and bf16.min() >= 0 and bf16.max() <= 1
    assert (bf16 - fp32).abs().mean().item() < 0.25  # random weights: loose, see module doc
    again = _teacher(resshift_parity_dir, "bf16").sample(lr, seed=3)
    assert (again - bf16).abs().mean().item() < 1e-2  # same seed -> same per-sample noise


def test_large_tile_uses_sdpa_without_oom(resshift_parity_dir: Path) -> None:
    teacher = _teacher(resshift_parity_dir, "bf16")
    out = teacher.sample(torch.rand(1, 3, 256, 256), seed=1, chop_size=512)  # 65,536 VQ tokens
    assert out.shape == (1, 3, 1024, 1024) and torch.isfinite(out).all()
