"""Stage 1a, prepare: HR images -> fixed-size LR/HR training tiles (train.zarr) + whole-image val/.

1. List the HR folder and split off the last ``data.val_images`` images (sorted) for validation.
2. Decode every image in parallel (dask) and plan its tiles; unreadable files are collected and
   reported together, and unless ``skip_bad`` nothing is written.
3. Cut tiles (LR by MATLAB bicubic x4, or from a paired LR folder) and write them shard by shard.

Everything is built in ``<prepared_dir>.tmp-<pid>`` and renamed into place at the end, so an
interrupted run never leaves a half-written data set behind. The whole run holds a lock beside
the folder (``.<name>.dtkd-lock``, removed when done), so a concurrent run on the same folder is
refused at once instead of racing for the rename.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
from tqdm.auto import tqdm

from dtkd_pipeline.atomic import (
    OUTPUT_MARKER,
    check_replaceable,
    pid_temporary,
    remove_dead_siblings,
    replacing_folder,
    require_replaceable_location,
)
from dtkd_pipeline.cache import (
    HR,
    KIND_PREPARED,
    LR,
    TILE_OFFSET,
    TILE_SOURCE,
    Compression,
    StoreLayout,
    TileStore,
    prepared_arrays,
)
from dtkd_pipeline.cache.prepared_store import prepared_provenance
from dtkd_pipeline.config import DataParams, Params
from dtkd_pipeline.evaluate.metrics import VALIDATION_METRICS, min_scored_side
from dtkd_pipeline.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    read_image,
    to_uint8,
    unreadable_advice,
    write_image,
)
from dtkd_pipeline.pairing import PairingError, listing, naming_rule, pair_by_stem
from dtkd_pipeline.progress import DaskTqdm
from dtkd_pipeline.resize import bicubic_downscale_x4, modcrop
from dtkd_pipeline.run_lock import exclusive_output
from dtkd_pipeline.skipped import SKIPPED_LIST, SkippedImages
from dtkd_pipeline.stage_files import TRAIN_STORE, VAL_DIR
from dtkd_pipeline.tiles import TilePlan, cut_tiles, pad_bottom_right, plan_tiles


@dataclass(frozen=True)
class ImagePair:
    """A decoded HR image and its LR counterpart, both uint8 HxWx3, LR exactly 1/scale of HR."""

    hr: np.ndarray
    lr: np.ndarray


@dataclass(frozen=True)
class Sources:
    """Where an HR image's LR comes from: MATLAB bicubic, or a paired LR folder indexed once."""

    scale: int
    lr_dir: Path | None
    lr_by_hr: dict[Path, Path]
    unpaired_lr: tuple[Path, ...] = ()  # LR files no HR image claims; reported, not used

    @classmethod
    def from_params(cls, data: DataParams, hr_paths: list[Path]) -> Sources:
        """Pair every HR image with its file in ``data.lr_dir`` (names as `pairing` says)."""
        if data.lr_dir is None:
            return cls(data.scale, None, {})
        try:
            matched = pair_by_stem(
                hr_paths, list_images(data.lr_dir), data.hr_dir, data.lr_dir, data.scale
            )
        except PairingError as error:
            raise ImageReadError(f"data.lr_dir: {error}") from None
        lr_by_hr = {hr: lr for _, hr, lr in matched.pairs}
        return cls(data.scale, data.lr_dir, lr_by_hr, tuple(matched.unmatched_lr))

    def lr_path(self, hr_path: Path) -> Path | None:
        if self.lr_dir is None:
            return None
        if hr_path not in self.lr_by_hr:
            raise ImageReadError(
                f"{hr_path}: no LR image for it in data.lr_dir {self.lr_dir}; "
                f"{naming_rule(self.scale)}"
            )
        return self.lr_by_hr[hr_path]


