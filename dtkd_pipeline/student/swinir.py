"""SwinIR (lightweight variant) written from the reference spec, key-compatible with official files.

The module tree and parameter names follow the official `network_swinir.py` so that released
checkpoints load strictly (see `dtkd_pipeline.student.weights`). Numerics differ from the original
only in two places, both within the 1e-4 parity tolerance:

* window attention runs through `F.scaled_dot_product_attention`, with the relative-position bias
  and the shifted-window mask passed as one additive float mask, in the layout its fused kernels
  accept (`dtkd_pipeline.window_attention`), except when training on the CPU, where no fused
  kernel takes the bias gradient and the official ops are faster;
* the shifted-window mask is computed once per padded input size (and device) and cached, instead
  of being recomputed in every shifted block on every forward.

The `attn_mask` and `relative_position_index` buffers are still registered (persistent, official
names and shapes) so that the state-dict key set equals the official one; the forward never reads
`attn_mask`, because it is a pure function of the input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dtkd_pipeline.window_attention import (
    ShiftMaskCache,
    attention_ops,
    attention_sdpa,
    fused_kernel_can_run,
    relative_position_bias,
    relative_position_index,
)

# RGB mean of DIV2K used by the official model (not a parameter, not in the state dict).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Value the official code writes between tokens of different regions of a shifted window.
SHIFT_MASK_VALUE = -100.0

SUPPORTED_UPSAMPLERS = ("pixelshuffledirect",)
SUPPORTED_RESI_CONNECTIONS = ("1conv",)


@dataclass(frozen=True)
class SwinIRConfig:
    """Constructor arguments of the lightweight SwinIR (defaults: the official x4 model)."""

    upscale: int = 4
    in_chans: int = 3
    img_size: int = 64
    window_size: int = 8
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    mlp_ratio: float = 2.0
    img_range: float = 1.0
    drop_path_rate: float = 0.1
    upsampler: str = "pixelshuffledirect"
    resi_connection: str = "1conv"

    def __post_init__(self) -> None:
        problems = []
        if self.upscale < 1:
            problems.append(f"upscale must be >= 1, got {self.upscale}")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            problems.append(
                f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and "
                "of equal length"
            )
        for heads in self.num_heads:
            if heads < 1 or self.embed_dim % heads:
                problems.append(f"embed_dim {self.embed_dim} is not divisible by {heads} heads")
        if self.window_size < 1 or self.img_size < 1:
            problems.append("window_size and img_size must be positive")
        if not 0.0 <= self.drop_path_rate < 1.0:
            problems.append(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.upsampler not in SUPPORTED_UPSAMPLERS:
            problems.append(
                f"upsampler must be one of {SUPPORTED_UPSAMPLERS}, got {self.upsampler!r}"
            )
        if self.resi_connection not in SUPPORTED_RESI_CONNECTIONS:
            problems.append(
                f"resi_connection must be one of {SUPPORTED_RESI_CONNECTIONS}, "
                f"got {self.resi_connection!r}"
            )
        if problems:
            raise ValueError("invalid SwinIR config: " + "; ".join(problems))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B×H×W×C -> (B·nW)×(ws·ws)×C; windows batch-major then row-major, tokens row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(
    windows: torch.Tensor, window_size: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of `window_partition`: (B·nW)×(ws·ws)×C -> B×H×W×C."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """(nW, N, N) float32 mask: 0 within a region, -100 between tokens the roll made adjacent."""
    labels = torch.zeros(1, height, width, 1, device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for row_slice in bounds:
        for col_slice in bounds:
            labels[:, row_slice, col_slice, :] = region
            region += 1
    window_labels = window_partition(labels, window_size).squeeze(-1)  # nW × N
    differs = window_labels[:, None, :] != window_labels[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill_(differs, SHIFT_MASK_VALUE)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability p while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Runs through SDPA in a fused-kernel layout (`dtkd_pipeline.window_attention`) wherever a fused
    kernel can take it; `use_sdpa = False` always runs the official matmul/softmax ops (the
    benchmark's A/B switch).
    """

    use_sdpa = True

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B·nW)×N×C; mask: (nW, N, N) additive shift mask or None."""
        num_windows_total, tokens, channels = windows.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(windows).view(num_windows_total, tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B·nW)×nH×N×hd
        bias = relative_position_bias(
            self.relative_position_bias_table, self.relative_position_index
        )
        fused = self.use_sdpa and fused_kernel_can_run(bias)
        attention = attention_sdpa if fused else attention_ops
        out = attention(query, key, value, bias, mask, self.scale)
        return self.proj(out.transpose(1, 2).reshape(num_windows_total, tokens, channels))


class SwinTransformerBlock(nn.Module):
    """Pre-norm Swin layer: (shifted) window attention and an MLP, each with a residual."""

    def __init__(
        self,
        dim: int,
        input_resolution: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        drop_path: float,
        mask_cache: ShiftMaskCache,
    ) -> None:
        super().__init__()
        # Official rule, decided from img_size at construction: a window never exceeds the image.
        if input_resolution <= window_size:
            window_size, shift_size = input_resolution, 0
        self.window_size = window_size
        self.shift_size = shift_size
        self.mask_cache = mask_cache
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift_size > 0:
            # Kept only so the state-dict keys equal the official ones; forward uses mask_cache.
            self.register_buffer(
                "attn_mask",
                shifted_window_mask(input_resolution, input_resolution, window_size, shift_size),
            )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        height, width = x_size
        batch, _, channels = x.shape
        shortcut = x
        x = self.norm1(x).view(batch, height, width, channels)
        mask = None
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = self.mask_cache.get(height, width, self.window_size, self.shift_size, x.device)
        windows = self.attn(window_partition(x, self.window_size), mask)
        x = window_reverse(windows, self.window_size, height, width)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(batch, height * width, channels))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin layers alternating between regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_paths: list[float],
        mask_cache: ShiftMaskCache,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                input_resolution=input_resolution,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if index % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                drop_path=drop_paths[index],
                mask_cache=mask_cache,
            )
            for index in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x_size)
        return x


def tokens_to_image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """B×(H·W)×C -> B×C×H×W."""
    batch, _, channels = x.shape
    return x.transpose(1, 2).reshape(batch, channels, *x_size)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W -> B×(H·W)×C."""
    return x.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin layers, a 3×3 conv, and a skip around both."""

    def __init__(
        self,
        dim: int,
        input_resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_paths: list[float],
        mask_cache: ShiftMaskCache,
    ) -> None:
        super().__init__()
        self.residual_group = BasicLayer(
            dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop_paths, mask_cache
        )
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        body = tokens_to_image(self.residual_group(x, x_size), x_size)
        return image_to_tokens(self.conv(body)) + x


class PatchEmbedNorm(nn.Module):
    """Flatten to tokens, then LayerNorm (the official `patch_embed` with patch_norm=True)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(image_to_tokens(x))


