"""Export the student to ONNX (fp32) and check the exported graph against PyTorch.

The graph takes ``lr`` (N×3×h×w float32 in [0, 1]) and returns ``sr`` (N×3×(s·h)×(s·w), not
clamped), with dynamic batch, height and width. SwinIR reflect-pads its input to a window multiple
behind a Python ``if``, which tracing would freeze at the example size; the exported module
therefore always pads (by a shape-derived amount, possibly 0) before calling the network, so the
graph is right for any h, w > window/2 (reflect padding needs the pad to be smaller than the side).

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter cannot trace the
student's shifted-window mask cache (it keys a dict on the input size, which is a symbolic int
under ``torch.export``). Needs ``onnx`` and ``onnxruntime``: ``pip install "dtkd-pipeline[onnx]"``.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dtkd_pipeline import atomic

__all__ = ["DEFAULT_OPSET", "OnnxExportError", "export_onnx"]

DEFAULT_OPSET = 17
_INSTALL_HINT = 'pip install "dtkd-pipeline[onnx]"'


class OnnxExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model (or could not be checked)."""


class _PadToWindow(nn.Module):
    """The student with its window padding made part of the graph (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.window = int(getattr(model, "window_size", 1) or 1)
        self.scale = int(model.upscale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        height, width = lr.shape[-2:]
        pad_h = (self.window - height % self.window) % self.window
        pad_w = (self.window - width % self.window) % self.window
        sr = self.model(F.pad(lr, (0, pad_w, 0, pad_h), mode="reflect"))
        return sr[:, :, : height * self.scale, : width * self.scale]


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the {module!r} package, which is not installed: {_INSTALL_HINT}"
        ) from error


def check_onnx_target(path: str | os.PathLike[str]) -> Path:
    """Refuse an export that would fail at the end (packages missing, not a .onnx file name, a
    folder in the way, an unwritable folder), so callers can check before their own long work."""
    _require("onnx")
    _require("onnxruntime")
    path = Path(path)
    if path.suffix.lower() != ".onnx" or path.is_dir():
        raise ValueError(f"ONNX output {path}: give a file name ending in .onnx (not a folder)")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"ONNX output {path}: {blocker} is a file, not a folder")
    atomic.require_parent_folders(path, "ONNX output")  # a folder it cannot be written in
    atomic.require_writable(path, "ONNX output")  # an existing file it cannot replace
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    tile: int = 64,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Export ``model`` (a copy, fp32, CPU, eval mode) to ``path``; return the checked max |Δ|.

    ``tile`` is the LR side of the example input used for tracing and checking. With ``dynamic``
    (default) batch, height and width are free axes; without it the graph takes exactly
    1×3×tile×tile (the tiled runner's tile size). The file is verified with onnxruntime on
    random input in [0, 1] (batch 2 at tile×tile, and, for a dynamic graph, an odd-sized input
    too) and written only if the output matches PyTorch to ``atol``; otherwise
    :class:`OnnxExportError` is raised and nothing is left at ``path``.
    """
    path = check_onnx_target(path)
    onnx, ort = _require("onnx"), _require("onnxruntime")
    window = int(getattr(model, "window_size", 1) or 1)
    if tile <= window // 2:
        raise ValueError(f"tile must be larger than half the window ({window}), got {tile}")
    # A copy: the exporter flips train/eval modes and the mask cache would keep traced tensors.
    net = _PadToWindow(copy.deepcopy(model).float().cpu()).eval()
    example = torch.rand(1, 3, tile, tile, generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp:
        _trace_to_onnx(net, example, tmp, opset=opset, dynamic=dynamic)
        _check_valid_onnx(onnx, tmp)
        diff = _check(ort, tmp, net, tile, window, dynamic, seed)
        if not diff <= atol:
            raise OnnxExportError(
                f"ONNX export of {type(model).__name__} to {path} does not match PyTorch: max "
                f"abs difference {diff:.3g} > {atol:g} (opset {opset}); not written"
            )
    return diff


def _trace_to_onnx(
    net: nn.Module, example: torch.Tensor, target: Path, *, opset: int, dynamic: bool
) -> None:
    """Trace ``net`` on ``example`` into an ONNX file (batch, height and width free if
    ``dynamic``)."""
    options: dict[str, Any] = {}
    if dynamic:
        options["dynamic_axes"] = {
            "lr": {0: "batch", 2: "height", 3: "width"},
            "sr": {0: "batch", 2: "out_height", 3: "out_width"},
        }
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's warnings about the
        # Python-level size checks (constant by construction after _PadToWindow).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            net,
            (example,),
            str(target),
            input_names=["lr"],
            output_names=["sr"],
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            **options,
        )


def _check_valid_onnx(onnx: Any, onnx_path: Path) -> None:
    try:
        onnx.checker.check_model(str(onnx_path))
    except onnx.checker.ValidationError as error:
        raise OnnxExportError(f"the exported graph is not valid ONNX: {error}") from error


def _check(
    ort: Any, onnx_path: Path, net: nn.Module, tile: int, window: int, dynamic: bool, seed: int
) -> float:
    generator = torch.Generator().manual_seed(seed + 1)
    shapes = [(2, 3, tile, tile)] if dynamic else [(1, 3, tile, tile)]
    if dynamic:  # a size that is not a window multiple and not square
        shapes.append((1, 3, tile + window // 2 + 1, max(window // 2 + 1, tile - window - 1)))
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise OnnxExportError(f"onnxruntime cannot load the exported graph: {error}") from error
    worst = 0.0
    for shape in shapes:
        lr = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected = net(lr).numpy()
        got = session.run(["sr"], {"lr": lr.numpy()})[0]
        if got.shape != expected.shape:
            raise OnnxExportError(
                f"ONNX output shape {got.shape} differs from PyTorch {expected.shape} for input "
                f"{shape}"
            )
        worst = max(worst, float(abs(got - expected).max()))
    return worst
