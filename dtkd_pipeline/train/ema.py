"""Exponential moving average of a model's weights (the SwinIR/KAIR "E" model;
``distill.ema_decay`` sets the decay, KAIR uses 0.999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # The copy has the model's parameter order, so zip pairs them; one fused multi-tensor
        # lerp keeps this per-step update to a few kernel launches.
        torch._foreach_lerp_(
            list(self.module.parameters()),
            [param.detach() for param in model.parameters()],
            1.0 - self.decay,
        )
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
