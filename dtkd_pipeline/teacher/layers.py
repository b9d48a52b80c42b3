"""Small building blocks shared by the ResShift UNet, its Swin layers and the VQGAN."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are always computed in float32.

    Mirrors ResShift's `GroupNorm32` (`x.float()` in, `.type(x.dtype)` out). Under CUDA autocast
    (when `half_io` is set) the half-precision tensor goes to the CUDA kernel as it is: that
    kernel accumulates mean and variance in float32 itself, so the statistics are the same while
    the float32 copy of the activation (two extra passes over memory) is never made.
    """

    half_io = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.half_io and x.is_cuda and torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            with torch.autocast("cuda", enabled=False):
                weight = None if self.weight is None else self.weight.to(dtype)
                bias = None if self.bias is None else self.bias.to(dtype)
                return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps)
        out = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return out.to(x.dtype)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding, [cos, sin] order; op order kept as upstream for bit-exact float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half
    ).to(device=timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (upstream init of each ResBlock's last conv and the UNet head)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module
