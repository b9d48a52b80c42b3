"""Band-wise teacher−student error (the paper's Figures 3–4): which frequency group to weight.

For a student and a set of (LR input, teacher output) pairs, this measures the mean absolute
difference Δ = student − teacher of every DWT subband (`dwt_subbands` names, coarsest first) and
of every frequency group, grouped exactly as `DecomposedDWTLoss` weights them:

    LF = LL_J,   MF = the details of level J,   HF = the details of levels < J

(for J=2: LL2 / {LH2, HL2, HH2} / {LH1, HL1, HH1}; for J=1 there is no HF group).

Conventions, chosen to measure what a user would see in saved images:

- the student runs under `torch.inference_mode`; its output is clamped to [0, 1] and quantised to
  8 bit (round(x·255)/255), the teacher is uint8/255 (as cached and as `teacher-sr` saves it);
- the DWT is linear, so the subbands of Δ are taken directly, in float64 (an exact integer
  difference /255), which makes the sums independent of batch and task composition;
- the group value `groups[g]` is the mean of its subbands' means, i.e. each subband counts once,
  as in the loss (which sums per-subband means); `groups_weighted[g]` weights every coefficient
  equally instead. The two coincide when a group's subbands have equal sizes (all groups for
  Haar on sizes divisible by 2^J; they can differ for HF with J > 2 or longer filters).

Work runs out of core with dask: one `dask.delayed` task per cache shard (or per chunk of image
files) returns partial sums (Σ|Δ| and coefficient count per subband), combined at the end. The
local threaded or synchronous scheduler is the default; a dask.distributed scheduler address
fans the tasks out to workers, which open the stores and load the student themselves.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dtkd_pipeline import atomic
from dtkd_pipeline.cache import HR, LR, TEACHER, StoreLayout, StoreLayoutError, TileStore
from dtkd_pipeline.cache.prepared_store import open_prepared, require_prepared_exists
from dtkd_pipeline.cache.teacher_open import require_teacher_exists
from dtkd_pipeline.images import list_images, probe_image, read_image, to_uint8
from dtkd_pipeline.losses.wavelet import (
    deepest_dwt_level,
    dwt_subbands,
    subband_level,
    subband_names,
)
from dtkd_pipeline.progress import DaskTqdm
from dtkd_pipeline.scheduler import connect

GROUPS = ("LF", "MF", "HF")
LOCAL_SCHEDULERS = {"sync": "sync", "synchronous": "sync", "threads": "threads"}
JSON_NAME = "bands.json"
PNG_NAME = "bands.png"

Partial = dict[str, Any]  # {"sums": {band: float}, "counts": {band: int}, "images": int}


def subband_group(name: str, levels: int) -> str:
    """Frequency group of a subband in a `levels`-level decomposition, as the KD loss groups it.

    The loss module only exposes per-subband *weights* (`group_weights`), so the name → group
    rule lives here; tests check that the two agree.
    """
    if name.startswith("LL"):
        return "LF"
    return "MF" if subband_level(name) == levels else "HF"


@dataclass(frozen=True)
class BandStats:
    """Mean |student − teacher| per DWT subband and per frequency group over a set of images.

    Values are in image units ([0, 1] images, orthonormal DWT coefficients). `groups` is the mean
    of the group's subband means (each subband counts once, like the loss); `groups_weighted` is
    Σ|Δ| / count over all coefficients of the group. Groups without subbands (HF for J=1) are
    left out.
    """

    subbands: dict[str, float]
    groups: dict[str, float]
    groups_weighted: dict[str, float]
    counts: dict[str, int]
    levels: int
    wavelet: str
    n_images: int
    source: str
    student: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_partial(
        cls,
        partial: Partial,
        *,
        levels: int,
        wavelet: str,
        source: str,
        student: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> BandStats:
        """Means from combined partial sums (see `combine_partials`)."""
        names = subband_names(levels)
        sums, counts = _measured_totals(partial, names, source)
        subbands = {name: sums[name] / counts[name] for name in names}
        groups, weighted = _group_means(sums, counts, levels)
        return cls(
            subbands=subbands,
            groups=groups,
            groups_weighted=weighted,
            counts=counts,
            levels=levels,
            wavelet=wavelet,
            n_images=int(partial["images"]),
            source=source,
            student=student,
            extra=dict(extra or {}),
        )

    @property
    def subband_groups(self) -> dict[str, str]:
        return {name: subband_group(name, self.levels) for name in self.subbands}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`json.dumps`-able); `from_json` reads it back."""
        return {
            "levels": self.levels,
            "wavelet": self.wavelet,
            "n_images": self.n_images,
            "source": self.source,
            "student": self.student,
            "subbands": dict(self.subbands),
            "groups": dict(self.groups),
            "groups_weighted": dict(self.groups_weighted),
            "subband_groups": self.subband_groups,
            "counts": dict(self.counts),
            "group_mean": "mean of the group's subband means (groups_weighted: per coefficient)",
            "difference": "student - teacher, both 8-bit in [0, 1]; mean absolute value",
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BandStats:
        return cls(
            subbands={k: float(v) for k, v in data["subbands"].items()},
            groups={k: float(v) for k, v in data["groups"].items()},
            groups_weighted={k: float(v) for k, v in data["groups_weighted"].items()},
            counts={k: int(v) for k, v in data["counts"].items()},
            levels=int(data["levels"]),
            wavelet=str(data["wavelet"]),
            n_images=int(data["n_images"]),
            source=str(data["source"]),
            student=str(data.get("student", "")),
            extra=dict(data.get("extra", {})),
        )


def _measured_totals(
    partial: Partial, names: Sequence[str], source: str
) -> tuple[dict[str, float], dict[str, int]]:
    """Σ|Δ| and coefficient count per subband, refusing a set in which nothing was measured."""
    counts = {name: int(partial["counts"][name]) for name in names}
    if any(count == 0 for count in counts.values()):
        raise ValueError(f"no coefficients were measured ({source}); is the set empty?")
    sums = {name: float(partial["sums"][name]) for name in names}
    return sums, counts


def _group_means(
    sums: Mapping[str, float], counts: Mapping[str, int], levels: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Per group: the mean of its subband means, and the mean over all its coefficients."""
    groups: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for group in GROUPS:
        members = [name for name in sums if subband_group(name, levels) == group]
        if not members:
            continue
        groups[group] = sum(sums[name] / counts[name] for name in members) / len(members)
        weighted[group] = sum(sums[n] for n in members) / sum(counts[n] for n in members)
    return groups, weighted


# ---------------------------------------------------------------------- the student


@dataclass(frozen=True)
class StudentRef:
    """A student by checkpoint path, for dask.distributed workers (each loads it once)."""

    path: str
    arch: str | None = None
    mtime_ns: int = 0  # part of the cache key: a rewritten checkpoint is loaded again

    def __str__(self) -> str:
        return self.path


_LOADED: dict[tuple[StudentRef, str], nn.Module] = {}
_LOADED_LOCK = threading.Lock()


def load_student(
    path: str | Path, arch: str | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """The student of a checkpoint, in eval mode on `device` (fp32).

    Delegates to `dtkd_pipeline.upscale.load_upscaler`: the architecture is the file's "arch"
    (this project's student.pt), else `arch`, else swinir-s-x4; official SwinIR releases and
    plain state dicts load too.
    """
    from dtkd_pipeline.upscale import load_upscaler

    return load_upscaler(path, device, "fp32", arch=arch).model


def _resolve_student(student: nn.Module | StudentRef, device: torch.device) -> nn.Module:
    if isinstance(student, nn.Module):
        return student
    key = (student, str(device))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_student(student.path, student.arch, device)
        return _LOADED[key]


# ---------------------------------------------------------------------- partial sums


def empty_partial(levels: int) -> Partial:
    names = subband_names(levels)
    return {"sums": dict.fromkeys(names, 0.0), "counts": dict.fromkeys(names, 0), "images": 0}


def combine_partials(partials: Iterable[Partial], levels: int) -> Partial:
    """Add partial sums in the order given (a fixed order keeps results reproducible)."""
    total = empty_partial(levels)
    for partial in partials:
        for name in total["sums"]:
            total["sums"][name] += partial["sums"][name]
            total["counts"][name] += partial["counts"][name]
        total["images"] += partial["images"]
    return total


def batch_partial(
    model: nn.Module,
    lr: np.ndarray,
    teacher: np.ndarray,
    *,
    levels: int,
    wavelet: str,
    device: torch.device,
    what: str = "batch",
) -> Partial:
    """Σ|Δb| and counts per subband for uint8 LR inputs B×3×h×w and uint8 teacher outputs."""
    x = torch.from_numpy(np.ascontiguousarray(lr)).to(device).float().div_(255.0)
    with torch.inference_mode():
        sr = model(x)
        if tuple(sr.shape) != tuple(teacher.shape):
            raise ValueError(
                f"{what}: the student output is {tuple(sr.shape)} but the teacher output is "
                f"{tuple(teacher.shape)} (wrong scale, or teacher images for other inputs?)"
            )
        # fp64 where available: exact integer differences, sums independent of batching.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        student_levels = sr.float().clamp(0, 1).mul_(255).round_().to(dtype)  # sr may be shared
        teacher_levels = torch.from_numpy(np.ascontiguousarray(teacher)).to(device, dtype)
        delta = (student_levels - teacher_levels).div_(255.0)
        bands = dwt_subbands(delta, levels, wavelet)
        return {
            "sums": {name: float(band.abs().sum()) for name, band in bands.items()},
            "counts": {name: band.numel() for name, band in bands.items()},
            "images": len(lr),
        }


def _batched_partial(
    model: nn.Module,
    lr: np.ndarray,
    teacher: np.ndarray,
    batch_size: int,
    levels: int,
    wavelet: str,
    device: torch.device,
    what: str,
) -> Partial:
    parts = [
        batch_partial(
            model,
            lr[start : start + batch_size],
            teacher[start : start + batch_size],
            levels=levels,
            wavelet=wavelet,
            device=device,
            what=what,
        )
        for start in range(0, len(lr), batch_size)
    ]
    return combine_partials(parts, levels)


# ---------------------------------------------------------------------- tasks


def _shard_task(
    student: nn.Module | StudentRef,
    prepared_path: str,
    teacher_path: str,
    shard: int,
    stop: int,
    *,
    levels: int,
    wavelet: str,
    batch_size: int,
    device: str,
) -> Partial:
    """One shard (its tiles below `stop`): stores opened here, so the task runs on any worker."""
    target = torch.device(device)
    model = _resolve_student(student, target)
    prepared = TileStore.open(prepared_path)
    teacher = TileStore.open(teacher_path)
    start, _ = prepared.layout.shard_range(shard)
    lr = prepared.read_shard(shard, [LR])[LR][: stop - start]
    sr = teacher.read_shard(shard, [TEACHER])[TEACHER][: stop - start]
    what = f"shard {shard} of {teacher_path}"
    return _batched_partial(model, lr, sr, batch_size, levels, wavelet, target, what)


def _files_task(
    student: nn.Module | StudentRef,
    pairs: Sequence[tuple[str, str]],
    *,
    levels: int,
    wavelet: str,
    batch_size: int,
    device: str,
) -> Partial:
    """A chunk of image files; consecutive images of one size run as one batch."""
    target = torch.device(device)
    model = _resolve_student(student, target)
    parts = [
        batch_partial(
            model,
            np.stack(run.lr),
            np.stack(run.teacher),
            levels=levels,
            wavelet=wavelet,
            device=target,
            what=run.what,
        )
        for run in _same_size_runs(pairs, batch_size)
    ]
    return combine_partials(parts, levels)


@dataclass
class _ImageRun:
    """Consecutive image pairs of one size, read as uint8: the inputs of one batch."""

    lr: list[np.ndarray] = field(default_factory=list)
    teacher: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def fits(self, lr: np.ndarray, teacher: np.ndarray) -> bool:
        """Whether a pair of these sizes can join the run (any pair joins an empty run)."""
        if not self.lr:
            return True
        return lr.shape == self.lr[0].shape and teacher.shape == self.teacher[0].shape

    def add(self, lr: np.ndarray, teacher: np.ndarray, name: str) -> None:
        self.lr.append(lr)
        self.teacher.append(teacher)
        self.names.append(name)

    @property
    def what(self) -> str:
        """The run's pairs as error messages name them: one pair, or the first .. the last."""
        return self.names[0] if len(self.names) == 1 else f"{self.names[0]} .. {self.names[-1]}"


def _same_size_runs(pairs: Sequence[tuple[str, str]], batch_size: int) -> Iterator[_ImageRun]:
    """Runs of at most `batch_size` consecutive same-size pairs, each yielded once complete, so
    the model works on one run before the next images are read."""
    run = _ImageRun()
    for lr_path, teacher_path in pairs:
        lr, sr = _read_uint8(lr_path), _read_uint8(teacher_path)
        if not run.fits(lr, sr):
            yield run
            run = _ImageRun()
        run.add(lr, sr, f"{lr_path} -> {teacher_path}")
        if len(run.lr) == batch_size:
            yield run
            run = _ImageRun()
    if run.lr:
        yield run


def _read_uint8(path: str) -> np.ndarray:
    """3×H×W uint8, rounded like the 8-bit images the pipeline saves (alpha is ignored)."""
    rgb = read_image(path).rgb
    return to_uint8(rgb).transpose(2, 0, 1)


# ---------------------------------------------------------------------- running the graph


@dataclass(frozen=True)
class _Progress:
    """What the band bar shows: the student analysed, and what it counts (tiles or images)."""

    student: str
    unit: str
    sizes: list[int]  # per task, the tiles or images it covers

    def bar(self) -> tqdm:
        return tqdm(total=sum(self.sizes), desc=f"bands of {self.student}", unit=self.unit)


def _run(
    tasks: list[Any],
    scheduler: str,
    num_workers: int | None,
    progress: _Progress | None,
) -> list[Partial]:
    import dask

    local = LOCAL_SCHEDULERS.get(scheduler)
    if local is not None:
        options: dict[str, Any] = {"scheduler": local}
        if local == "threads":
            # Two threads overlap store decoding with the model; more mostly contend for it.
            options["num_workers"] = num_workers or 2
        if progress is not None:
            with progress.bar() as bar, DaskTqdm(bar, tasks, progress.sizes):
                return list(dask.compute(*tasks, **options))
        return list(dask.compute(*tasks, **options))
    if ":" not in scheduler:
        raise ValueError(
            f"scheduler must be 'sync', 'threads' or a dask.distributed address "
            f"(e.g. tcp://host:8786), got {scheduler!r}"
        )
    from distributed import as_completed

    with connect(scheduler) as client:
        futures = client.compute(tasks)
        if progress is not None:
            size_of = dict(zip((future.key for future in futures), progress.sizes, strict=True))
            with progress.bar() as bar:
                for future in as_completed(futures):
                    bar.update(size_of[future.key])
        return list(client.gather(futures))


def _combined_partial(
    tasks: list[Any],
    restore: Callable[[], None],
    levels: int,
    scheduler: str,
    num_workers: int | None,
    progress: _Progress | None,
) -> Partial:
    """Run the tasks and add up their partial sums; the student's mode is restored either way."""
    try:
        partials = _run(tasks, scheduler, num_workers, progress)
    finally:
        restore()
    return combine_partials(partials, levels)


def _prepare_student(
    student: nn.Module | str | Path, device: torch.device, arch: str | None, scheduler: str
) -> tuple[Any, str, Callable[[], None]]:
    """The object tasks receive, a description, and a function restoring a module's mode."""
    import dask

    label = type(student).__name__ if isinstance(student, nn.Module) else str(student)
    if not isinstance(student, nn.Module):
        path = Path(student)
        if not path.is_file():
            raise FileNotFoundError(f"student checkpoint {path} not found")
        if scheduler not in LOCAL_SCHEDULERS:
            # Workers load the file themselves (once per process) instead of receiving weights.
            return StudentRef(str(path.resolve()), arch, path.stat().st_mtime_ns), label, _noop
        student = load_student(path, arch, device)  # up front: errors surface before any work
    model = student
    was_training = model.training
    model.to(device).eval()

    def restore() -> None:
        model.train(was_training)

    # One graph node for the module, shared by every task (shipped once per worker); named,
    # so dask does not hash the weights to tokenize it.
    node = dask.delayed(model, name=f"bands-student-{uuid.uuid4().hex}", traverse=False)
    return node, label, restore


def _noop() -> None:
    pass


def _require_positive(**counts: int | None) -> None:
    """Refuse a count below 1, naming its argument; None (no limit) passes."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_args(levels: int, wavelet: str, batch_size: int) -> None:
    subband_names(levels)  # validates levels
    _require_positive(batch_size=batch_size)
    dwt_subbands(torch.zeros(1, 1, 2**levels, 2**levels), levels, wavelet)  # validates wavelet


# ---------------------------------------------------------------------- public entry points


def analyze_cache(
    prepared_store: str | Path,
    teacher_store: str | Path,
    student: nn.Module | str | Path,
    *,
    levels: int = 2,  # the paper's J, with Haar: the method's own setting
    wavelet: str = "haar",
    batch_size: int,  # a speed setting (evaluate.bands.batch_size): no default here
    device: torch.device | str = "cpu",
    max_tiles: int | None = None,
    scheduler: str = "threads",
    num_workers: int | None = None,
    arch: str | None = None,
    progress: bool = True,
    name: str | None = None,
) -> BandStats:
    """Band-wise |student − teacher| over the cached training tiles (one dask task per shard).

    `prepared_store` is `data/prepared/train.zarr` (array "lr"), `teacher_store` is
    `data/cache/teacher.zarr` (array "teacher"); both are checked as stage two checks them (kind,
    completeness, the teacher computed from this prepared store). `student` is a checkpoint path
    (`arch` overrides the name it records; see `load_student`) or a module, which is moved to
    `device` and run in eval mode (its train/eval mode is restored afterwards). `max_tiles`
    limits the set to the first tiles. `scheduler`: "threads" (default; `num_workers` threads,
    2 unless given), "sync", or a dask.distributed address such as "tcp://host:8786" (workers
    then open the stores by path, so the paths must be valid on them). `progress` shows a bar
    over the tiles, naming the student `name` (default: the checkpoint path or module class).
    """
    _check_args(levels, wavelet, batch_size)
    prepared_path, teacher_path = Path(prepared_store), Path(teacher_store)
    layout, hr_shape = _checked_store_layout(prepared_path, teacher_path)
    _require_tile_depth(teacher_path, hr_shape, levels, wavelet)  # before the student loads
    _require_positive(max_tiles=max_tiles)
    n_tiles = min(layout.n_tiles, max_tiles or layout.n_tiles)

    target = torch.device(device)
    task_student, label, restore = _prepare_student(student, target, arch, scheduler)
    tasks, sizes = _shard_tasks(
        task_student,
        prepared_path,
        teacher_path,
        layout,
        n_tiles,
        levels=levels,
        wavelet=wavelet,
        batch_size=batch_size,
        device=str(target),
    )
    shown = _Progress(name or label, "tile", sizes) if progress else None
    partial = _combined_partial(tasks, restore, levels, scheduler, num_workers, shown)
    source = f"cache: {prepared_path} + {teacher_path}, first {n_tiles} of {layout.n_tiles} tiles"
    return BandStats.from_partial(
        partial,
        levels=levels,
        wavelet=wavelet,
        source=source,
        student=label,
        extra={"tile_shape": list(hr_shape[1:])},
    )


def _checked_store_layout(
    prepared_path: Path, teacher_path: Path
) -> tuple[StoreLayout, tuple[int, ...]]:
    """The prepared store's layout and HR tile shape, once both stores pass stage two's checks."""
    from dtkd_pipeline.train.dataset import check_teacher_matches_prepared

    require_prepared_exists(prepared_path, FileNotFoundError)
    require_teacher_exists(teacher_path)
    with open_prepared(prepared_path) as prepared, TileStore.open(teacher_path) as teacher:
        check_teacher_matches_prepared(teacher, prepared)
        return prepared.layout, prepared.layout.spec(HR).tile_shape


def _shard_tasks(
    task_student: Any,
    prepared_path: Path,
    teacher_path: Path,
    layout: StoreLayout,
    n_tiles: int,
    *,
    levels: int,
    wavelet: str,
    batch_size: int,
    device: str,
) -> tuple[list[Any], list[int]]:
    """One delayed `_shard_task` per shard holding any of the first `n_tiles` tiles, and the
    number of those tiles each covers."""
    import dask

    task = dask.delayed(_shard_task, pure=True)
    run_id = uuid.uuid4().hex[:12]  # unique keys: a shared cluster never reuses another run's
    tasks, sizes = [], []
    for shard in range(layout.n_shards):
        start, stop = layout.shard_range(shard)
        if start >= n_tiles:
            break
        sizes.append(min(stop, n_tiles) - start)
        tasks.append(
            task(
                task_student,
                str(prepared_path.resolve()),
                str(teacher_path.resolve()),
                shard,
                min(stop, n_tiles),
                levels=levels,
                wavelet=wavelet,
                batch_size=batch_size,
                device=device,
                dask_key_name=f"bands-shard-{shard}-{run_id}",
            )
        )
    return tasks, sizes


def folder_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(lr, teacher) image pairs of `folder/lr` and `folder/teacher`, matched by file stem."""
    root = Path(folder)
    lr_dir, teacher_dir = root / "lr", root / "teacher"
    for sub in (lr_dir, teacher_dir):
        if not sub.is_dir():
            raise FileNotFoundError(
                f"{sub} not found: the folder needs lr/ (student inputs) and teacher/ (teacher "
                "outputs, e.g. from `dtkd-pipeline teacher-sr`) subfolders"
            )
    teacher_by_stem = {p.stem: p for p in list_images(teacher_dir)}
    pairs = [(p, teacher_by_stem[p.stem]) for p in list_images(lr_dir) if p.stem in teacher_by_stem]
    if not pairs:
        raise FileNotFoundError(
            f"no image pairs (matched by file stem) in {lr_dir} and {teacher_dir}"
        )
    return pairs


def require_dwt_depth(
    pairs: Sequence[tuple[Path, Path]],
    levels: int,
    wavelet: str,
    *,
    key: str = "levels",
    error: type[Exception] = ValueError,
) -> None:
    """Refuse a teacher image too small for a `levels`-level DWT, reading only image headers.

    The limit is PyWavelets' maximum level for the shorter side and the wavelet's filter
    length: deeper, the coarsest subbands are all boundary padding (ptwt decomposes any depth
    silently), so the analysis would measure padding. `key` names the depth setting in the
    message; `error` is the exception type the caller promises.
    """
    for _, teacher_path in pairs:
        header = probe_image(teacher_path)
        deepest = deepest_dwt_level(header.width, header.height, wavelet)
        if levels > deepest:
            raise error(
                f"{teacher_path} is {header.width}x{header.height} px, too small for a "
                f"{levels}-level {wavelet} DWT ({key} {levels}): it allows at most {deepest} "
                f"levels. Lower {key} or leave this image out of the folder"
            )


def _require_tile_depth(
    teacher_path: Path, tile_shape: tuple[int, ...], levels: int, wavelet: str
) -> None:
    """As `require_dwt_depth`, for the cached tiles: params check data.lr_tile when they load,
    but the stores analysed may have been built with another tile size. A `StoreLayoutError`
    (the store does not fit the request), which the CLI reports in one line."""
    height, width = tile_shape[-2:]
    deepest = deepest_dwt_level(width, height, wavelet)
    if levels > deepest:
        allowed = f"{deepest} level{'s' if deepest != 1 else ''}"
        raise StoreLayoutError(
            f"{teacher_path}: its {width}x{height}-px teacher tiles are too small for a "
            f"{levels}-level {wavelet} DWT (levels {levels}): they allow at most {allowed}. "
            "Lower levels (evaluate.bands.levels), or rebuild both stores with a larger "
            "data.lr_tile"
        )


def analyze_folder(
    folder: str | Path,
    student: nn.Module | str | Path,
    *,
    levels: int = 2,  # the paper's J, with Haar: the method's own setting
    wavelet: str = "haar",
    batch_size: int,  # a speed setting (evaluate.bands.batch_size): no default here
    device: torch.device | str = "cpu",
    max_images: int | None = None,
    images_per_task: int = 32,
    scheduler: str = "threads",
    num_workers: int | None = None,
    arch: str | None = None,
    progress: bool = True,
    name: str | None = None,
) -> BandStats:
    """Band-wise |student − teacher| over `folder/lr` inputs and `folder/teacher` outputs.

    Images are matched by file stem and may differ in size (same-size neighbours are batched).
    One dask task per `images_per_task` files; other arguments as in `analyze_cache`.
    """
    _check_args(levels, wavelet, batch_size)
    _require_positive(images_per_task=images_per_task, max_images=max_images)
    found = folder_pairs(folder)
    pairs = found[: max_images or len(found)]
    require_dwt_depth(pairs, levels, wavelet)  # before the student loads

    target = torch.device(device)
    task_student, label, restore = _prepare_student(student, target, arch, scheduler)
    tasks, sizes = _file_tasks(
        task_student,
        pairs,
        images_per_task,
        levels=levels,
        wavelet=wavelet,
        batch_size=batch_size,
        device=str(target),
    )
    shown = _Progress(name or label, "img", sizes) if progress else None
    return BandStats.from_partial(
        _combined_partial(tasks, restore, levels, scheduler, num_workers, shown),
        levels=levels,
        wavelet=wavelet,
        source=f"folder: {Path(folder)}, {len(pairs)} of {len(found)} image pairs",
        student=label,
    )


def _file_tasks(
    task_student: Any,
    pairs: Sequence[tuple[Path, Path]],
    images_per_task: int,
    *,
    levels: int,
    wavelet: str,
    batch_size: int,
    device: str,
) -> tuple[list[Any], list[int]]:
    """One delayed `_files_task` per `images_per_task` consecutive pairs, and the number of
    pairs each covers."""
    import dask

    task = dask.delayed(_files_task, pure=True)
    run_id = uuid.uuid4().hex[:12]  # unique keys: a shared cluster never reuses another run's
    groups = [
        pairs[start : start + images_per_task] for start in range(0, len(pairs), images_per_task)
    ]
    tasks = [
        task(
            task_student,
            [(str(lr), str(sr)) for lr, sr in group],
            levels=levels,
            wavelet=wavelet,
            batch_size=batch_size,
            device=device,
            dask_key_name=f"bands-files-{index * images_per_task}-{run_id}",
        )
        for index, group in enumerate(groups)
    ]
    return tasks, [len(group) for group in groups]


def write_band_report(
    stats: BandStats | Mapping[str, BandStats],
    out_dir: str | Path,
    plots_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write `bands.json` into `out_dir` and `bands.png` (the chart) into `plots_dir` or `out_dir`.

    One `BandStats` gives its `to_json()`; several (label -> stats, e.g. "L1 student" and
    "DTKD student") give {"students": {label: to_json()}} and grouped bars.
    """
    from dtkd_pipeline.evaluate.figures import band_chart

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(stats, BandStats):
        payload: dict[str, Any] = stats.to_json()
    else:
        if not stats:
            raise ValueError("write_band_report needs at least one BandStats")
        payload = {"students": {label: s.to_json() for label, s in stats.items()}}
    json_path = atomic.write_json(out / JSON_NAME, payload)
    png_path = band_chart(stats, Path(plots_dir or out) / PNG_NAME)
    return {"json": json_path, "png": png_path}


__all__ = [
    "GROUPS",
    "BandStats",
    "StudentRef",
    "analyze_cache",
    "analyze_folder",
    "batch_partial",
    "combine_partials",
    "folder_pairs",
    "load_student",
    "require_dwt_depth",
    "subband_group",
    "write_band_report",
]