def _read_checked(hr_path: Path, sources: Sources) -> tuple[np.ndarray, np.ndarray | None]:
    """The HR image cropped to a multiple of the scale, and the paired LR if there is one."""
    hr = modcrop(read_image(hr_path).rgb, sources.scale)
    lr_path = sources.lr_path(hr_path)
    if lr_path is None:
        return hr, None
    lr = read_image(lr_path).rgb
    expected = (hr.shape[0] // sources.scale, hr.shape[1] // sources.scale)
    if lr.shape[:2] != expected:
        raise ImageReadError(
            f"{lr_path}: LR is {lr.shape[1]}x{lr.shape[0]} but {hr_path} needs "
            f"{expected[1]}x{expected[0]} (HR / {sources.scale}); fix the pair or drop data.lr_dir"
        )
    return hr, lr


def load_pair(hr_path: Path, sources: Sources) -> ImagePair:
    """Decode one HR image and make (MATLAB bicubic, as DIV2K) or read its LR; errors name files."""
    hr, lr = _read_checked(hr_path, sources)
    if lr is None:
        lr, hr = bicubic_downscale_x4(hr)  # data.scale is validated to be 4
    return ImagePair(to_uint8(hr), to_uint8(lr))


def _probe(
    hr_path: Path, sources: Sources, data: DataParams, min_hr_side: int
) -> TilePlan | ImageReadError | None:
    """Decode and plan one image; a read problem is returned (not raised) to be reported in bulk.

    The LR size follows from the HR size, so the (costly) bicubic resize waits for tiling.
    ``min_hr_side``: the smallest usable HR side (validation images are scored with SSIM).
    """
    try:
        hr, _ = _read_checked(hr_path, sources)
    except ImageReadError as exc:
        return exc
    if min(hr.shape[:2]) < max(min_hr_side, data.scale):
        return ImageReadError(
            f"{hr_path}: {hr.shape[1]}x{hr.shape[0]} (cropped to a multiple of {data.scale}) is "
            f"too small: {'validation images need' if min_hr_side else 'images need'} at least "
            f"{max(min_hr_side, data.scale)} px per side; leave it out"
        )
    lr_height, lr_width = hr.shape[0] // data.scale, hr.shape[1] // data.scale
    return plan_tiles(lr_height, lr_width, data.lr_tile, data.stride, data.small_images)


def _tiles_of(
    hr_path: Path, sources: Sources, data: DataParams, plan: TilePlan
) -> tuple[np.ndarray, np.ndarray]:
    pair = load_pair(hr_path, sources)
    lr = pad_bottom_right(pair.lr, plan.pad_bottom, plan.pad_right)
    hr = pad_bottom_right(pair.hr, plan.pad_bottom * data.scale, plan.pad_right * data.scale)
    return (
        cut_tiles(lr, plan.offsets, data.lr_tile),
        cut_tiles(hr, plan.offsets, data.lr_tile, scale=data.scale),
    )


def _compute(tasks: list[Any], data: DataParams, bar: tqdm) -> list[Any]:
    """Run dask tasks on ``data.workers`` processes (in-process for one), advancing ``bar``."""
    scheduler = "sync" if data.workers == 1 else "processes"
    with DaskTqdm(bar, tasks):
        return list(dask.compute(*tasks, scheduler=scheduler, num_workers=data.workers))


def _check_prepared_dir(folder: Path) -> None:
    """Refuse to replace a folder holding files this stage did not write.

    DVC restores a checked-out output without the marker (.dvcignore'd), so a folder holding
    only what this stage writes counts as its own too.
    """
    require_replaceable_location(folder, "data.prepared_dir")  # checked out by DVC or not
    ours = {TRAIN_STORE, VAL_DIR, SKIPPED_LIST, OUTPUT_MARKER}
    checked_out = (folder / TRAIN_STORE / "zarr.json").is_file()
    if checked_out and {entry.name for entry in folder.iterdir()} <= ours:
        return
    check_replaceable(folder, "data.prepared_dir")


def _check_inputs(data: DataParams) -> tuple[list[Path], list[Path]]:
    if not data.hr_dir.is_dir():
        raise ImageReadError(f"data.hr_dir {data.hr_dir} is not a folder; point it at HR images")
    if data.lr_dir is not None and not data.lr_dir.is_dir():
        raise ImageReadError(f"data.lr_dir {data.lr_dir} is not a folder (or set it to null)")
    paths = list_images(data.hr_dir)
    if not paths:
        raise ImageReadError(
            f"data.hr_dir {data.hr_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if data.val_images >= len(paths):
        raise ImageReadError(
            f"data.val_images={data.val_images} leaves no training image among the "
            f"{len(paths)} in {data.hr_dir}; lower it or add images"
        )
    split = len(paths) - data.val_images
    val_paths = paths[split:]
    by_stem: dict[str, Path] = {}
    for path in val_paths:  # saved as val/{hr,lr}/<stem>.png: one would overwrite the other
        if path.stem in by_stem:
            raise ImageReadError(
                f"validation images {by_stem[path.stem].name} and {path.name} (the last "
                f"data.val_images={data.val_images} of {data.hr_dir}) share the name "
                f"{path.stem!r}, and validation pairs are saved as <name>.png; rename one"
            )
        by_stem[path.stem] = path
    return paths[:split], val_paths


def _iter_tiles(
    paths: list[Path], plans: list[TilePlan], sources: Sources, data: DataParams
) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[tuple[int, int]]]]:
    """Tiles image by image, decoded in parallel batches so memory stays bounded."""
    batch = max(1, 2 * data.workers)
    with tqdm(total=len(paths), desc="tiling", unit="img") as bar:
        for start in range(0, len(paths), batch):
            chunk = list(range(start, min(start + batch, len(paths))))
            tasks = [dask.delayed(_tiles_of)(paths[i], sources, data, plans[i]) for i in chunk]
            for i, (lr, hr) in zip(chunk, _compute(tasks, data, bar), strict=True):
                yield i, lr, hr, plans[i].offsets


