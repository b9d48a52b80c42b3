"""Window attention shared by the teacher and the student: SDPA layout and head-dim padding."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dtkd_pipeline.student import build_student
from dtkd_pipeline.student.swinir import WindowAttention as StudentWindowAttention
from dtkd_pipeline.student.swinir import shifted_window_mask
from dtkd_pipeline.teacher.swin import SwinTransformerBlock, official_attention_mask
from dtkd_pipeline.window_attention import (
    attention_ops,
    attention_sdpa,
    fused_head_dim,
    relative_position_bias,
    relative_position_index,
)

IMAGES, SIDE, WINDOW = 3, 32, 8
WINDOWS_PER_IMAGE, TOKENS = (SIDE // WINDOW) ** 2, WINDOW * WINDOW


def _inputs(heads: int, head_dim: int, *, grad: bool = False) -> list[torch.Tensor]:
    """q, k, v for 3 images of 16 windows, and an upstream-sized bias (trained tables reach a
    few units, so a dropped bias would show), all float64."""
    generator = torch.Generator().manual_seed(0)
    shape = (IMAGES * WINDOWS_PER_IMAGE, heads, TOKENS, head_dim)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in "qkv"]
    table = 2.0 * torch.randn((2 * WINDOW - 1) ** 2, heads, generator=generator).double()
    tensors.append(relative_position_bias(table, relative_position_index(WINDOW)))
    return [t.requires_grad_(grad) for t in tensors]


SHIFT_MASKS = {
    "student": shifted_window_mask(SIDE, SIDE, WINDOW, WINDOW // 2).double(),
    "teacher": official_attention_mask(SIDE, SIDE, window=WINDOW, shift=WINDOW // 2).double(),
    "none": None,
}


@pytest.mark.parametrize("mask_name", SHIFT_MASKS)
@pytest.mark.parametrize(("heads", "head_dim"), [(6, 10), (2, 32)])
def test_sdpa_equals_upstream_ops_with_bias_and_shift_mask(
    mask_name: str, heads: int, head_dim: int
) -> None:
    """The fused layout (windows as heads, mask broadcast over the images) computes upstream's
    attention for every image; float64, where both are exact to rounding."""
    q, k, v, bias = _inputs(heads, head_dim)
    mask = SHIFT_MASKS[mask_name]
    scale = head_dim**-0.5
    fused = attention_sdpa(q, k, v, bias, mask, scale)
    assert fused.shape == q.shape
    assert (fused - attention_ops(q, k, v, bias, mask, scale)).abs().max().item() < 1e-12
    if mask is not None:  # the mask is applied, and to the right windows
        assert (attention_sdpa(q, k, v, bias, None, scale) - fused).abs().max().item() > 0.1
        rolled = mask.roll(1, dims=0)
        assert (attention_sdpa(q, k, v, bias, rolled, scale) - fused).abs().max().item() > 0.1


def test_head_dim_padding_changes_neither_output_nor_gradients() -> None:
    """Zero-padding q, k, v to the fused kernel's alignment (10 -> 16 for SwinIR-s) leaves q·k,
    the scale and the output unchanged, and so the gradients of q, k, v and the bias."""
    mask = SHIFT_MASKS["student"]
    results = []
    for padded in (10, 16):
        q, k, v, bias = _inputs(6, 10, grad=True)
        out = attention_sdpa(q, k, v, bias, mask, 10**-0.5, padded_head_dim=padded)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach()] + [t.grad for t in (q, k, v, bias)])
    for unpadded, padded in zip(*results, strict=True):
        assert unpadded.shape == padded.shape
        assert (unpadded - padded).abs().max().item() < 1e-12


def test_fused_head_dim_follows_the_cuda_kernel_alignment() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_head_dim(10, torch.bfloat16, cpu) == 10  # CPU kernels take any head dim
    assert fused_head_dim(10, torch.bfloat16, cuda) == 16
    assert fused_head_dim(10, torch.float16, cuda) == 16
    assert fused_head_dim(10, torch.float32, cuda) == 12
    assert fused_head_dim(32, torch.bfloat16, cuda) == 32


def test_no_head_dim_padding_where_only_the_math_kernel_runs() -> None:
    """count_flops forces the math kernel; padded to 16 on CUDA, SwinIR-s's head dim 10 counted
    60% more attention FLOPs than the model has."""
    cuda = torch.device("cuda")
    with sdpa_kernel(SDPBackend.MATH):
        assert fused_head_dim(10, torch.bfloat16, cuda) == 10

    @torch.compile(backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    def compiled(x: torch.Tensor) -> torch.Tensor:
        return x + fused_head_dim(10, torch.bfloat16, cuda)

    assert compiled(torch.zeros(1)).item() == 16


def test_relative_position_index_follows_swin_definition() -> None:
    index = relative_position_index(3)
    # token 0 is (0, 0), token 8 is (2, 2): delta (-2, -2) -> (0)·5 + 0; reversed: (4)·5 + 4
    assert index[0, 8].item() == 0 and index[8, 0].item() == 24
    # token 1 is (0, 1), token 3 is (1, 0): delta (-1, +1) -> (1)·5 + 3, the rows' term first; a
    # row/column swap (which the symmetric pairs above cannot see) would give 16 here
    assert index[1, 3].item() == 8 and index[3, 1].item() == 16
    assert index.diagonal().unique().tolist() == [12]  # delta (0, 0) is the table's centre
    assert index.dtype == torch.int64 and index.shape == (9, 9)


def test_shifted_student_blocks_run_on_the_fused_cpu_kernel() -> None:
    """Inference through SwinIR's shifted blocks is eligible for a fused SDPA kernel (flash on
    the CPU); the former 5-D layout only ran on the math kernel. Same output as the math path."""
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4").eval()
    lr = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            reference = model(lr)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if no fused kernel takes it
            fused = model(lr)
    assert (fused - reference).abs().max().item() < 1e-5


def test_student_official_ops_switch_gives_the_same_model(monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4").eval()
    lr = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        default = model(lr)
        monkeypatch.setattr(StudentWindowAttention, "use_sdpa", False)
        official = model(lr)
    assert (default - official).abs().max().item() < 1e-5


def test_shifted_teacher_blocks_run_on_the_fused_cpu_kernel_in_half_precision() -> None:
    """The teacher's half-precision path (upstream's quirky mask) is fused-kernel eligible too;
    the mask now broadcasts over the batch instead of being tiled into a (B·nW)×heads×N×N copy."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(
        64, SIDE, num_heads=2, window=WINDOW, shift=WINDOW // 2, mlp_ratio=2.0
    ).eval()
    x = torch.randn(2, 64, SIDE, SIDE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.MATH):
            reference = block(x).float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fused = block(x).float()
    assert (fused - reference).abs().max().item() < 0.05  # bf16 rounding of two kernels


def test_student_trains_on_the_cpu_with_official_ops_and_infers_through_sdpa(monkeypatch) -> None:
    """No CPU fused kernel takes the learned bias's gradient, so CPU training keeps the ops."""
    from dtkd_pipeline.student import swinir

    calls: list[str] = []
    for path in ("attention_sdpa", "attention_ops"):
        original = getattr(swinir, path)
        monkeypatch.setattr(swinir, path, lambda *a, p=path, f=original: calls.append(p) or f(*a))
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4")
    lr = torch.rand(1, 3, 24, 24)
    model(lr).mean().backward()
    assert set(calls) == {"attention_ops"}
    calls.clear()
    with torch.no_grad():
        model(lr)
    assert set(calls) == {"attention_sdpa"}
