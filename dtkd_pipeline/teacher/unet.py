"""ResShift `UNetModelSwin` (models/unet.py) for the real-world x4 configs.

A guided-diffusion UNet (scale-shift ResBlocks, GroupNorm32 in float32, F.silu) with one Swin
`BasicLayer` after the first ResBlock of every level whose config resolution is in
`attention_resolutions`, conditioned by concatenating the LR image (in [-1, 1], LR resolution) to
the scaled latent. Module names follow upstream so official state dicts load unchanged (§5.1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dtkd_pipeline.teacher.config import UNetConfig
from dtkd_pipeline.teacher.layers import GroupNorm32, timestep_embedding, zero_init
from dtkd_pipeline.teacher.swin import BasicLayer


class ResBlock(nn.Module):
    """GN -> SiLU -> conv; GN(h)·(1+scale)+shift from the time embedding -> SiLU -> conv; + skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(p=0.0),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        scale, shift = torch.chunk(emb_out, 2, dim=1)
        norm, rest = self.out_layers[0], self.out_layers[1:]
        h = norm(h) * (1 + scale) + shift
        return self.skip_connection(x) + rest(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to the ResBlocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModelSwin(nn.Module):
    """x̂0-predicting UNet: forward(x_scaled, t, lq); t has shape (B,) or (1,) (shared by all)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.model_channels
        emb_dim = ch * 4
        heads = config.swin_embed_dim // config.num_head_channels

        def swin(channels: int, resolution: int) -> BasicLayer:
            return BasicLayer(
                channels,
                config.swin_embed_dim,
                heads,
                config.window_size,
                config.swin_depth,
                config_resolution=resolution,
                mlp_ratio=config.mlp_ratio,
            )

        self.time_embed = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # LR conditioning is concatenated as extra input channels (lq_size == image_size: Identity).
        in_channels = config.in_channels + 3
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]
        resolution = config.image_size
        for level, mult in enumerate(config.channel_mult):
            for index in range(config.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * config.model_channels)]
                ch = mult * config.model_channels
                if resolution in config.attention_resolutions and index == 0:
                    layers.append(swin(ch, resolution))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                resolution //= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, ch), swin(ch, resolution), ResBlock(ch, emb_dim, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(config.channel_mult))[::-1]:
            for index in range(config.num_res_blocks[level] + 1):
                skip = skip_channels.pop()
                layers = [ResBlock(ch + skip, emb_dim, config.model_channels * mult)]
                ch = config.model_channels * mult
                if resolution in config.attention_resolutions and index == 0:
                    layers.append(swin(ch, resolution))
                if level and index == config.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(32, ch),
            nn.SiLU(),
            zero_init(nn.Conv2d(config.model_channels, config.out_channels, 3, padding=1)),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        # With a shared timestep the embedding is computed once (M=1 matmuls) and broadcast, which
        # keeps every sample's numerics independent of the batch size.
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        h = torch.cat([x, lq.to(x.dtype)], dim=1)
        skips = []
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
