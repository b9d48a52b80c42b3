"""Where the sampler's Gaussian noise comes from: upstream's single stream, or one per sample.

Both sources are drawn in upstream's order: 1 + T draws of latent shape per diffusion run (the prior
noise, then one per step including the last, unused one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal, Protocol

import torch

RngMode = Literal["official", "per-sample"]


class NoiseSource(Protocol):
    def draw(self, shape: torch.Size) -> torch.Tensor: ...


class OfficialNoise:
    """One generator seeded once per `sample()` call, shared by all images and chop patches.

    A fresh `torch.Generator` seeded with `seed` yields the same stream as upstream's
    `torch.manual_seed(seed)` followed by `randn_like` calls, without touching the global RNG.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def draw(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)

    def skip(self, shapes: Sequence[torch.Size]) -> None:
        """Advance the stream past these draws (made one by one, so the state matches exactly)."""
        for shape in shapes:
            self.draw(shape)


def per_sample_seed(seed: int, sample_id: int, patch_index: int = 0) -> int:
    """Seed of one diffusion run: the first 8 bytes (little-endian, top bit cleared) of
    sha256(b"dtkd-resshift-noise/{seed}/{sample_id}/{patch_index}")."""
    digest = hashlib.sha256(
        f"dtkd-resshift-noise/{seed}/{sample_id}/{patch_index}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class PerSampleNoise:
    """One generator per batch row, seeded from (seed, sample_id, patch_index).

    A row's noise never depends on which other rows share its batch. Generators live on the compute
    device, so CPU and CUDA runs draw different (equally valid) noise for the same seed.
    """

    def __init__(
        self, seed: int, sample_ids: Sequence[int], device: torch.device, patch_index: int = 0
    ) -> None:
        self.device = device
        self.generators = [
            torch.Generator(device=device).manual_seed(per_sample_seed(seed, int(sid), patch_index))
            for sid in sample_ids
        ]

    def draw(self, shape: torch.Size) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(
                f"noise batch {shape[0]} != number of sample ids {len(self.generators)}"
            )
        row = (1, *shape[1:])
        return torch.cat(
            [
                torch.randn(row, generator=gen, device=self.device, dtype=torch.float32)
                for gen in self.generators
            ]
        )