def train_store_layout(data: DataParams, n_tiles: int) -> StoreLayout:
    """The layout of train.zarr for these data params (benchmarks build synthetic ones with it)."""
    return StoreLayout(
        kind=KIND_PREPARED,
        n_tiles=n_tiles,
        shard_size=data.shard_size,
        arrays=prepared_arrays(data.lr_tile, data.scale),
        compression=Compression(data.compression.codec, data.compression.level),
    )


def _write_train_store(
    path: Path, paths: list[Path], plans: list[TilePlan], sources: Sources, data: DataParams
) -> int:
    n_tiles = sum(len(plan.offsets) for plan in plans)
    layout = train_store_layout(data, n_tiles)
    provenance = prepared_provenance(data, [p.name for p in paths])
    pending: dict[str, list[np.ndarray]] = {LR: [], HR: [], TILE_SOURCE: [], TILE_OFFSET: []}
    shard = 0

    def flush(store: TileStore, count: int) -> None:
        nonlocal pending, shard
        store.write_shard(shard, {k: np.stack(v[:count]) for k, v in pending.items()})
        pending = {k: v[count:] for k, v in pending.items()}
        shard += 1

    with TileStore.create(path, layout, provenance) as store:
        for image_index, lr, hr, offsets in _iter_tiles(paths, plans, sources, data):
            pending[LR].extend(lr)
            pending[HR].extend(hr)
            pending[TILE_SOURCE].extend(np.full(len(offsets), image_index, np.int32))
            pending[TILE_OFFSET].extend(np.asarray(offsets, np.int32))
            while len(pending[LR]) >= data.shard_size:
                flush(store, data.shard_size)
        if pending[LR]:
            flush(store, len(pending[LR]))
    if shard != layout.n_shards:
        raise RuntimeError(f"wrote {shard} of {layout.n_shards} shards; tiling was inconsistent")
    return n_tiles


def _write_val(folder: Path, paths: list[Path], sources: Sources) -> None:
    (folder / "hr").mkdir(parents=True)
    (folder / "lr").mkdir(parents=True)
    for path in tqdm(paths, desc="validation images", unit="img"):
        pair = load_pair(path, sources)
        write_image(folder / "hr" / f"{path.stem}.png", pair.hr)
        write_image(folder / "lr" / f"{path.stem}.png", pair.lr)


def run(params: Params, skip_bad: bool | None = None) -> Path:
    """Build ``<prepared_dir>/train.zarr`` and ``<prepared_dir>/val/``; returns prepared_dir."""
    try:
        return _prepare(params, skip_bad)
    except KeyboardInterrupt as interrupt:  # the CLI prints the note
        interrupt.add_note(
            f"{params.data.prepared_dir} is as it was (it is replaced only when everything is "
            "written); run the same command again"
        )
        raise


def _prepare(params: Params, skip_bad: bool | None) -> Path:
    data = params.data
    skip_bad = data.skip_bad if skip_bad is None else skip_bad
    started = time.perf_counter()
    final = data.prepared_dir
    # Held from the first check to the swap: a second run is refused before it touches anything.
    with exclusive_output(final, "data.prepared_dir"):
        _check_prepared_dir(final)  # replaced whole at the end
        train_paths, val_paths = _check_inputs(data)
        sources = Sources.from_params(data, train_paths + val_paths)
        _note_unpaired_lr(sources, data.scale)
        usable = _usable_images(train_paths, val_paths, sources, data, skip_bad)
        kept, val_paths = usable.train, usable.val_paths

        remove_dead_siblings(final)  # a killed run's staging folder
        with replacing_folder(final, pid_temporary(final)) as staging:
            paths = [p for p, _ in kept]
            plans = [plan for _, plan in kept]
            n_tiles = _write_train_store(staging / TRAIN_STORE, paths, plans, sources, data)
            _write_val(staging / VAL_DIR, val_paths, sources)
            if usable.skipped:
                usable.skipped.write_list(staging / SKIPPED_LIST)
    elapsed = time.perf_counter() - started
    print(_summary(n_tiles, usable, elapsed, final / TRAIN_STORE))
    return final


@dataclass(frozen=True)
class UsableImages:
    """The images that get written, and those left out (named in the closing summary)."""

    train: list[tuple[Path, TilePlan]]  # each training image with its tile plan
    val_paths: list[Path]
    skipped: SkippedImages  # unreadable or unpaired (only when skipping them)
    too_small: list[str]  # names of training images smaller than a tile (small_images=skip)


