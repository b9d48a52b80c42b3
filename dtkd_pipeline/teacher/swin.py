"""ResShift's Swin `BasicLayer`: a channels-first Swin stage with GroupNorm instead of LayerNorm.

Quirks replicated from `models/swin_transformer.py` (reference §5.2), all needed to match the
released checkpoints:
* norm1/norm2 are GroupNorm(32, C) on B×C×H×W tensors; the MLP is 1×1 convs with exact GELU.
* Window size and shift come from the *config-time* resolution (`img_size = ds`), never from the
  runtime size: a level whose config resolution is <= window_size uses window = that resolution and
  shift 0 in every block.
* The shifted-window mask is upstream's non-standard `calculate_mask` output, recomputed for the
  runtime size (the stored `attn_mask` buffer is never used upstream): only windows in the last
  window-row are masked, and inside them tokens with column j < ws - shift and j >= ws - shift
  cannot attend to each other. See `official_attention_mask`.
"""

from __future__ import annotations

import torch
from torch import nn

from dtkd_pipeline.teacher.layers import GroupNorm32
from dtkd_pipeline.window_attention import (
    HALF_DTYPES,
    ShiftMaskCache,
    attention_ops,
    attention_sdpa,
    relative_position_bias,
    relative_position_index,
)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """B×C×H×W -> (B·nW)×(ws·ws)×C; window index b·nW + r·(W/ws) + c, token index i·ws + j."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B·nW)×(ws·ws)×C -> B×C×H×W."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)


def official_attention_mask(
    h: int, w: int, window: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """Upstream `calculate_mask` for an H×W map, quirks included; returns nW×N×N (0 or -100).

    Upstream labels a (1, 1, H, W) tensor through `[:, h_slice, w_slice, :]`, so the "h" slices hit
    the size-1 channel axis (only `slice(-shift, None)` is non-empty there) and the "w" slices hit
    the rows: labels depend on the row only (6 / 7 / 8 for rows [0, H-ws), [H-ws, H-shift),
    [H-shift, H)).
    The windowed labels are then permuted (0, 2, 3, 1), which transposes the token order inside
    each window. For shift 0 every row gets the same label, so the mask is all zeros.
    """
    rows = torch.zeros(h, dtype=torch.float32, device=device)
    if shift > 0:
        # Only the channel slice `slice(-shift, None)` is non-empty, so cnt runs 6, 7, 8 over rows.
        for label, row_slice in enumerate(
            (slice(0, -window), slice(-window, -shift), slice(-shift, None)), start=6
        ):
            rows[row_slice] = label
    labels = rows[:, None].expand(h, w)
    # window partition of the label map: nW × ws(i) × ws(j) ...
    windows = labels.reshape(h // window, window, w // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window, window)
    # ... then upstream's permute(0, 2, 3, 1) transposes i and j before flattening.
    flat = windows.transpose(1, 2).reshape(-1, window * window)
    diff = flat.unsqueeze(1) - flat.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Float32 runs upstream's ops (`attention_ops`), which keeps the CPU float32 output
    bit-identical to the official sampler. Half-precision runs (bf16/fp16 autocast) are not
    bit-exact anyway, so there the bias and mask go to `F.scaled_dot_product_attention` in the
    layout its fused kernels take (`attention_sdpa`), which never writes the window×head×N×N
    logits to memory. `fused_half = False` keeps upstream's ops under autocast too (the
    benchmark's A/B switch).
    """

    fused_half = True

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent so the state dict matches upstream's keys; recomputed, never loaded.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        fused = self.fused_half and q.dtype in HALF_DTYPES
        attention = attention_sdpa if fused else attention_ops
        bias = relative_position_bias(
            self.relative_position_bias_table, self.relative_position_index
        )
        out = attention(q, k, v, bias, mask, self.scale)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, channels))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        config_resolution: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        if (
            config_resolution <= window
        ):  # upstream: window shrinks to the config resolution, no shift
            window, shift = config_resolution, 0
        self.window = window
        self.shift = shift
        self.norm1 = GroupNorm32(32, dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(32, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:  # upstream registers the buffer only for shifted blocks (state-dict parity)
            mask = official_attention_mask(config_resolution, config_resolution, window, shift)
            self.register_buffer("attn_mask", mask)
        else:
            self.attn_mask = None
        self._mask_cache = ShiftMaskCache(official_attention_mask)

    def _runtime_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        if self.shift == 0:
            return None  # upstream adds an all-zero mask here; adding zeros changes no value
        return self._mask_cache.get(h, w, self.window, self.shift, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.window or w % self.window:
            raise ValueError(
                f"Swin level of size {h}x{w} is not a multiple of window {self.window}"
            )
        shortcut = x
        x = self.norm1(x)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(2, 3))
        windows = self.attn(window_partition(x, self.window), self._runtime_mask(h, w, x.device))
        x = window_reverse(windows, self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchConv(nn.Module):
    """1×1 conv used as patch (un)embedding; wrapped so the keys read `patch_embed.proj.*`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class BasicLayer(nn.Module):
    """patch_embed 1×1 -> `depth` Swin blocks (odd ones shifted) -> patch_unembed 1×1; no skip."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_heads: int,
        window: int,
        depth: int,
        config_resolution: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchConv(in_channels, embed_dim)
        # Registered before `blocks` so the state-dict order matches upstream's.
        self.patch_unembed = PatchConv(embed_dim, in_channels)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                embed_dim,
                config_resolution,
                num_heads,
                window,
                shift=0 if index % 2 == 0 else window // 2,
                mlp_ratio=mlp_ratio,
            )
            for index in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)
