"""ResShift's VQGAN f4 (`VQModelTorch`): encoder, vector quantiser, decoder (reference §5.3, §2.4).

Numerics that differ from the UNet on purpose: GroupNorm eps 1e-6 and swish = x·sigmoid(x) (not
F.silu); the encoder Downsample pads asymmetrically (right/bottom by 1) before a stride-2 conv.
`encode` does not quantise; `decode` quantises to the nearest codebook entry with upstream's
distance formula and straight-through `z + (zq - z)`, which differs from E[idx] by 1 ulp in about
a third of the elements and is therefore replicated.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from dtkd_pipeline.teacher.config import AutoencoderConfig
from dtkd_pipeline.teacher.layers import GroupNorm32

AttentionBackend = Literal["auto", "exact", "sdpa"]

EXACT_ATTENTION_MAX_TOKENS = 128 * 128
"""Largest token count (latent H·W) for which "auto" uses the exact bmm path on CPU in float32.

The exact path builds one N×N matrix per image (1 GiB at 128×128 tokens, i.e. a 128 px LR patch).
It reproduces upstream's float32 bits; F.scaled_dot_product_attention does not (it scales q and k
separately), but needs no N×N buffer, so it is used above this size, on CUDA and under autocast."""

QUANTIZE_CHUNK_ROWS = 1 << 16
"""Latent pixels per distance matrix in `VectorQuantizer` (65536×8192 fp32 = 2 GiB at most)."""


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def normalize(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head attention over all H·W positions (the VQGAN mid block)."""

    def __init__(self, channels: int, backend: AttentionBackend = "auto") -> None:
        super().__init__()
        self.backend: AttentionBackend = backend
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _use_exact(self, q: torch.Tensor) -> bool:
        if self.backend != "auto":
            return self.backend == "exact"
        tokens = q.shape[2] * q.shape[3]
        return (
            q.device.type == "cpu"
            and q.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and tokens <= EXACT_ATTENTION_MAX_TOKENS
        )

    @staticmethod
    def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Upstream's ops: softmax(bmm(qᵀ, k)·C^-½, dim 2), out = bmm(v, wᵀ), image by image."""
        b, c, h, w = q.shape
        outs = []
        for item in range(b):  # one N×N matrix alive at a time
            qi = q[item : item + 1].reshape(1, c, h * w).permute(0, 2, 1)
            weights = torch.bmm(qi, k[item : item + 1].reshape(1, c, h * w)) * (int(c) ** (-0.5))
            weights = F.softmax(weights, dim=2).permute(0, 2, 1)
            outs.append(torch.bmm(v[item : item + 1].reshape(1, c, h * w), weights))
        return torch.cat(outs).reshape(b, c, h, w)

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, c, h, w = q.shape

        def tokens(t: torch.Tensor) -> torch.Tensor:
            # contiguous channels-last tokens: the fused (memory-efficient) CUDA kernels need it
            return t.reshape(b, 1, c, h * w).transpose(2, 3).contiguous()

        out = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))
        return out.transpose(2, 3).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        out = self._exact(q, k, v) if self._use_exact(q) else self._sdpa(q, k, v)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level; attribute names give upstream's `down.i.block.j` / `up.i.upsample`."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _apply_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for index, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[index](h)
    return h


class Encoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        in_mult = (1, *mult)
        resolution = config.resolution
        block_in = ch
        for index, level_mult in enumerate(mult):
            block_in, block_out = ch * in_mult[index], ch * level_mult
            blocks, attn = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if resolution in config.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            level = _Level(blocks, attn)
            if index != len(mult) - 1:
                level.downsample = Downsample(block_in)
                resolution //= 2
            self.down.append(level)
        self.mid = _Mid(block_in)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _apply_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        block_in = ch * mult[-1]
        resolution = config.resolution // 2 ** (len(mult) - 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for index in reversed(range(len(mult))):
            block_out = ch * mult[index]
            blocks, attn = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if resolution in config.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            level = _Level(blocks, attn)
            if index != 0:
                level.upsample = Upsample(block_in)
                resolution *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level: applied as up[n-1], ..., up[0]
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = _apply_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser (upstream VectorQuantizer2, legacy), straight-through output."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Code index per latent pixel, flattened in (b, h, w) order; distances in float32."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            codebook = self.embedding.weight.float()
            codebook_sq = torch.sum(codebook**2, dim=1)
            codebook_t = codebook.t()
            chunks = []
            for rows in flat.split(QUANTIZE_CHUNK_ROWS):
                # d = |z|² + |e|² − 2 z·e, summed in upstream's order; argmin keeps the first tie.
                distance = (
                    torch.sum(rows**2, dim=1, keepdim=True)
                    + codebook_sq
                    - 2 * torch.einsum("bd,dn->bn", rows, codebook_t)
                )
                chunks.append(torch.argmin(distance, dim=1))
        return torch.cat(chunks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        indices = self.indices(z)
        z_hwc = z.permute(0, 2, 3, 1)
        quantized = self.embedding(indices).view(z_hwc.shape)
        quantized = z_hwc + (quantized - z_hwc)  # straight-through, kept for upstream's exact bits
        return quantized.permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """VQGAN f4: encode (no quantisation) and decode (quantise -> post_quant_conv -> decoder)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
