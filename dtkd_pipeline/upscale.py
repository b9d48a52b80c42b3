"""Super-resolve images with the trained student: tiled, seam-free, bit depth and alpha kept.

`dtkd-pipeline upscale IN OUT --model data/models/student.pt` calls :func:`upscale_paths`;
:func:`load_upscaler` and :func:`upscale_tensor` are the pieces, usable on their own.

Tiling. The LR image is cut into ``tile``×``tile`` tiles (``tile`` rounded up to a multiple of the
model's window size) that overlap by at least ``overlap`` px and start at window multiples.
SwinIR's (shifted) windows are anchored at the input's top-left corner, so a window-aligned tile
sees the same window partition as the whole image does: far enough from a tile border (the
network's reach; 8 LR px for the tiny test model, more for deeper ones) a tile's output equals the
untiled output up to float rounding. Near tile borders it does not (context is missing), and the
blending hides that: each tile's x``scale`` output is weighted by a separable window that ramps up
as sin² across the overlap on each side that has a neighbour (weight 1 inside and along the image
border; two neighbours' ramps sum to 1) and the accumulated sum is divided by the accumulated
weights. The tiles span the image reflect-padded on the bottom/right to the next window multiple,
which is exactly the padding SwinIR applies to the whole image, so along the image border the tiled
output matches the untiled one too, and every tile of a batch has the same shape. An image side no
longer than a tile is not split along that axis; ``tile=0`` runs the whole image at once.

Compilation. ``compile_mode`` runs the student through ``torch.compile`` (static shapes; see
:mod:`dtkd_pipeline.compiled`). A ragged last batch of tiles is filled up with copies of its last
tile (their outputs dropped), so every batch has one shape and compiles once. Each new tile or
image shape compiles again, so keep ``tile`` fixed (not 0) when compiling; "reduce-overhead" adds
CUDA graphs, which is what brings batch-1 latency down on a GPU (docs/performance.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dtkd_pipeline.compiled import (
    CompileMode,
    check_compile_mode,
    compile_static,
    fill_batch,
    run_compiled,
)
from dtkd_pipeline.devices import require_cuda_for, resolve_device
from dtkd_pipeline.images import (
    ImageHeader,
    ImageReadError,
    LoadedImage,
    probe_image,
    read_image,
    unreadable_advice,
    write_image,
)
from dtkd_pipeline.output_plan import (
    images_summary,
    interrupted_images_note,
    nothing_to_do_note,
    outputs_to_write,
    plan_outputs,
    remove_killed_writes,
)
from dtkd_pipeline.pairing import abbreviated
from dtkd_pipeline.progress import hidden_unless
from dtkd_pipeline.resize import imresize
from dtkd_pipeline.skipped import SKIPPED_LIST, SkippedImages
from dtkd_pipeline.student import build_student, load_student_weights, student_config
from dtkd_pipeline.student.registry import STUDENT_CONFIGS
from dtkd_pipeline.student.weights import read_checkpoint
from dtkd_pipeline.weights import REGISTRY, WeightsError, offering_local_copy, resolve_weights

__all__ = [
    "DEFAULT_ARCH",
    "PRECISIONS",
    "ImageReadError",
    "TileLayout",
    "Upscaler",
    "check_precision",
    "load_upscaler",
    "resolve_device",
    "tile_layout",
    "upscale_image",
    "upscale_paths",
    "upscale_tensor",
]

DEFAULT_ARCH = "swinir-s-x4"
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Image suffixes that cannot hold an alpha channel (write_image refuses them).
_NO_ALPHA_SUFFIXES = (".jpg", ".jpeg", ".bmp")


# ------------------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Upscaler:
    """A student ready for inference: eval mode, on ``device``, run at ``precision``, compiled
    in ``compile_mode`` (None: eager)."""

    model: nn.Module
    arch: str
    scale: int
    device: torch.device
    precision: str
    source: dict[str, Any] = field(default_factory=dict)  # path, key, iteration of the weights
    compile_mode: CompileMode | None = None

    def __call__(
        self,
        lr: torch.Tensor,
        *,
        tile: int = 256,
        overlap: int = 32,
        batch_size: int = 4,
        progress: bool = False,
    ) -> torch.Tensor:
        """:func:`upscale_tensor` with this model, scale, device and precision."""
        return upscale_tensor(
            self.model,
            lr,
            scale=self.scale,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            precision=self.precision,
            device=self.device,
            progress=progress,
            compile_mode=self.compile_mode,
        )


def check_precision(precision: str, device: torch.device) -> None:
    """fp32 runs anywhere; bf16/fp16 (autocast) only on CUDA. Raises ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    require_cuda_for(precision, device.type, "--precision")


