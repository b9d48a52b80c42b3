"""Full-reference SR metrics through pyiqa, with the SR papers' convention.

PSNR and SSIM are computed on the Y channel of BT.601 YCbCr with ``scale`` pixels cropped from
every border (BasicSR/SwinIR convention). pyiqa's own default for ``psnry``/``ssim`` is the Y of
YIQ, which gives different numbers, so the colour space is passed explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dtkd_pipeline.images import list_images, read_image


def _create_metric(name: str, device: torch.device, **kwargs: Any) -> nn.Module:
    # Imported late: pyiqa fixes its weight cache from TORCH_HOME at import time.
    import pyiqa

    return pyiqa.create_metric(name, device=device, as_loss=False, **kwargs)


class FullReferenceMetrics:
    """PSNR-Y and SSIM-Y of SR images against ground truth, both N x 3 x H x W in [0, 1]."""

    def __init__(self, scale: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        common = {"test_y_channel": True, "color_space": "ycbcr", "crop_border": scale}
        self.psnr = _create_metric("psnr", self.device, **common)
        self.ssim = _create_metric("ssim", self.device, **common)

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        sr = sr.clamp(0, 1).to(self.device, torch.float32)
        gt = gt.to(self.device, torch.float32)
        return {
            "psnr_y": float(self.psnr(sr, gt).mean()),
            "ssim_y": float(self.ssim(sr, gt).mean()),
        }


@dataclass(frozen=True)
class ImagePairs:
    """Whole-image LR/HR pairs matched by file stem, e.g. data/prepared/val/{lr,hr}."""

    lr: list[Path]
    hr: list[Path]

    @classmethod
    def from_folder(cls, folder: Path) -> ImagePairs:
        lr_dir, hr_dir = folder / "lr", folder / "hr"
        hr_by_stem = {p.stem: p for p in list_images(hr_dir)}
        lr = [p for p in list_images(lr_dir) if p.stem in hr_by_stem]
        if not lr:
            raise FileNotFoundError(f"no LR/HR pairs (matched by name) in {lr_dir} and {hr_dir}")
        return cls(lr=lr, hr=[hr_by_stem[p.stem] for p in lr])

    def __iter__(self) -> Iterator[tuple[Path, Path]]:
        return iter(zip(self.lr, self.hr, strict=True))


def image_tensor(path: Path) -> torch.Tensor:
    """1 x 3 x H x W float32 in [0, 1], quantised to 8 bit like the stored training tiles."""
    rgb = read_image(path).rgb
    rgb = np.round(rgb * 255) / 255
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()[None]


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module, pairs: ImagePairs, metrics: FullReferenceMetrics, device: torch.device
) -> dict[str, float]:
    """Mean metrics of ``model`` (LR [0,1] -> SR) over every pair, one whole image at a time."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for lr_path, hr_path in pairs:
        sr = model(image_tensor(lr_path).to(device)).clamp(0, 1)
        sr = torch.round(sr * 255) / 255  # metrics on what would be saved as 8-bit PNG
        for key, value in metrics(sr, image_tensor(hr_path)).items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return {key: value / len(pairs.lr) for key, value in totals.items()}