def _note_unpaired_lr(sources: Sources, scale: int) -> None:
    if sources.unpaired_lr and sources.lr_dir is not None:
        # Unlike a test set (where a leftover would silently shrink the scored set), an extra LR
        # file here costs nothing, but it usually means a misnamed HR file: say so.
        unpaired = listing(list(sources.unpaired_lr), sources.lr_dir, "LR files with no HR image")
        tqdm.write(f"note: ignoring {unpaired} ({naming_rule(scale)})")


def _usable_images(
    train_paths: list[Path],
    val_paths: list[Path],
    sources: Sources,
    data: DataParams,
    skip_bad: bool,
) -> UsableImages:
    """Probe every image; refuse (or skip) bad ones, and refuse a set left without tiles."""
    all_paths = train_paths + val_paths
    probes = _probe_all(all_paths, set(val_paths), sources, data)
    bad = {p: r for p, r in zip(all_paths, probes, strict=True) if isinstance(r, Exception)}
    skipped = _refuse_or_skip_bad(bad, skip_bad)
    probed = [(p, r) for p, r in zip(train_paths, probes, strict=False) if p not in bad]
    too_small = [p.name for p, plan in probed if plan is None]
    kept = [(p, plan) for p, plan in probed if plan is not None]
    _note_mostly_padding(kept, data.lr_tile)
    usable_val = [p for p in val_paths if p not in bad]
    _require_tiles_and_validation(kept, usable_val, data)
    return UsableImages(kept, usable_val, skipped, too_small)


def _probe_all(
    paths: list[Path], validation: set[Path], sources: Sources, data: DataParams
) -> list[TilePlan | ImageReadError | None]:
    """`_probe` every image in parallel, in the order given."""
    with tqdm(total=len(paths), desc="checking images", unit="img") as bar:
        # distill scores the validation images: they must be large enough for its metrics.
        val_side, _ = min_scored_side(VALIDATION_METRICS, crop_border=data.scale)
        tasks = [
            dask.delayed(_probe)(p, sources, data, val_side if p in validation else 0)
            for p in paths
        ]
        return _compute(tasks, data, bar)


def _refuse_or_skip_bad(bad: dict[Path, ImageReadError], skip_bad: bool) -> SkippedImages:
    if bad and not skip_bad:
        problems = "\n".join(f"  {exc}" for exc in bad.values())
        advice = unreadable_advice("them", "rerun with --skip-bad (data.skip_bad: true)")
        raise ImageReadError(
            f"{len(bad)} image(s) could not be read or paired, so nothing was written; "
            f"{advice}:\n{problems}"
        )
    skipped = SkippedImages()
    for path, exc in bad.items():
        skipped.add(path, exc)
    return skipped


def _note_mostly_padding(kept: list[tuple[Path, TilePlan]], tile: int) -> None:
    mostly_padding = [
        p.name
        for p, plan in kept
        if (tile - plan.pad_bottom) * (tile - plan.pad_right) < tile * tile / 2
    ]
    if mostly_padding:
        tqdm.write(
            f"note: {len(mostly_padding)} image(s) fill less than half of a {tile}-px LR tile, "
            f"so their tiles are mostly mirrored padding: {', '.join(mostly_padding[:5])}; lower "
            "data.lr_tile or set data.small_images=skip"
        )


def _require_tiles_and_validation(
    kept: list[tuple[Path, TilePlan]], val_paths: list[Path], data: DataParams
) -> None:
    if not kept:
        small = (
            f" or smaller than one {data.lr_tile}-px LR tile (data.small_images=skip)"
            if data.small_images == "skip"
            else ""
        )
        raise ImageReadError(
            f"no training tiles: every training image in {data.hr_dir} was unreadable{small}"
        )
    if not val_paths:  # distill validates (and keeps best.pt) on them
        raise ImageReadError(
            f"no validation image left: the last {data.val_images} image(s) of {data.hr_dir} "
            "(data.val_images) were all unusable; fix them, or add images"
        )


def _summary(n_tiles: int, usable: UsableImages, elapsed: float, store: Path) -> str:
    """The closing line: what was written, and which images were left out."""
    skipped, too_small = usable.skipped, usable.too_small
    listed_in = store.parent / SKIPPED_LIST
    return (
        f"prepared {n_tiles} tiles from {len(usable.train)} images "
        f"(+{len(usable.val_paths)} validation) in {elapsed:.1f}s -> {store}"
        + (f"; {skipped.summary(listed_in)}" if skipped else "")
        + (f"; skipped {len(too_small)} too small: {too_small}" if too_small else "")
    )