def registered_student(model: str | os.PathLike[str]) -> str | None:
    """The name, when ``model`` names an official student release in the weights registry
    (e.g. ``swinir-s-x4``) rather than a file that exists."""
    text = os.fspath(model)
    if Path(text).exists() or text not in REGISTRY or text not in STUDENT_CONFIGS:
        return None
    return text


def require_model_file(path: str | os.PathLike[str], releases: bool = True) -> None:
    """Refuse a student that is neither a file nor (with ``releases``) a registered release,
    saying where students come from."""
    path = Path(path)
    if releases and registered_student(path) is not None:
        return
    if path.is_dir():
        raise IsADirectoryError(f"model {path} is a folder; {_checkpoints_in(path)}")
    if not path.is_file():
        official = ", ".join(name for name in REGISTRY if name in STUDENT_CONFIGS)
        release = f", or name an official release ({official}; downloaded once)" if releases else ""
        raise FileNotFoundError(
            f"model file not found: {path}; train one with `dtkd-pipeline distill` (it writes "
            f"student.pt into distill.out_dir) or pass the path of yours (--model, or "
            f"evaluate.models.students in params.yaml){release}"
        )


def _checkpoints_in(folder: Path) -> str:
    """Which file of ``folder`` to pass: the checkpoints it holds (distill's checkpoints/ has
    best.pt and iter_*.pt, no student.pt), else the file distill would have written."""
    held = sorted(entry.name for entry in folder.iterdir() if entry.suffix in (".pt", ".pth"))
    if not held:
        return f"pass the checkpoint file in it, e.g. {folder / 'student.pt'}"
    example = next((name for name in ("student.pt", "best.pt") if name in held), held[-1])
    return f"pass the checkpoint file in it, e.g. {folder / example} (it holds {abbreviated(held)})"


def resolve_model_file(
    model: str | os.PathLike[str], arch: str | None, weights_dir: str | os.PathLike[str] | None
) -> tuple[Path, str | None]:
    """(checkpoint file, architecture) for a student path or a registered release name; a
    release is downloaded and verified on first use and implies its own architecture."""
    name = registered_student(model)
    if name is None:
        require_model_file(model)
        return Path(model), arch
    if arch is not None and arch != name:
        raise ValueError(f"--model {name} is a {name!r} student, not --arch {arch!r}; drop --arch")
    return resolve_weights(name, weights_dir=weights_dir), name


def load_upscaler(
    model_path: str | Path,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    *,
    arch: str | None = None,
    compile_mode: CompileMode | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
) -> Upscaler:
    """Build the student and load weights from ``model_path``; return an :class:`Upscaler`.

    ``model_path`` is this project's ``student.pt`` (a dict with ``model``, ``ema``, ``arch``, ...)
    or an official SwinIR release file (``params`` / ``params_ema``) or a plain state dict, or the
    registry name of an official release (``swinir-s-x4``: fetched into ``weights_dir``). EMA
    weights are preferred. The architecture comes from the file's ``arch`` entry; for files
    without one it is ``arch`` (default ``"swinir-s-x4"``). An ``arch`` that contradicts the file's
    raises ValueError. ``compile_mode``: see the module docstring (None: eager).
    Missing file → FileNotFoundError; unreadable or mis-shaped weights →
    :class:`~dtkd_pipeline.student.StudentWeightsError` (a ValueError naming the file).
    """
    resolved = resolve_device(device)
    check_precision(precision, resolved)
    check_compile_mode(compile_mode)
    path, arch = resolve_model_file(model_path, arch, weights_dir)
    checkpoint = read_checkpoint(path)
    name = _checkpoint_arch(path, checkpoint, arch)
    model = build_student(name)
    info = load_student_weights(model, path)
    model.eval().requires_grad_(False).to(resolved)
    source = _weights_source(info, checkpoint)
    return Upscaler(
        model=model,
        arch=name,
        scale=student_config(name).upscale,
        device=resolved,
        precision=precision,
        source=source,
        compile_mode=compile_mode,
    )


