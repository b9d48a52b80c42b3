"""The models an evaluation compares: bicubic, the teacher, a one-step baseline and students.

Each contender has one or more *runs* (teacher noise seeds, or student checkpoints trained with
different seeds); metrics are averaged over a run's images, then mean and standard deviation are
taken over runs, as the paper reports its numbers (mean of 3 runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from dtkd_pipeline.resize import imresize
from dtkd_pipeline.teacher import Teacher
from dtkd_pipeline.upscale import Upscaler, load_upscaler

# (LR 1x3xhxw in [0, 1], index of the image in its set) -> SR 1x3x4hx4w in [0, 1]
SuperResolve = Callable[[torch.Tensor, int], torch.Tensor]

MIN_SIDE = 64  # LR side small test images are padded to before the diffusion sampler

BICUBIC = "bicubic"
TEACHER = "teacher"
RANDOM_TEACHER = "teacher (RANDOM weights)"  # tests and speed runs: named so in every output
ONE_STEP = "one-step"
RESERVED_LABELS = (BICUBIC, TEACHER, RANDOM_TEACHER, ONE_STEP)  # rows no student may be named


@dataclass
class Run:
    name: str
    super_resolve: SuperResolve
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contender:
    label: str
    runs: list[Run]

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs)


def bicubic(scale: int) -> Contender:
    """MATLAB bicubic upscaling: the same kernel the LR images were made with."""

    def run(lr: torch.Tensor, index: int) -> torch.Tensor:
        return imresize(lr.float(), scale).clamp(0, 1)

    return Contender(BICUBIC, [Run("bicubic", run, {"model": "MATLAB bicubic"})])


def diffusion(
    label: str, teacher: Teacher, seeds: list[int], chop_size: int, one_step: bool = False
) -> Contender:
    """The teacher (all trained steps) or a one-step model, one run per noise seed.

    Per-sample noise is keyed by the image's index in its set, so a result does not depend on
    which other images are evaluated.
    """

    def runner(seed: int) -> SuperResolve:
        def run(lr: torch.Tensor, index: int) -> torch.Tensor:
            height, width = lr.shape[-2:]
            # The sampler needs > 32 px per side (it reflect-pads to multiples of 64): small test
            # images are edge-padded to 64 px here and the SR output cropped back.
            pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
            if pad_h or pad_w:
                lr = F.pad(lr, (0, pad_w, 0, pad_h), mode="replicate")
            calls = teacher.unet_calls(*lr.shape[-2:], chop_size=chop_size, one_step=one_step)
            # A teacher image takes minutes on a CPU: a bar of its own, gone when it is done.
            with tqdm(total=calls, desc=f"{label} image {index}", unit="step", leave=False) as bar:
                sr = teacher.sample(
                    lr,
                    seed=seed,
                    rng="per-sample",
                    sample_ids=[index],
                    chop_size=chop_size,
                    one_step=one_step,
                    on_step=bar.update,
                )
            return sr[..., : height * teacher.scale, : width * teacher.scale].cpu()

        return run

    provenance = teacher.provenance()
    return Contender(
        label, [Run(f"seed {seed}", runner(seed), {**provenance, "seed": seed}) for seed in seeds]
    )


def students(
    label: str, checkpoints: list[Path], device: torch.device, tile: int, overlap: int
) -> Contender:
    """A student label with one run per checkpoint (e.g. the same recipe trained with 3 seeds)."""
    runs = []
    for path in checkpoints:
        upscaler = load_upscaler(path, device=device, precision="fp32")

        def run(lr: torch.Tensor, index: int, upscaler: Upscaler = upscaler) -> torch.Tensor:
            return upscaler(lr, tile=tile, overlap=overlap, batch_size=1)

        runs.append(Run(str(path), run, {"arch": upscaler.arch, **upscaler.source}))
    return Contender(label, runs)
