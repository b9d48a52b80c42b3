"""Self-attention inside (shifted) Swin windows, shared by the teacher's and the student's blocks.

Both upstreams (ResShift's Swin stages, SwinIR) compute, per window and head,
softmax(q·scale @ kᵀ + bias + shift_mask) @ v, with a learned relative-position bias (heads×N×N)
and, in shifted blocks, a per-window mask (nW×N×N) that repeats for every image of the batch.

`attention_ops` runs upstream's explicit ops, bit-identical to the official float32 code.
`attention_sdpa` gives the same function to `F.scaled_dot_product_attention` in a form its fused
kernels accept, so that the window×head×N×N logits never go through memory:

* inputs and mask must be 4-D, so for shifted blocks the windows of an image become extra heads,
  B×(nW·heads)×N×d: the per-window mask then broadcasts over the batch with stride 0 instead of
  being tiled (a 5-D view would broadcast too, but only the unfused math kernel takes it);
* on CUDA, the memory-efficient kernel needs a head dim divisible by 8 (half) or 4 (float32) on
  sm80+; SwinIR-s has 10, so q, k and v are zero-padded (q·k and the scale are unchanged, the
  padded output channels are zero and dropped).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)

MaskBuilder = Callable[[int, int, int, int, "torch.device | None"], torch.Tensor]
"""(height, width, window, shift, device) -> the nW×N×N additive shift mask, built on device."""


class ShiftMaskCache:
    """Shifted-window masks keyed by (size, window, shift, device), built by one `MaskBuilder`.

    A mask depends only on the input size, so one tensor serves every forward (and every block
    that shares the cache); the official models recompute it on the CPU in every block.
    """

    def __init__(self, build: MaskBuilder) -> None:
        self._build = build
        self._masks: dict[tuple[int, int, int, int, torch.device], torch.Tensor] = {}

    def get(
        self, height: int, width: int, window: int, shift: int, device: torch.device
    ) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Built inside the graph on the device (folded to a constant), never cached: filling
            # the cache in a traced call fails the graph's guard on it at the next call (one more
            # full compilation), a tensor kept from a traced call would be an overwritten
            # CUDA-graph buffer later, and a CPU-built one would keep CUDA graphs off and make
            # inductor compile a C++ kernel for it.
            return self._build(height, width, window, shift, device)
        key = (height, width, window, shift, device)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = self._build(height, width, window, shift, device)
        return mask


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) int64 bias-table index of tokens i, j: (dh + ws - 1)·(2ws - 1) + (dw + ws - 1)."""
    rows = torch.arange(window).repeat_interleave(window)  # row-major token order
    cols = torch.arange(window).repeat(window)
    delta_rows = rows[:, None] - rows[None, :] + window - 1
    delta_cols = cols[:, None] - cols[None, :] + window - 1
    return delta_rows * (2 * window - 1) + delta_cols


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """heads×N×N bias gathered from the ((2ws-1)², heads) table; per call, as the table trains."""
    tokens = index.shape[0]
    return table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)


def attention_ops(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    shift_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Upstream's ops. q, k, v: (B·nW)×heads×N×d; bias: heads×N×N; shift_mask: nW×N×N or None."""
    # q is scaled before the matmul, as upstream (scaling after changes float32 bits)
    attn = (q * scale) @ k.transpose(-2, -1) + bias.contiguous()
    if shift_mask is not None:
        windows, heads, tokens = shift_mask.shape[0], q.shape[1], q.shape[2]
        attn = attn.view(-1, windows, heads, tokens, tokens)
        attn = attn + shift_mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, tokens, tokens)
    return attn.softmax(dim=-1) @ v


def fused_kernel_can_run(bias: torch.Tensor) -> bool:
    """False on the CPU when the bias needs a gradient: no CPU fused kernel takes a mask that
    does, and SDPA's math fallback there measured slower than upstream's ops (docs/performance.md).
    """
    return bias.device.type != "cpu" or not (torch.is_grad_enabled() and bias.requires_grad)


def fused_head_dim(head_dim: int, dtype: torch.dtype, device: torch.device) -> int:
    """Head dim the CUDA memory-efficient kernel accepts (sm80+ GEMM alignment); CPU needs none,
    nor CUDA when only the math kernel may run (e.g. FLOP counting, whose padded matmuls would
    count as the model's)."""
    if device.type != "cuda":
        return head_dim
    # Dynamo cannot trace the backend flags (a graph break per block); compiled graphs are
    # never FLOP-counted, so they keep the padding.
    if not torch.compiler.is_compiling() and not (
        torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()
    ):
        return head_dim
    alignment = 8 if dtype in HALF_DTYPES else 4
    return -(-head_dim // alignment) * alignment


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    shift_mask: torch.Tensor | None,
    scale: float,
    padded_head_dim: int | None = None,
) -> torch.Tensor:
    """`attention_ops` through SDPA in a fused-kernel layout; same arguments, same output shape.

    `padded_head_dim` defaults to what the device's fused kernel needs (`fused_head_dim`).
    """
    windows, heads, tokens, head_dim = q.shape
    attn_mask = bias.to(q.dtype).unsqueeze(0)  # 1×heads×N×N: fused kernels want a 4-D mask
    if shift_mask is not None:
        n_windows = shift_mask.shape[0]
        attn_mask = attn_mask + shift_mask.to(q.dtype).unsqueeze(1)
        attn_mask = attn_mask.reshape(1, n_windows * heads, tokens, tokens)
        q, k, v = (
            t.reshape(windows // n_windows, n_windows * heads, tokens, head_dim) for t in (q, k, v)
        )
    if padded_head_dim is None:
        padded_head_dim = fused_head_dim(head_dim, q.dtype, q.device)
    if padded_head_dim != head_dim:
        q, k, v = (F.pad(t, (0, padded_head_dim - head_dim)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out[..., :head_dim].reshape(windows, heads, tokens, head_dim)