def _checkpoint_arch(path: Path, checkpoint: Any, arch: str | None) -> str:
    """The student to build: the file's 'arch' entry (which ``arch`` must not contradict), else
    ``arch``, else the default."""
    stored_arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    if stored_arch is not None and not isinstance(stored_arch, str):
        raise ValueError(f"{path}: the 'arch' entry should be a student name, got {stored_arch!r}")
    if arch is not None and stored_arch is not None and arch != stored_arch:
        raise ValueError(
            f"{path} holds a {stored_arch!r} student but arch {arch!r} was given; drop the "
            "arch option or pass the matching one"
        )
    name = stored_arch or arch or DEFAULT_ARCH
    if stored_arch is not None and stored_arch not in STUDENT_CONFIGS:
        raise ValueError(
            f"{path}: its 'arch' entry {stored_arch!r} is not a student this version knows "
            f"({', '.join(STUDENT_CONFIGS)}); was it written by another version of dtkd-pipeline?"
        )
    return name


def _weights_source(info: dict[str, Any], checkpoint: Any) -> dict[str, Any]:
    """Where the weights came from (path, key), plus the checkpoint's iteration and provenance."""
    source = dict(info)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("iteration"), int):
        source["iteration"] = checkpoint["iteration"]
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("provenance"), dict):
        source["provenance"] = checkpoint["provenance"]  # the teacher cache it was trained on
    return source


# ------------------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one LR image go (all in LR pixels)."""

    tile_h: int
    tile_w: int
    ys: list[int]
    xs: list[int]
    padded_h: int  # image height after the bottom reflect padding that makes the last tiles fit
    padded_w: int

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def _axis(length: int, tile: int, stride: int, window: int) -> tuple[int, list[int], int]:
    """(tile size, starts, padded length) along one axis.

    The tiles span ``[0, padded)`` with ``padded`` the length SwinIR pads the whole image to (the
    next window multiple), so the last tile's reflected border is the untiled run's. Their count
    is what ``stride`` needs; the starts are spread evenly and rounded to window multiples, so no
    spacing exceeds ``stride`` (no overlap is below the requested one).
    """
    if length <= tile:
        return length, [0], length
    unit = window if stride % window == 0 else 1
    padded = math.ceil(length / unit) * unit
    span = padded - tile  # > 0, a multiple of unit
    gaps = math.ceil(span / stride)
    starts = [round(k * span / gaps / unit) * unit for k in range(gaps + 1)]
    return tile, starts, padded


def tile_layout(height: int, width: int, tile: int, overlap: int, window: int = 1) -> TileLayout:
    """Plan the tiles of an LR image: see the module docstring.

    ``tile`` is rounded up to a multiple of ``window``; the stride ``tile - overlap`` is rounded
    down to one (so overlaps can grow, never shrink) unless that would make it zero, and then the
    starts are not window-aligned. An axis no longer than a tile is not split; ``tile=0`` gives
    one whole-image tile.
    """
    if tile < 0 or overlap < 0:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be >= 0")
    if tile == 0:
        return TileLayout(height, width, [0], [0], height, width)
    tile = math.ceil(tile / window) * window
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile} LR px)")
    stride = (tile - overlap) // window * window or tile - overlap
    tile_h, ys, padded_h = _axis(height, tile, stride, window)
    tile_w, xs, padded_w = _axis(width, tile, stride, window)
    return TileLayout(tile_h, tile_w, ys, xs, padded_h, padded_w)


def _ramp_window(length: int, before: int, after: int) -> torch.Tensor:
    """1-D blend weights: sin² ramps of ``before``/``after`` px at the ends, 1 between.

    A ramp samples sin²(π/2 · t) at pixel centres t = (i + ½)/n, so it never reaches 0 and a
    ramp-up and the neighbour's ramp-down over the same pixels sum to exactly 1.
    """
    weights = torch.ones(length, dtype=torch.float64)
    for size, at_start in ((before, True), (after, False)):
        size = min(size, length)
        if size <= 0:
            continue
        ramp = torch.sin(0.5 * math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size)
        ramp = ramp**2
        if at_start:
            weights[:size] *= ramp
        else:
            weights[length - size :] *= ramp.flip(0)
    return weights.float()