class SwinIR(nn.Module):
    """SwinIR with the `pixelshuffledirect` head: B×C×h×w in [0,1] -> B×C×(s·h)×(s·w), no clamp."""

    def __init__(self, config: SwinIRConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SwinIRConfig()
        dim = config.embed_dim
        self.upscale = config.upscale
        self.window_size = config.window_size
        self.img_range = config.img_range
        mean = DIV2K_RGB_MEAN if config.in_chans == 3 else (0.0,) * config.in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.mask_cache = ShiftMaskCache(shifted_window_mask)

        self.conv_first = nn.Conv2d(config.in_chans, dim, 3, 1, 1)
        self.patch_embed = PatchEmbedNorm(dim)
        drop_rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.layers = nn.ModuleList()
        for index, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True)):
            first = sum(config.depths[:index])
            self.layers.append(
                RSTB(
                    dim=dim,
                    input_resolution=config.img_size,
                    depth=depth,
                    num_heads=heads,
                    window_size=config.window_size,
                    mlp_ratio=config.mlp_ratio,
                    drop_paths=drop_rates[first : first + depth],
                    mask_cache=self.mask_cache,
                )
            )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.upsample = nn.Sequential(
            nn.Conv2d(dim, config.in_chans * config.upscale**2, 3, 1, 1),
            nn.PixelShuffle(config.upscale),
        )
        self.apply(_init_weights)

    def pad_to_window_multiple(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad right/bottom to a multiple of the window (the official internal padding)."""
        height, width = x.shape[-2:]
        pad_bottom = (-height) % self.window_size
        pad_right = (-width) % self.window_size
        if pad_bottom == 0 and pad_right == 0:
            return x
        if pad_bottom >= height or pad_right >= width:
            raise ValueError(
                f"input of size {height}x{width} is too small for reflect padding to a multiple "
                f"of the window size {self.window_size}; use at least "
                f"{self.window_size // 2 + 1} pixels per side or a multiple of {self.window_size}"
            )
        return F.pad(x, (0, pad_right, 0, pad_bottom), mode="reflect")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, x_size)
        return tokens_to_image(self.norm(tokens), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = self.pad_to_window_multiple(x)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        features = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(features)) + features
        x = self.upsample(x) / self.img_range + mean
        return x[:, :, : height * self.upscale, : width * self.upscale]


def _init_weights(module: nn.Module) -> None:
    """Official init: truncated-normal Linear and bias tables, unit LayerNorm, default conv."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
