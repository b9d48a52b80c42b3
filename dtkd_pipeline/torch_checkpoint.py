"""Reading a torch checkpoint file safely; each caller words its own errors.

Files are read with ``torch.load(weights_only=True)``, which never runs code from the file: only
tensors, containers, numbers and strings unpickle, plus NumPy arrays (this project's training
checkpoints carry NumPy's RNG state). A file that cannot be read raises
:class:`UnreadableCheckpoint` saying why, so the teacher, student and resume readers can name the
file and the remedy that fits it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dtkd_pipeline.weights import NOT_TORCH_FILE, looks_like_torch_file

# "not-torch": some other kind of file (an error page, an image); "unsafe": a torch file holding
# other Python objects, not unpickled; "damaged": truncated or corrupt (the detail says how).
UnreadableReason = Literal["not-torch", "unsafe", "damaged"]


class UnreadableCheckpoint(Exception):
    """``path`` cannot be read, for ``reason``; ``detail`` is the underlying error in words."""

    def __init__(self, path: Path, reason: UnreadableReason, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason: UnreadableReason = reason
        self.detail = detail


def load_checkpoint(path: Path) -> Any:
    """The file's object, on the CPU (the RNG states it may hold must stay there; weights are
    copied to their modules' device when loaded into them)."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not looks_like_torch_file(path):
            raise UnreadableCheckpoint(path, "not-torch", NOT_TORCH_FILE) from error
        text = str(error).lower()
        if "weights only" in text or "weights_only" in text:
            raise UnreadableCheckpoint(path, "unsafe", str(error)) from error
        raise UnreadableCheckpoint(path, "damaged", _described(error)) from error
    except Exception as error:  # truncated archives raise RuntimeError, EOFError, BadZipFile, ...
        raise UnreadableCheckpoint(path, "damaged", _described(error)) from error


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _numpy_array_globals() -> list[Any]:
    """What unpickling a NumPy array needs (training checkpoints carry NumPy RNG state)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]