def _axis_windows(starts: list[int], tile: int, scale: int) -> list[torch.Tensor]:
    """Per tile along one axis, its HR blend window (ramps only where a neighbour overlaps)."""
    windows = []
    for index, start in enumerate(starts):
        before = starts[index - 1] + tile - start if index > 0 else 0
        after = start + tile - starts[index + 1] if index + 1 < len(starts) else 0
        windows.append(_ramp_window(tile * scale, max(before, 0) * scale, max(after, 0) * scale))
    return windows


# ------------------------------------------------------------------------------------ inference


def _model_window(model: nn.Module) -> int:
    return int(getattr(model, "window_size", 1) or 1)


def _model_scale(model: nn.Module) -> int:
    scale = getattr(model, "upscale", None)
    if scale is None:
        raise ValueError("pass scale=...: the model has no 'upscale' attribute")
    return int(scale)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@dataclass(frozen=True)
class _Runner:
    """How to run one batch: the (possibly compiled) forward and its settings."""

    forward: Callable[..., torch.Tensor]
    compile_mode: CompileMode | None
    precision: str
    device: torch.device
    scale: int
    window: int


def _run_model(runner: _Runner, batch: torch.Tensor) -> torch.Tensor:
    """Model output (float32, CPU) for one batch; inputs too small for SwinIR's reflect padding
    to a window multiple are edge-padded to one window first and the output cropped back."""
    height, width = batch.shape[-2:]
    window, device, scale = runner.window, runner.device, runner.scale
    pad_h, pad_w = max(0, window - height), max(0, window - width)
    x = batch.to(device, non_blocking=True)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    if runner.precision == "fp32":
        y = run_compiled(runner.forward, runner.compile_mode, x)
    else:
        with torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[runner.precision]):
            y = run_compiled(runner.forward, runner.compile_mode, x)
    return y[..., : height * scale, : width * scale].float().cpu()


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def upscale_tensor(
    model: nn.Module,
    lr: torch.Tensor,
    *,
    scale: int | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    progress: bool = False,
    compile_mode: CompileMode | None = None,
) -> torch.Tensor:
    """Super-resolve ``lr`` (1×3×h×w float in [0, 1]) → 1×3×(s·h)×(s·w) float32 in [0, 1], on CPU.

    ``tile``/``overlap`` in LR px (``tile=0``: whole image at once), ``batch_size`` tiles per
    forward; ``scale`` defaults to ``model.upscale``; ``device`` to the model's device (the model
    must already be there). ``precision``: fp32, or bf16/fp16 autocast on CUDA only. ``progress``
    shows a bar over tile batches when there is more than one. ``compile_mode``: run the model
    through ``torch.compile`` (module docstring). The output is clamped to [0, 1]; the model is
    run in eval mode (its mode is restored afterwards).
    """
    if lr.ndim != 4 or lr.shape[0] != 1:
        raise ValueError(f"lr must be 1×C×h×w, got shape {tuple(lr.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scale = _model_scale(model) if scale is None else int(scale)
    run_device = _model_device(model) if device is None else resolve_device(device)
    check_precision(precision, run_device)
    check_compile_mode(compile_mode)
    lr = lr.detach().float().cpu()
    height, width = lr.shape[-2:]
    window = _model_window(model)
    layout = tile_layout(height, width, tile, overlap, window)

    # A fresh torch.compile wrapper per call is cheap: compiled graphs are cached per model.
    forward = compile_static(model, compile_mode)
    runner = _Runner(forward, compile_mode, precision, run_device, scale, window)
    was_training = model.training
    model.eval()
    try:
        if layout.count == 1:
            return _run_model(runner, lr).clamp_(0, 1)
        return _upscale_tiled(runner, lr, layout, batch_size, progress).clamp_(0, 1)
    finally:
        model.train(was_training)


def _upscale_tiled(
    runner: _Runner, lr: torch.Tensor, layout: TileLayout, batch_size: int, progress: bool
) -> torch.Tensor:
    _, channels, height, width = lr.shape
    scale = runner.scale
    padded = F.pad(lr, (0, layout.padded_w - width, 0, layout.padded_h - height), mode="reflect")
    th, tw = layout.tile_h, layout.tile_w
    row_windows = _axis_windows(layout.ys, th, scale)
    col_windows = _axis_windows(layout.xs, tw, scale)
    out = torch.zeros(1, channels, layout.padded_h * scale, layout.padded_w * scale)
    total = torch.zeros(1, 1, layout.padded_h * scale, layout.padded_w * scale)
    tiles = [(i, j) for i in range(len(layout.ys)) for j in range(len(layout.xs))]
    batches = list(_batches(tiles, batch_size))
    bar = tqdm(
        batches,
        desc="tiles",
        unit="batch",
        leave=False,
        **hidden_unless(progress and len(batches) >= 2),
    )
    for group in bar:
        inputs = torch.cat(
            [
                padded[..., layout.ys[i] : layout.ys[i] + th, layout.xs[j] : layout.xs[j] + tw]
                for i, j in group
            ]
        )
        if runner.compile_mode is not None:  # one batch shape: one compilation
            inputs = fill_batch(inputs, batch_size)
        outputs = _run_model(runner, inputs)
        for (i, j), sr in zip(group, outputs[: len(group)], strict=True):
            weight = row_windows[i][:, None] * col_windows[j][None, :]
            y, x = layout.ys[i] * scale, layout.xs[j] * scale
            out[0, :, y : y + th * scale, x : x + tw * scale] += sr * weight
            total[0, 0, y : y + th * scale, x : x + tw * scale] += weight
    bar.close()
    out /= total
    return out[..., : height * scale, : width * scale]


def upscale_image(
    upscaler: Upscaler,
    image: LoadedImage,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb H'×W'×3 float32, alpha H'×W' float32 or None) for a decoded image, both in [0, 1].

    Colour goes through the student; alpha, if any, is resized on its own with MATLAB-style
    bicubic :func:`~dtkd_pipeline.resize.imresize` (Keys a = -0.5, the LR convention of this
    project; it rings less at hard mask edges than torch's a = -0.75) and clamped to [0, 1].
    Gray images come back as RGB with three equal-ish channels: :func:`read_image` gives RGB.
    """
    lr = torch.from_numpy(np.ascontiguousarray(image.rgb)).permute(2, 0, 1)[None]
    sr = upscaler(lr, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
    rgb = np.ascontiguousarray(sr[0].permute(1, 2, 0).numpy())
    alpha = None
    if image.alpha is not None:
        plane = torch.from_numpy(np.ascontiguousarray(image.alpha, dtype=np.float32))
        plane = plane.to(upscaler.device)
        alpha = imresize(plane, float(upscaler.scale)).clamp_(0, 1).cpu().numpy()
    return rgb, alpha


# --------------------------------------------------------------------------------------- files


def _check_writable(path: Path, image: ImageHeader) -> None:
    """Refuse early what write_image would refuse after the model ran."""
    suffix = path.suffix.lower()
    if image.bit_depth == 16 and suffix != ".png":
        raise ValueError(f"{image.path} is a 16-bit image; write it to a .png, not {path.name}")
    if image.has_alpha and suffix in _NO_ALPHA_SUFFIXES:
        raise ValueError(
            f"{image.path} has an alpha channel, which {suffix} cannot store; use .png"
        )


def _prescan(
    pairs: list[tuple[Path, Path]], skip_bad: bool, skipped: SkippedImages
) -> list[tuple[Path, Path]]:
    """Read every input's header before the model loads; name all bad files at once, or skip
    them (``skip_bad``) into ``skipped``."""
    kept, bad = [], []
    for source, target in pairs:
        try:
            _check_writable(target, probe_image(source))
            kept.append((source, target))
        except ImageReadError as error:
            bad.append((source, error))
    if bad and not skip_bad:
        problems = "\n".join(f"  {error}" for _, error in bad)
        raise ImageReadError(
            f"{len(bad)} input image(s) cannot be read, so nothing was written; "
            f"{unreadable_advice('them', 'rerun with --skip-bad')}:\n{problems}"
        )
    for source, error in bad:
        skipped.add(source, error)
    if not kept:
        raise ImageReadError(
            f"none of the {len(bad)} input image(s) can be read; nothing was written (rerun "
            "without --skip-bad to have every one named)"
        )
    return kept


def upscale_paths(
    inputs: str | Path,
    out: str | Path,
    *,
    model_path: str | Path,
    arch: str | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    precision: str = "fp32",
    device: str | torch.device | None = "auto",
    suffix: str = "",
    progress: bool = True,
    compile_mode: CompileMode | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    skip_existing: bool = False,
) -> list[Path]:
    """Super-resolve an image file or a folder of images; return the written paths and print a
    summary line.

    * ``inputs`` a file: ``out`` with an image suffix is the output file, else a folder that
      receives ``<stem><suffix>.png``.
    * ``inputs`` a folder: every image directly in it (see
      :func:`~dtkd_pipeline.images.list_images`) → ``out/<stem><suffix>.png`` (``suffix`` is
      appended to the stem, e.g. ``"_x4"``; default none).

    16-bit inputs are written as 16-bit PNG, 8-bit ones as 8-bit; alpha is upscaled separately
    and kept (see :func:`upscale_image`); gray inputs come back RGB. ``arch``: the student for
    files that do not record one (official releases; default ``"swinir-s-x4"``). Missing
    ``inputs``/model → FileNotFoundError. Every input's header is read before the model loads:
    unreadable files are all named in one ImageReadError and nothing is written, or, with
    ``skip_bad``, skipped: the first few named, every one listed in ``out/skipped_images.txt``
    (for a folder output). Pixel data corrupt behind a good header shows only when its
    turn comes: an ImageReadError naming it (outputs already written are complete: writes are
    atomic), or a skip. Temporaries that killed writers left in the output folder are removed
    first (see :func:`~dtkd_pipeline.output_plan.remove_killed_writes`). ``skip_existing``:
    inputs whose output file exists are left out (an interrupted run's rest); when that is all
    of them, nothing loads and nothing is written.
    """
    inputs, out = Path(inputs), Path(out)
    require_model_file(model_path)
    plan = plan_outputs(inputs, out, suffix)
    remove_killed_writes(plan)
    todo, present = outputs_to_write(plan, skip_existing)
    if not todo:
        print(nothing_to_do_note(present, out))
        return []
    skipped = SkippedImages()
    pairs = _prescan(todo, skip_bad, skipped)
    try:
        upscaler = load_upscaler(
            model_path,
            device,
            precision,
            arch=arch,
            compile_mode=compile_mode,
            weights_dir=weights_dir,
        )
    except WeightsError as error:  # only a named release is fetched: say a file will do too
        raise offering_local_copy(error, "--model") from error
    written: list[Path] = []
    bar = tqdm(pairs, desc="upscale", unit="img", **hidden_unless(progress and len(pairs) >= 2))
    try:
        for source, target in bar:
            bar.set_postfix_str(source.name, refresh=False)
            image = _read_or_skip(
                source,
                skipped if skip_bad else None,
                written=len(written),
                total=len(pairs),
                out=out,
            )
            if image is None:
                continue
            rgb, alpha = upscale_image(
                upscaler,
                image,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                progress=progress,
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_image(target, rgb, alpha, bit_depth=image.bit_depth))
    except KeyboardInterrupt as interrupt:  # the CLI prints the note
        interrupt.add_note(interrupted_images_note(len(written), len(pairs), out, present))
        raise
    finally:
        bar.close()
    print(images_summary(len(written), present, out))
    if skipped:
        print(skipped.summary(_write_skipped_list(skipped, plan, out)))
    return written


def _write_skipped_list(
    skipped: SkippedImages, plan: list[tuple[Path, Path]], out: Path
) -> Path | None:
    """List the skipped images in the output folder; a single output file has no folder of its
    own to hold a list (and its one input was named when skipped): None."""
    if plan[0][1] == out:
        return None
    return skipped.write_list(out / SKIPPED_LIST)


def _read_or_skip(
    source: Path, skipped: SkippedImages | None, *, written: int, total: int, out: Path
) -> LoadedImage | None:
    """Decode ``source``; pixel data the header scan could not vouch for is recorded in
    ``skipped`` (None when not skipping bad images) or raised saying how many of ``total``
    images were already written."""
    try:
        return read_image(source)
    except ImageReadError as error:
        if skipped is None:
            advice = unreadable_advice("it", "rerun with --skip-bad to go past unreadable images")
            # The images before it are whole; a rerun need not compute them again.
            keep = "; add --skip-existing to the rerun to keep those written" if written else ""
            raise ImageReadError(
                f"{error}; {written} of {total} image(s) were written to {out} before it; "
                f"{advice}{keep}"
            ) from error
        skipped.add(source, error)
        return None
