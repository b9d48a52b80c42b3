"""Stage 1b, cache-teacher: run the ResShift teacher once per LR tile into ``teacher.zarr``.

- Weights are resolved first, so an offline machine stops at once with the URL, the expected path
  and the ``--weights-dir`` alternative, before anything is written.
- The store's provenance (teacher settings, checkpoint hashes, prepared-store fingerprint) must
  match to resume; only shards without a completion record are computed.
- Noise is per sample, seeded from (seed, tile index), and a tile's batch is fixed by its index, so
  a shard's bytes do not depend on which worker computes it or on whether the run was resumed.
  With ``teacher.rng: official`` one stream runs through the batches in tile order; a run that
  skips cached tiles replays their draws (`TileOrderStream`), with the same result. The batching
  then decides each tile's noise, so the batch size is recorded and a resume must keep it.
- Batches run across the shards of a batch group (``ceil(batch_size / shard_size)`` shards), so
  ``teacher.batch_size`` may exceed ``data.shard_size``; a tile's batch depends on its index only.
- Locally the device computes the next shard while a writer thread compresses and writes the last
  one. With ``--scheduler`` each batch group with missing shards is one dask task on a GPU worker
  (one writer per shard).

The machinery lives in dtkd_pipeline/cache/: teacher_store.py (layout, provenance),
batch_groups.py, shard_compute.py, local_fill.py, dask_fanout.py and preview.py. This module
orders the steps: check params and targets, lock an existing store, build the teacher, open or
create the store, fill it, report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from dtkd_pipeline.atomic import require_file_target, require_writable_location
from dtkd_pipeline.cache import (
    KIND_PREPARED,
    KIND_TEACHER,
    PREPARED_FINGERPRINT,
    CacheError,
    NotAStoreError,
    ProvenanceMismatchError,
    StoreLayout,
    StoreLayoutError,
    StoreLock,
    TileStore,
)
from dtkd_pipeline.cache.dask_fanout import dask_device_type, fill_on_local_gpus, fill_with_dask
from dtkd_pipeline.cache.local_fill import fill_locally
from dtkd_pipeline.cache.prepared_store import check_prepared_fits, open_params_prepared
from dtkd_pipeline.cache.preview import write_preview
from dtkd_pipeline.cache.teacher_record import build_teacher, check_device_type
from dtkd_pipeline.cache.teacher_store import (
    TeacherIdentity,
    teacher_store_layout,
    teacher_store_provenance,
)
from dtkd_pipeline.config import Params
from dtkd_pipeline.devices import resolve_device
from dtkd_pipeline.run_lock import exclusive_output
from dtkd_pipeline.stage_files import RUN_PREPARE_DATA_FIRST, TRAIN_STORE
from dtkd_pipeline.teacher import Teacher


def _summary(store: TileStore, tiles: int, seconds: float) -> str:
    stored = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    raw = sum(spec.tile_nbytes for spec in store.layout.arrays) * store.n_tiles
    rate = tiles / seconds if seconds > 0 else float("inf")
    return (
        f"teacher cache {store.path}: computed {tiles} tiles in {seconds:.1f}s "
        f"({rate:.2f} tiles/s); {store.n_tiles} tiles stored in {stored / 1e6:.1f} MB, "
        f"compression {raw / stored:.2f}x"
    )


def run(
    params: Params,
    overwrite: bool = False,
    scheduler: str | None = None,
    device: str | None = None,
    rebuild_on_change: bool = False,
    teacher: Teacher | None = None,
) -> Path:
    """Fill (or resume) the teacher store; returns its path.

    A store built with other settings is refused, or with ``rebuild_on_change`` (how dvc.yaml
    runs the stage after a teacher param changed) deleted and rebuilt. ``teacher``: an already
    built teacher for these params (benchmarks reuse one warm, compiled teacher across runs).
    """
    if teacher is not None and scheduler:
        raise ValueError("pass a built teacher (local run) or a scheduler, not both")
    _check_targets(params, overwrite)
    # Held until the fill ends, from before the teacher is built (minutes, and a checkpoint
    # download): a second run on this store is refused at once. The lock beside the store meets
    # a second run even before the store exists; the store's own lock, other writers too.
    with (
        exclusive_output(params.teacher.store, "teacher.store"),
        TileStore.lock_if_present(params.teacher.store) as held_lock,
    ):
        prepared = open_params_prepared(params, complete=True)
        check_prepared_fits(prepared, params.data)
        gpus = torch.cuda.device_count() if device is None and teacher is None else 0
        teacher, identity = _teacher_and_identity(params, scheduler, gpus, device, teacher)
        check_device_type(params.teacher, identity.device_type)
        provenance = teacher_store_provenance(identity, params, prepared.fingerprint())
        layout = teacher_store_layout(prepared, params)
        started = time.perf_counter()
        store = _open_store(params, layout, provenance, overwrite, rebuild_on_change, held_lock)
        with store:
            computed = _fill(store, prepared, teacher, params, scheduler, gpus, overwrite)
            print(_summary(store, computed, time.perf_counter() - started))
            shown = min(params.teacher.preview_tiles, store.n_tiles)
            print(f"preview of {shown} tiles -> {write_preview(store, params)}")
    return params.teacher.store


def _check_targets(params: Params, overwrite: bool) -> None:
    """Refuse, before any work, settings and output locations the run would fail on later."""
    require_file_target(params.teacher.preview, "teacher.preview")  # written after the teacher ran
    require_writable_location(params.teacher.store, "teacher.store")  # resumed or overwritten
    try:
        TileStore.check_target(params.teacher.store, overwrite)
    except NotAStoreError as error:
        raise NotAStoreError(
            f"teacher.store: {error}; point teacher.store at a teacher store or a new folder"
        ) from None


def _teacher_and_identity(
    params: Params,
    scheduler: str | None,
    gpus: int,
    device: str | None,
    teacher: Teacher | None,
) -> tuple[Teacher | None, TeacherIdentity]:
    """The local teacher (built unless given; None when the fill is fanned out) and what the
    store records about it."""
    if scheduler:  # the workers build their own teachers; the coordinator needs none
        return teacher, TeacherIdentity.from_params(params.teacher, dask_device_type(scheduler))
    if gpus > 1:
        return teacher, TeacherIdentity.from_params(params.teacher, "cuda")
    if teacher is None:
        teacher = build_teacher(params.teacher, resolve_device(device))
    return teacher, TeacherIdentity.of(teacher)


def _open_store(
    params: Params,
    layout: StoreLayout,
    provenance: dict[str, Any],
    overwrite: bool,
    rebuild_on_change: bool,
    held_lock: StoreLock | None,
) -> TileStore:
    """Resume, create or (settings changed, with ``rebuild_on_change``) rebuild the store."""
    try:
        store = TileStore.open_or_create(
            params.teacher.store, layout, provenance, overwrite=overwrite, held_lock=held_lock
        )
        with store.closed_on_error():
            store.check_arrays()  # damaged array metadata: found now, not after the first batch
    except (ProvenanceMismatchError, StoreLayoutError) as exc:
        if not rebuild_on_change or isinstance(exc, NotAStoreError):
            raise
        print(f"{exc}\n-> settings changed: rebuilding {params.teacher.store} from scratch")
        store = TileStore.create(
            params.teacher.store, layout, provenance, overwrite=True, held_lock=held_lock
        )
    return store


def _fill(
    store: TileStore,
    prepared: TileStore,
    teacher: Teacher | None,
    params: Params,
    scheduler: str | None,
    gpus: int,
    overwrite: bool,
) -> int:
    """Compute the missing shards (on dask workers, local GPUs or here); returns how many tiles.

    ``overwrite``: the run started over, so resuming it must not repeat the flag.
    """
    store.remove_partial_files()  # leftovers of a killed run's interrupted shard writes
    shards = store.missing_shards()
    try:
        if shards and scheduler:
            fill_with_dask(store, params, shards, scheduler)
        elif shards and gpus > 1:
            fill_on_local_gpus(store, params, shards, gpus)
        elif shards:
            assert teacher is not None  # built for every run that is neither fanned out
            fill_locally(store, prepared, teacher, params, shards)
    except KeyboardInterrupt as interrupt:  # the CLI prints the note
        done = store.n_shards - len(store.missing_shards())
        again = "the same command again" + (" without --overwrite" if overwrite else "")
        interrupt.add_note(
            f"{done} of {store.n_shards} shards are stored in {store.path}; run {again} to "
            "compute the rest"
        )
        raise
    remaining = store.missing_shards()
    if remaining:
        raise CacheError(f"{store.path}: shards {remaining[:8]} still missing after the run")
    return store.layout.tiles_in(shards)


def _recompute(store: TileStore, params: Params, shards: Iterable[int], device: str | None) -> None:
    store.check_arrays()  # a damaged array cannot be repaired shard by shard: say so first
    prepared = open_params_prepared(params, complete=False)
    teacher = build_teacher(params.teacher, resolve_device(device))
    expected = teacher_store_provenance(TeacherIdentity.of(teacher), params, prepared.fingerprint())
    store.check_provenance(expected, exact=True)
    for shard in shards:
        store.invalidate_shard(shard)
    fill_locally(store, prepared, teacher, params, list(shards))


def verify(path: Path, params: Params, repair: bool = False, device: str | None = None) -> bool:
    """Print a verification report; with ``repair`` recompute bad shards. True when intact."""
    try:
        store = TileStore.open(path, mode="r+" if repair else "r", lock=repair)
    except StoreLayoutError as error:
        raise StoreLayoutError(f"{error}: {_which_stage_builds(path, params)}") from None
    with store:
        if store.kind == KIND_PREPARED:
            return _verify_prepared(store, repair)
        store.require_kind(KIND_TEACHER)
        report = store.verify(progress=True)
        prepared = open_params_prepared(params, complete=False)
        stored_fp = store.provenance.get(PREPARED_FINGERPRINT)
        fingerprint_ok = stored_fp == prepared.fingerprint()
        print(report)
        if not fingerprint_ok:
            print(
                f"  provenance: built from a different prepared store than {prepared.path} "
                "(fingerprint differs); rebuild with `dtkd-pipeline cache-teacher --overwrite`"
            )
        if (report.bad_shards or report.partial_files) and not repair:
            print(f"  recompute or clean up with `dtkd-pipeline verify-cache {path} --repair`")
        if repair and report.partial_files:
            print(f"removing {len(store.remove_partial_files())} leftover partial write(s)")
        if repair and report.bad_shards:
            print(f"repairing shards {report.bad_shards}")
            _recompute(store, params, report.bad_shards, device)
            report = store.verify(progress=True)
            print(report)
        return report.ok and fingerprint_ok


def _which_stage_builds(path: Path, params: Params) -> str:
    """Advice for a verify-cache path that holds no readable store: prepare-data when ``path`` is
    the prepared store, else the two stores verify-cache checks, with their paths."""
    prepared = params.data.prepared_dir / TRAIN_STORE
    if path.resolve() == prepared.resolve():
        return f"it is the prepared store data.prepared_dir/{TRAIN_STORE}; {RUN_PREPARE_DATA_FIRST}"
    return (
        "verify-cache checks the store that `dtkd-pipeline cache-teacher` writes "
        f"(teacher.store, here {params.teacher.store}) or the prepared store (here {prepared}); "
        "build it first or pass its path"
    )


def _verify_prepared(store: TileStore, repair: bool) -> bool:
    """A prepared store is checked the same way; it is rebuilt by prepare-data, not repaired."""
    if repair:
        raise CacheError(
            f"{store.path} is a prepared store: --repair recomputes teacher shards only; "
            "rebuild it with `dtkd-pipeline prepare-data`"
        )
    report = store.verify(progress=True)
    print(report)
    if not report.ok:
        print("  rebuild it with `dtkd-pipeline prepare-data` (then rebuild the teacher cache)")
    return report.ok
