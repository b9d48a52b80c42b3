"""Load student weights from official SwinIR releases, plain state dicts, or our checkpoints.

Accepted file layouts (first match wins unless `key` names the entry to use):

* official / BasicSR release: ``{"params_ema": sd}`` and/or ``{"params": sd}`` (EMA preferred);
* this project's checkpoints: ``{"model": sd, "ema": sd (optional), ...}`` (EMA preferred);
* a plain state dict ``{name: tensor}`` (KAIR's ``*_G.pth`` / ``*_E.pth``).

Prefixes added by wrappers (``module.`` from DataParallel/DDP/AveragedModel, ``_orig_mod.`` from
torch.compile) are stripped. The shift-mask and relative-position-index buffers are derived from the
architecture, so the file's copies are ignored and the model keeps its own: this lets a file saved
with another `img_size` (another `attn_mask` shape) load, and a file without buffers load too.
Every learnable tensor must match by name and shape (a strict load). Files are read safely
(`dtkd_pipeline.torch_checkpoint`: tensors, NumPy arrays, containers and numbers only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtkd_pipeline.torch_checkpoint import UnreadableCheckpoint, load_checkpoint
from dtkd_pipeline.weights import NOT_TORCH_FILE

# Entries tried in order when `key` is not given: EMA weights before raw weights.
WRAPPER_KEYS = ("params_ema", "params", "ema", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
DERIVED_BUFFER_SUFFIXES = (".attn_mask", ".relative_position_index")
# Bookkeeping entry of torch.optim.swa_utils.AveragedModel, not a weight.
IGNORED_ENTRIES = ("n_averaged",)
_LISTED = 10  # names shown per category in error messages


class StudentWeightsError(ValueError):
    """A weights file cannot be read or does not fit the student architecture."""


def load_student_weights(
    model: nn.Module, path: str | Path, key: str | None = None
) -> dict[str, Any]:
    """Strictly load `path` into `model`; return {"path", "key", "tensors"} describing what loaded.

    `key` selects the entry of a wrapper dict ("params", "params_ema", "model", "ema"); without it,
    EMA weights are preferred. Raises StudentWeightsError (a ValueError) naming the file for
    unreadable/truncated files, unknown layouts, and missing, unexpected or mis-shaped tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student weights file not found: {path}")
    checkpoint = read_checkpoint(path)
    chosen_key, state_dict = _select_state_dict(checkpoint, key, path)
    state_dict = _strip_wrapper_prefixes(state_dict)
    _check_compatible(model, state_dict, path, chosen_key)
    own = model.state_dict()
    merged = {
        name: own[name] if name.endswith(DERIVED_BUFFER_SUFFIXES) else state_dict[name]
        for name in own
    }
    model.load_state_dict(merged, strict=True)
    return {"path": str(path), "key": chosen_key, "tensors": len(merged)}


def read_checkpoint(path: Path) -> Any:
    """The file's object, read safely (tensors, arrays, containers, numbers); errors name it."""
    try:
        return load_checkpoint(path)
    except UnreadableCheckpoint as error:
        if error.reason == "unsafe":
            raise StudentWeightsError(
                f"{path}: holds objects other than tensors, arrays, dicts and numbers, which "
                "are not unpickled for safety; save the weights as a state dict"
            ) from error
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: UnreadableCheckpoint) -> StudentWeightsError:
    size = path.stat().st_size
    if error.reason == "not-torch" and size > 0:  # not damaged: some other kind of file
        return StudentWeightsError(
            f"{path} is not a student checkpoint ({NOT_TORCH_FILE}); point --model (or "
            "evaluate.models) at a student.pt written by `dtkd-pipeline distill`, or an official "
            "SwinIR .pth file"
        )
    reason = "the file is empty" if size == 0 else error.detail
    return StudentWeightsError(
        f"{path} ({size:,} bytes) is not a readable torch checkpoint, probably truncated or "
        f"corrupt; train it again (`dtkd-pipeline distill`), copy it again, or for a downloaded "
        f"release delete it and its .sha256 record to fetch it again ({reason})"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _select_state_dict(
    checkpoint: Any, key: str | None, path: Path
) -> tuple[str | None, Mapping[str, Any]]:
    if not isinstance(checkpoint, Mapping):
        raise StudentWeightsError(
            f"{path}: expected a dict of weights, found {type(checkpoint).__name__}"
        )
    if key is not None:
        if key not in checkpoint:
            raise StudentWeightsError(
                f"{path}: has no entry {key!r}; top-level keys: {_preview(list(checkpoint))}"
            )
        candidates = [key]
    else:
        candidates = [k for k in WRAPPER_KEYS if k in checkpoint]
    for candidate in candidates:
        if _is_state_dict(checkpoint[candidate]):
            return candidate, checkpoint[candidate]
        if key is not None:
            raise StudentWeightsError(f"{path}: entry {key!r} is not a state dict of tensors")
    if _is_state_dict(checkpoint):
        return None, checkpoint
    raise StudentWeightsError(
        f"{path}: unrecognised layout; expected a state dict or a dict with one of "
        f"{list(WRAPPER_KEYS)}, found top-level keys {_preview(list(checkpoint))}"
    )


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in state_dict.items() if k not in IGNORED_ENTRIES}
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if tensors and all(name.startswith(prefix) for name in tensors):
                tensors = {name[len(prefix) :]: v for name, v in tensors.items()}
                stripped = True
    return tensors


def _check_compatible(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, key: str | None
) -> None:
    own = model.state_dict()
    learnable = {name for name in own if not name.endswith(DERIVED_BUFFER_SUFFIXES)}
    missing = sorted(learnable - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{name}: file {tuple(state_dict[name].shape)} vs model {tuple(own[name].shape)}"
        for name in learnable & set(state_dict)
        if state_dict[name].shape != own[name].shape
    )
    if not (missing or unexpected or mismatched):
        return
    where = f"{path}" + (f" (entry {key!r})" if key else "")
    parts = [f"{where} does not fit the student ({type(model).__name__}):"]
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_preview(mismatched)}")
    parts.append(
        "is it a student checkpoint of this architecture (distill.student, or the file's "
        "'arch' entry)? An official release file records none: pass its architecture, e.g. "
        "--arch swinir-s-x2. A teacher or another network's weights do not fit"
    )
    raise StudentWeightsError("\n  ".join(parts))


def _preview(names: list[str]) -> str:
    shown = ", ".join(str(name) for name in names[:_LISTED])
    extra = len(names) - _LISTED
    return shown + (f", ... and {extra} more" if extra > 0 else "")
