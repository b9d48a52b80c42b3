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

from dtkd_pipeline.teacher import Teacher, load_teacher, random_teacher

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _teacher(directory: Path, precision: str, **speed: object) -> Teacher:
    return load_teacher(
        directory / "config.yaml",
        unet=directory / "unet.pth",
        autoencoder=directory / "vq_basic.pth",
        device="cuda",
        precision=precision,  # type: ignore[arg-type]
        **speed,  # type: ignore[arg-type]
    )


def _random(directory: Path, precision: str, **speed: object) -> Teacher:
    """The tiny config with seeded random weights: needs only config.yaml of the fixtures."""
    return random_teacher(
        directory / "config.yaml",
        seed=0,
        device="cuda",
        precision=precision,
        **speed,  # type: ignore[arg-type]
    )


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.float().cpu()
    return ((actual - expected).norm() / expected.norm()).item()


def test_half_precision_groupnorm_keeps_float32_statistics() -> None:
    from dtkd_pipeline.teacher.layers import GroupNorm32

    norm = GroupNorm32(4, 8).cuda()
    # A large mean over 512 values per group: fp16 sums would lose it, fp32 statistics do not.
    x = (torch.randn(2, 8, 16, 16, device="cuda") * 30 + 1000).half()
    expected = norm(x.float())  # float32 all the way, on the same fp16-rounded input
    with torch.autocast("cuda", dtype=torch.float16):
        out = norm(x)
    assert out.dtype == torch.float16
    # Only the fp16 rounding of the normalised output remains (2^-11 relative).
    assert _relative_error(out.float(), expected.cpu()) < 2e-3


def test_network_calls_close_to_cpu_fixture(resshift_parity_dir: Path) -> None:
    data = torch.load(resshift_parity_dir / "basic.pt", weights_only=False)
    call = data["unet_calls"][0]
    y_up = F.interpolate(data["encode"][0]["y_in"], scale_factor=4, mode="bicubic").cuda()
    # fp32 is IEEE float32 on CUDA too (TF32 off), so it lands near the CPU fixture.
    for precision, bound in (("fp32", 1e-4), ("tf32", 5e-3), ("bf16", 0.05)):
        teacher = _teacher(resshift_parity_dir, precision)
        with torch.inference_mode(), teacher._math_mode():
            unet_out = teacher.unet(call["x_scaled"].cuda(), call["t"].cuda(), call["lq"].cuda())
            z_y = teacher.autoencoder.encode(y_up)
            decoded = teacher.autoencoder.decode(data["decode_in"][-1].cuda())
        assert _relative_error(unet_out, call["out"]) < bound, precision
        assert _relative_error(z_y, data["encode"][0]["z_y"]) < bound, precision
        assert _relative_error(decoded, data["decode_out"][-1]) < 2 * bound, precision


def test_bf16_sampling_runs_batched(resshift_parity_dir: Path) -> None:
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)).repeat(2, 1, 1, 1)
    fp32 = _random(resshift_parity_dir, "fp32").sample(lr, seed=3)
    bf16 = _random(resshift_parity_dir, "bf16").sample(lr, seed=3)
    assert bf16.dtype == torch.float32 and bf16.shape == (2, 3, 256, 256)
    assert torch.isfinite(bf16).all() and bf16.min() >= 0 and bf16.max() <= 1
    assert (bf16 - fp32).abs().mean().item() < 0.25  # random weights: loose, see module doc
    again = _random(resshift_parity_dir, "bf16").sample(lr, seed=3)
    assert (again - bf16).abs().mean().item() < 1e-2  # same seed -> same per-sample noise


def test_large_tile_uses_sdpa_without_oom(resshift_parity_dir: Path) -> None:
    teacher = _random(resshift_parity_dir, "bf16")
    out = teacher.sample(torch.rand(1, 3, 256, 256), seed=1, chop_size=512)  # 65,536 VQ tokens
    assert out.shape == (1, 3, 1024, 1024) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "speed",
    [{"channels_last": True}, {"compile_mode": "default"}, {"compile_mode": "reduce-overhead"}],
    ids=["channels_last", "compile", "cuda_graphs"],
)
def test_speed_options_keep_bf16_outputs(resshift_parity_dir: Path, speed: dict) -> None:
    lr = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    reference = _random(resshift_parity_dir, "bf16").sample(lr, seed=6)
    fast = _random(resshift_parity_dir, "bf16", **speed)
    first = fast.sample(lr, seed=6)
    second = fast.sample(lr, seed=6)  # a replay must not hand back the previous call's buffers
    for out in (first, second):
        assert torch.isfinite(out).all()
        assert (out - reference).abs().mean().item() < 2e-2
    assert (first - second).abs().max().item() < 2e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_window_attention_runs_on_cuda_and_matches_upstream_ops(dtype: torch.dtype) -> None:
    """The SDPA window attention (default under autocast) against upstream's three ops, both in
    the same half dtype on the GPU, on a shifted block at a batch of several images."""
    from dtkd_pipeline.teacher.swin import SwinTransformerBlock, WindowAttention

    torch.manual_seed(0)
    block = SwinTransformerBlock(64, 32, num_heads=2, window=8, shift=4, mlp_ratio=2.0)
    block = block.cuda().eval()
    x = torch.randn(4, 64, 32, 32, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        fused = block(x).float()
        WindowAttention.fused_half = False
        try:
            upstream = block(x).float()
        finally:
            WindowAttention.fused_half = True
    assert (fused - upstream).abs().max().item() < 0.05
    assert _relative_error(fused, upstream.cpu()) < 0.01
