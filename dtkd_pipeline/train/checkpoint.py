"""Training checkpoints: atomic writes, keep-last-k plus best, every RNG state for exact resume."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypedDict, cast

import numpy as np
import torch

from dtkd_pipeline.atomic import (
    pid_temporary,
    remove_dead_siblings,
    remove_dead_temporaries,
    replacing,
)
from dtkd_pipeline.torch_checkpoint import UnreadableCheckpoint, load_checkpoint

CHECKPOINT_PATTERN = re.compile(r"^iter_(\d+)\.pt$")


class StudentCheckpoint(TypedDict):
    """A training checkpoint (``iter_<n>.pt``, ``best.pt``): the student and all an exact resume
    needs. Under DDP ``data`` and ``rng`` are lists, one entry per rank."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    data: dict[str, Any] | list[dict[str, Any]]  # the loader's position
    rng: dict[str, Any] | list[dict[str, Any]]  # rng_states()
    iteration: int
    best_psnr: float
    arch: str  # the student's registry name
    params: dict[str, Any]  # the distill section it was trained with
    provenance: dict[str, Any]  # the teacher cache it was trained on


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name(f".{path.name}")
    remove_dead_siblings(hidden)  # a killed run's half-written temporary (checkpoints are large)
    with (
        replacing(path, durable=True, temporary=pid_temporary(hidden)) as tmp,
        tmp.open("wb") as handle,
    ):
        save_raising_write_errors(obj, handle)


def save_raising_write_errors(obj: Any, handle: BinaryIO) -> None:
    """``torch.save`` into ``handle``, raising a failed write (a full disk) as the OSError it is.

    torch's zip writer meets the failure mid-record and often raises a RuntimeError ("unexpected
    pos ...") over it while closing, which names neither the file nor the cause. (Given a path
    rather than a Python file, torch writes in C++ and only that RuntimeError is left.)
    """
    try:
        torch.save(obj, handle)
    except RuntimeError as error:
        failed_write = _os_error_behind(error)
        if failed_write is None:
            raise
        raise OSError(failed_write.errno, failed_write.strerror, failed_write.filename) from error


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that ``error`` was raised while handling, if any."""
    seen: BaseException | None = error.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


def rng_states() -> dict[str, Any]:
    """Every generator a training step may touch: Python, NumPy, torch CPU and all CUDA devices."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class CheckpointReadError(RuntimeError):
    """The newest checkpoint is damaged; the message names it and what to delete."""


class CheckpointManager:
    """``iter_<n>.pt`` files in one folder: the newest ``keep_last`` kept, plus best.pt."""

    def __init__(self, folder: Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def iterations(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (CHECKPOINT_PATTERN.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"iter_{iteration:08d}.pt"

    def latest(self) -> Path | None:
        iterations = self.iterations()
        return self.path_for(iterations[-1]) if iterations else None

    def save(self, state: StudentCheckpoint, iteration: int, is_best: bool = False) -> Path:
        path = self.path_for(iteration)
        # Every killed writer's temporary, not only this name's: a resume with another
        # checkpoint_every never writes the name a killed save was writing.
        remove_dead_temporaries(self.folder)
        atomic_torch_save(state, path)
        if is_best:
            self.save_best(state)
        for old in self.iterations()[: -self.keep_last]:
            self.path_for(old).unlink(missing_ok=True)
        return path

    def save_best(self, state: StudentCheckpoint) -> Path:
        """`best.pt` alone: for a validation that beat the best between checkpoint steps."""
        path = self.folder / "best.pt"
        atomic_torch_save(state, path)
        return path

    def load_latest(self) -> StudentCheckpoint | None:
        """The newest checkpoint, on the CPU (see `load_checkpoint`), or None when there is none."""
        path = self.latest()
        if path is None:
            return None
        remedy = "delete it to resume from the previous one, or delete the folder to start over"
        try:
            state = load_checkpoint(path)
        except UnreadableCheckpoint as error:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read ({error.detail}); {remedy}"
            ) from error
        missing = sorted(
            StudentCheckpoint.__required_keys__ - set(state if isinstance(state, Mapping) else ())
        )
        if missing:
            raise CheckpointReadError(
                f"checkpoint {path} is not a training checkpoint of this pipeline (it lacks "
                f"{', '.join(missing)}); {remedy}"
            )
        return cast(StudentCheckpoint, state)
