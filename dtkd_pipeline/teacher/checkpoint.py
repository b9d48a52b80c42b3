"""Loading official ResShift checkpoints strictly, with errors that say what is wrong and why.

Accepted layouts (reference §4): a plain state dict, or one wrapped in `{"state_dict": ...}`;
keys may carry `module.` (DDP) and/or `_orig_mod.` (torch.compile) prefixes. The `attn_mask` and
`relative_position_index` buffers are derived from the config and recomputed, never loaded. Every
parameter must be present with the right shape; anything else raises `TeacherCheckpointError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dtkd_pipeline.torch_checkpoint import UnreadableCheckpoint, load_checkpoint
from dtkd_pipeline.weights import NOT_TORCH_FILE

NetworkKind = Literal["unet", "autoencoder"]

RECOMPUTED_BUFFER_SUFFIXES = (".attn_mask", ".relative_position_index")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_KEY_SIGNATURES: dict[NetworkKind, tuple[str, ...]] = {
    "unet": ("input_blocks.", "middle_block.", "output_blocks.", "time_embed."),
    "autoencoder": ("encoder.", "decoder.", "quantize.", "quant_conv."),
}
_DESCRIPTIONS: dict[NetworkKind, str] = {
    "unet": "a ResShift UNet (UNetModelSwin) checkpoint",
    "autoencoder": "a VQGAN autoencoder checkpoint (autoencoder_vq_f4.pth)",
}
_SHOWN = 8


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing, unreadable, or does not fit the network it loads into."""


def read_checkpoint(path: str | Path, source: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and unwrap `state_dict`; clear errors on failure.

    `source` is what the user set to name this file (a params key, a CLI option); every error
    starts with it, so the user knows what to change.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherCheckpointError(
            f"{source}: teacher checkpoint {path} does not exist: download it (see "
            f"`dtkd-pipeline weights`) or point {source} at the right file"
        )
    try:
        loaded = load_checkpoint(path)
    except UnreadableCheckpoint as error:
        if error.reason == "unsafe":
            raise TeacherCheckpointError(
                f"{source}: teacher checkpoint {path} contains Python objects other than "
                f"tensors, so it is not loaded (unsafe to unpickle). Save its state dict alone: "
                f"{error.detail}"
            ) from error
        raise _corrupt(path, error, source) from error
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise TeacherCheckpointError(
            f"{source}: teacher checkpoint {path} is not a state dict (a mapping of parameter "
            "names to tensors)"
        )
    return dict(loaded)


def _corrupt(path: Path, error: UnreadableCheckpoint, source: str) -> TeacherCheckpointError:
    size = path.stat().st_size
    if error.reason == "not-torch" and size > 0:  # not damaged: some other kind of file
        return TeacherCheckpointError(
            f"{source}: teacher checkpoint {path} is not a torch checkpoint ({NOT_TORCH_FILE}): "
            f"an error page saved by a download, or the wrong file. Delete it and download it "
            f"again, or point {source} at the official ResShift .pth file (see "
            "`dtkd-pipeline weights`)"
        )
    return TeacherCheckpointError(
        f"{source}: teacher checkpoint {path} ({size:,} bytes) could not be read; it is "
        f"probably truncated or corrupt (an interrupted download?). Delete it and download it "
        f"again. ({error.detail})"
    )


def strip_wrapper_prefixes(key: str) -> str:
    """Remove leading `module.` / `_orig_mod.` (in any order, DDP and torch.compile wrappers)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _is_recomputed(key: str) -> bool:
    return key.endswith(RECOMPUTED_BUFFER_SUFFIXES)


def _guess_kind(keys: set[str]) -> NetworkKind | None:
    for kind, prefixes in _KEY_SIGNATURES.items():
        if keys and sum(key.startswith(prefixes) for key in keys) > len(keys) // 2:
            return kind
    return None


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (
        f", ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    )
    return f"{len(items)} {label}: {shown}"


def load_network_weights(
    model: nn.Module, path: str | Path, kind: NetworkKind, config_label: str, source: str
) -> None:
    """Load `path` into `model` strictly (parameters), recomputing the derived buffers; errors
    start with `source`, what the user set to name the file."""
    path = Path(path)
    raw = read_checkpoint(path, source)
    state = {strip_wrapper_prefixes(key): value for key, value in raw.items()}
    state = {key: value for key, value in state.items() if not _is_recomputed(key)}
    expected = {key: value for key, value in model.state_dict().items() if not _is_recomputed(key)}
    misfit = _Misfit.between(state, expected)
    if misfit:
        raise TeacherCheckpointError(
            f"{source}: {path} does not fit the {kind} of ResShift config {config_label!r}: "
            + misfit.listing()
            + "."
            + misfit.hint(_guess_kind(set(state)), kind, config_label)
        )
    model.load_state_dict(state, strict=False)


@dataclass(frozen=True)
class _Misfit:
    """How a checkpoint's keys and shapes differ from the model's, sorted for stable messages."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    @classmethod
    def between(cls, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> _Misfit:
        mismatched = [
            f"{key} (checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)})"
            for key in set(expected) & set(state)
            if state[key].shape != expected[key].shape
        ]
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        return cls(sorted(missing), sorted(unexpected), sorted(mismatched))

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def listing(self) -> str:
        labelled = (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.mismatched),
        )
        return "; ".join(_listing(label, items) for label, items in labelled if items)

    def hint(self, guessed: NetworkKind | None, kind: NetworkKind, config_label: str) -> str:
        """The likely cause: the UNet and autoencoder paths swapped, or another config's widths."""
        if guessed is not None and guessed != kind:
            return (
                f" This looks like {_DESCRIPTIONS[guessed]} passed as the "
                f"{'UNet' if kind == 'unet' else 'autoencoder'}: check the order of the paths."
            )
        if self.mismatched and not self.missing and not self.unexpected:
            return (
                f" The keys match but the widths do not: the checkpoint was made for a different "
                f"config than {config_label!r} (e.g. a tiny test config vs the full-width "
                "v1/v2/v3)."
            )
        return ""
