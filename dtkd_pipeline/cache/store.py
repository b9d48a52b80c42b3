"""Zarr v3 tile store: sharded, checksummed per-tile arrays with per-shard completion records.

On-disk layout of a store directory:

    zarr.json           group; attributes {"dtkd_layout": ..., "provenance": ...}
    <array>/zarr.json   one array per `ArraySpec` (e.g. lr, hr, teacher, dwt/LL2)
    <array>/c/<k>/0/... shard k of that array (tiles [k*S, min((k+1)*S, N)))
    _done/<k>.json      completion record of shard k: tile range and sha256 of each array's bytes
    .lock               coordinator lock (see lock.py)

Guarantees:

- Creation is atomic: the skeleton (metadata, attributes, lock) is built in `<path>.tmp-<pid>` and
  renamed into place, so a crash never leaves a half-initialised store at `<path>`. Of two runs
  creating a store at one path at once, the later rename fails and leaves the other's store be.
- A shard is written whole by one writer, and its completion record is written (atomically, by
  rename) only after all of its arrays. Reads of a shard without a record raise
  `IncompleteShardError`, so an unwritten tile never reads back as zeros.
- Corruption is caught twice: a crc32c codec on every tile chunk (zarr raises on read) and the
  sha256 in the completion record (`verify()`), which also catches bytes that decode cleanly.

Concurrency: writers of *different* shards may run in different processes (dask workers); each opens
the store with `TileStore.open(path, mode="r+")` and does not take the lock. The coordinator process
that creates or resumes the run holds the lock (`create` / `open_or_create`), or takes it before
its slow preparations with `lock_if_present` and passes it on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import zarr
from tqdm.auto import tqdm

from dtkd_pipeline.atomic import (
    delete_trash,
    flush_to_disk,
    naming_write_errors,
    pid_temporary,
    pid_trash,
    remove_dead_siblings,
    replacing,
)
from dtkd_pipeline.progress import hidden_unless

from .errors import (
    CacheError,
    CorruptShardError,
    IncompleteShardError,
    NotAStoreError,
    StoreCreatedMeanwhileError,
    StoreLayoutError,
)
from .layout import FORMAT_VERSION, KIND_PREPARED, KIND_TEACHER, ArraySpec, StoreLayout
from .lock import LOCK_NAME, StoreLock
from .provenance import ABSENT, SOURCES, diff_fields, fingerprint_of, mismatch_error, to_json_value

# What zarr raises for a shard it cannot decode: crc32c mismatch, truncated or missing files.
_DECODE_ERRORS = (ValueError, OSError, KeyError)

LAYOUT_ATTR = "dtkd_layout"
PROVENANCE_ATTR = "provenance"
DONE_DIR = "_done"
_BUILDERS = {  # how to rebuild a store of each kind from scratch
    KIND_PREPARED: "`dtkd-pipeline prepare-data`",
    KIND_TEACHER: "`dtkd-pipeline cache-teacher --overwrite`",
}
_PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes `<key>.<uuid>.partial` then renames


def content_checksum(tiles: np.ndarray) -> str:
    """sha256 of the C-order bytes of an array, as stored (dtype and shape fixed by the layout)."""
    return hashlib.sha256(np.ascontiguousarray(tiles).data).hexdigest()


@dataclass
class VerifyReport:
    """Result of `TileStore.verify`: shards to recompute, by index."""

    path: Path
    n_shards: int
    missing: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)
    partial_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    @property
    def bad_shards(self) -> list[int]:
        return sorted(set(self.missing) | set(self.corrupt))

    def __str__(self) -> str:
        complete = self.n_shards - len(self.bad_shards)
        lines = [f"{self.path}: {complete}/{self.n_shards} shards complete and intact"]
        if self.missing:
            lines.append(f"  missing shards: {self.missing}")
        for shard, reason in sorted(self.corrupt.items()):
            lines.append(f"  corrupt shard {shard}: {reason}")
        if self.partial_files:
            lines.append(f"  leftover partial writes: {len(self.partial_files)} file(s)")
        return "\n".join(lines)


class TileStore:
    """A tile store on the local filesystem. Build with `create`, `open` or `open_or_create`."""

    def __init__(
        self,
        path: Path,
        group: zarr.Group,
        layout: StoreLayout,
        provenance: dict[str, Any],
        writable: bool,
        lock: StoreLock | None,
    ) -> None:
        self.path = path
        self.layout = layout
        self._provenance = provenance
        self._group = group
        self._writable = writable
        self._lock = lock
        self._arrays: dict[str, zarr.Array] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        path: Path | str,
        layout: StoreLayout,
        provenance: Mapping[str, Any],
        *,
        overwrite: bool = False,
        held_lock: StoreLock | None = None,
    ) -> TileStore:
        """Create an empty store (all shards missing), holding its lock; returns it writable.

        ``held_lock``: the lock of the store at ``path`` (see `lock_if_present`), which the
        caller holds and releases; overwriting then takes no lock of its own.
        """
        path = Path(path)
        provenance_json = to_json_value(dict(provenance))
        remove_dead_siblings(path)
        old_lock: StoreLock | None = None
        if path.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{path} already exists: rerun with --overwrite or delete {path}"
                )
            _refuse_unless_store(path)
            # Never delete a store another run is filling.
            old_lock = held_lock or StoreLock(path).acquire()
        tmp = pid_temporary(path)  # a killed creator's is removed by remove_dead_siblings
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            lock = StoreLock(tmp).acquire()
        except BaseException:  # a full disk fails the lock's PID write: leave no skeleton
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        trash: Path | None = None  # where the store being overwritten went
        try:
            with naming_write_errors(path):  # zarr's failed writes name no file
                _build_skeleton(tmp, layout, provenance_json)
            if old_lock is not None:
                os.rename(path, pid_trash(path))
                trash = pid_trash(path)
            _move_into_place(tmp, path)
            # The open descriptor follows the renamed inode, so the lock is held throughout.
            lock.path = path / LOCK_NAME
            if trash is not None:
                delete_trash(trash)  # the new store is in place: a failure here only warns
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            if trash is not None:
                _put_back(trash, path)
            raise
        finally:
            if old_lock is not None and old_lock is not held_lock:
                old_lock.release()
        return cls._open(path, mode="r+", lock=lock)

    @staticmethod
    @contextlib.contextmanager
    def lock_if_present(path: Path | str) -> Iterator[StoreLock | None]:
        """Hold the coordinator lock of the store at ``path`` for the block (None when there is
        no store there yet).

        For a run that does slow work (building a teacher) before `open_or_create`: a second
        run on the store is refused at once, not after its own slow work. Pass the lock on as
        ``held_lock``.
        """
        if not _is_tile_store(Path(path)):  # nothing to lock, or not ours to put a lock file in
            yield None
            return
        with StoreLock(path) as lock:
            yield lock

    @classmethod
    def open(
        cls, path: Path | str, mode: Literal["r", "r+"] = "r", *, lock: bool = False
    ) -> TileStore:
        """Open an existing store. `lock=True` takes the coordinator lock (fails fast if held)."""
        path = Path(path)
        cls.require_store(path)  # before the lock, which would leave a file in any folder
        if lock:
            cls._open(path, mode="r", lock=None)  # so would a foreign or damaged Zarr group
        store_lock = StoreLock(path).acquire() if lock else None
        try:
            return cls._open(path, mode=mode, lock=store_lock)
        except BaseException:
            if store_lock is not None:
                store_lock.release()
            raise

    @classmethod
    def open_or_create(
        cls,
        path: Path | str,
        layout: StoreLayout,
        provenance: Mapping[str, Any],
        *,
        overwrite: bool = False,
        held_lock: StoreLock | None = None,
    ) -> TileStore:
        """Resume a store built with identical layout and provenance, or create it.

        A store built with other settings raises `ProvenanceMismatchError` naming every differing
        field; `overwrite=True` deletes it and starts afresh. ``held_lock``: the store's lock,
        already held by the caller (see `lock_if_present`), who also releases it.
        """
        path = Path(path)
        if overwrite or not path.exists() or _is_empty_folder(path):
            return cls.create(
                path, layout, provenance, overwrite=path.exists(), held_lock=held_lock
            )
        store = cls.open(path, mode="r+", lock=held_lock is None)
        with store.closed_on_error():
            # Provenance first: it names the setting (teacher.dwt, say) behind a layout change.
            store.check_provenance(provenance, exact=True)
            store.check_layout(layout)
        return store

    @contextlib.contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Release the store (and its lock) when a check in the block fails."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    @staticmethod
    def require_store(path: Path) -> None:
        """Raise `NotAStoreError` unless `path` is a folder with a zarr.json."""
        if not path.exists():
            raise NotAStoreError(f"{path} does not exist")
        if not path.is_dir():
            raise NotAStoreError(f"{path} is a file, not a tile store")
        if not (path / "zarr.json").is_file():
            raise NotAStoreError(f"{path} is not a tile store (no zarr.json)")

    @classmethod
    def check_target(cls, path: Path, overwrite: bool) -> None:
        """Refuse, before any work, a location `open_or_create` would refuse: something that is
        not a store (to resume), or not a store nor empty (to overwrite)."""
        if not (path.exists() or path.is_symlink()) or _is_empty_folder(path):
            return
        if overwrite:
            _refuse_unless_store(path)
        else:
            cls.require_store(path)

    @classmethod
    def _open(cls, path: Path, mode: str, lock: StoreLock | None) -> TileStore:
        cls.require_store(path)
        try:
            group = zarr.open_group(path, mode=mode)
            attrs = group.attrs.asdict()
        except (ValueError, TypeError, KeyError) as error:  # unparsable or foreign metadata
            raise StoreLayoutError(
                f"{path}/zarr.json cannot be read as a Zarr v3 group ({error}); the store is "
                f"damaged: rebuild it with --overwrite or delete {path}"
            ) from None
        if LAYOUT_ATTR not in attrs:
            raise StoreLayoutError(
                f"{path} is a Zarr group but not a dtkd tile store (no {LAYOUT_ATTR!r} attribute)"
            )
        raw_layout, provenance = attrs[LAYOUT_ATTR], attrs.get(PROVENANCE_ATTR, {})
        version = raw_layout.get("format_version") if isinstance(raw_layout, Mapping) else None
        # The version is checked before the rest is parsed: another format may lack our keys.
        if isinstance(version, int) and version != FORMAT_VERSION:
            raise StoreLayoutError(
                f"{path} has store format {version}, this code reads format "
                f"{FORMAT_VERSION}: rerun with --overwrite or delete {path}"
            )
        try:
            if not isinstance(provenance, Mapping):
                raise TypeError(
                    f"{PROVENANCE_ATTR!r} is {type(provenance).__name__}, not a mapping"
                )
            layout = StoreLayout.from_json(raw_layout)
        except (KeyError, TypeError, ValueError) as error:
            raise StoreLayoutError(
                f"{path}/zarr.json has a damaged {LAYOUT_ATTR!r} or {PROVENANCE_ATTR!r} attribute "
                f"({type(error).__name__}: {error}); rebuild it with --overwrite or delete {path}"
            ) from None
        return cls(path, group, layout, dict(provenance), mode == "r+", lock)

    def close(self) -> None:
        """Release the lock if held; the store stays readable through this object."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> TileStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TileStore({str(self.path)!r}, kind={self.layout.kind!r}, "
            f"n_tiles={self.n_tiles}, shards={self.n_shards}x{self.layout.shard_size})"
        )

    # ------------------------------------------------------------------ description

    @property
    def provenance(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._provenance))

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def n_tiles(self) -> int:
        return self.layout.n_tiles

    @property
    def n_shards(self) -> int:
        return self.layout.n_shards

    @property
    def names(self) -> list[str]:
        return self.layout.names

    def check_provenance(
        self, expected: Mapping[str, Any], *, exact: bool = False, rebuild: str | None = None
    ) -> None:
        """Raise `ProvenanceMismatchError` naming each field of `expected` that differs.

        `exact=True` also reports fields stored but not requested (used when resuming). `rebuild`
        replaces the default advice (rerun with --overwrite) for callers that only read the store.
        """
        requested = to_json_value(dict(expected))
        differences = diff_fields(self._provenance, requested)
        if exact:
            differences += [
                (key, self._provenance[key], ABSENT)
                for key in self._provenance
                if key not in requested
            ]
        if differences:
            raise mismatch_error(self.path, f"{self.kind} store", differences, rebuild)

    def check_layout(self, layout: StoreLayout) -> None:
        differences = diff_fields(self.layout.to_json(), layout.to_json(), "layout")
        if differences:
            raise mismatch_error(self.path, f"{self.kind} store", differences)

    def fingerprint(self) -> str:
        """Content fingerprint: layout + provenance `sources` + every shard's checksums.

        Requires a complete store (a fingerprint of a partial store would change as it fills).
        """
        missing = self.missing_shards()
        if missing:
            raise IncompleteShardError(
                f"{self.path}: cannot fingerprint an incomplete store; "
                f"{len(missing)} shard(s) missing, first {missing[:8]}"
            )
        checksums = []
        for shard_index in range(self.n_shards):
            try:
                checksums.append(self._read_record(shard_index)["sha256"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise CorruptShardError(
                    f"{self._record_path(shard_index)}: unreadable completion record "
                    f"({type(error).__name__}: {error}); check the store with `dtkd-pipeline "
                    f"verify-cache {self.path}`"
                ) from None
        return fingerprint_of(self.layout.to_json(), self._provenance.get(SOURCES), checksums)

    # ------------------------------------------------------------------ completion state

    def _record_path(self, shard_index: int) -> Path:
        return self.path / DONE_DIR / f"{shard_index}.json"

    def _read_record(self, shard_index: int) -> dict[str, Any]:
        return json.loads(self._record_path(shard_index).read_text())

    def _absent_file(self, shard_index: int) -> str | None:
        """The first of the shard's array files that is gone or empty, or None when all hold data.

        zarr reads an absent chunk file, and an empty one, as its fill value (zeros), so a
        recorded shard whose file was deleted or emptied must count as missing, not be read as
        black tiles.
        """
        for name in self.names:
            try:
                path = self.shard_file(name, shard_index)
            except StoreLayoutError:  # the array folder itself is gone or damaged
                return f"{name}: array folder {self.path / name} unreadable"
            if not path.is_file():
                return f"{name}: shard file {path.relative_to(self.path)} missing"
            if path.stat().st_size == 0:
                return f"{name}: shard file {path.relative_to(self.path)} is empty (0 bytes)"
        return None

    def _files_present(self, shard_index: int) -> bool:
        return self._absent_file(shard_index) is None

    def is_complete(self, shard_index: int) -> bool:
        """Whether the shard has its completion record and every array's file."""
        self.layout.shard_range(shard_index)  # range check
        return self._record_path(shard_index).is_file() and self._files_present(shard_index)

    def completed_shards(self) -> list[int]:
        done_dir = self.path / DONE_DIR
        found = {int(p.stem) for p in done_dir.glob("*.json") if p.stem.isdigit()}
        return sorted(k for k in found if k < self.n_shards and self._files_present(k))

    def missing_shards(self) -> list[int]:
        completed = set(self.completed_shards())
        return [k for k in range(self.n_shards) if k not in completed]

    def require_kind(self, kind: str) -> None:
        """Refuse a store of another kind (e.g. a prepared store passed as the teacher cache)."""
        if self.kind != kind:
            raise StoreLayoutError(f"{self.path} is a {self.kind!r} store, expected {kind!r}")

    def require_complete(self, producer: str) -> None:
        """Refuse a store with missing shards, naming the command that finishes it."""
        missing = self.missing_shards()
        if missing:
            raise StoreLayoutError(
                f"{self.path} is incomplete: {len(missing)} of {self.n_shards} shards missing "
                f"(first {missing[:8]}); run `dtkd-pipeline {producer}` to finish it"
            )

    def _require_complete(self, shard_index: int) -> None:
        if not self.is_complete(shard_index):
            start, stop = self.layout.shard_range(shard_index)
            raise IncompleteShardError(
                f"shard {shard_index} (tiles {start}..{stop - 1}) of {self.path} is not "
                "complete: it was never written, its writer failed, it was invalidated, or a "
                "file of it was deleted. "
                "Resume the stage that fills this store, or run "
                f"`dtkd-pipeline verify-cache {self.path} --repair`."
            )

    # ------------------------------------------------------------------ writing

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self.layout.spec(name)  # clear KeyError for unknown names
            try:
                array = self._group[name]
            except (KeyError, ValueError, TypeError, OSError) as error:
                command = _BUILDERS.get(self.kind, "the command that built it")
                raise StoreLayoutError(
                    f"{self.path}/{name}: the array is missing or its zarr.json is damaged "
                    f"({type(error).__name__}: {error}); shards cannot be repaired without it: "
                    f"rebuild the store with {command}"
                ) from None
            if self._writable:
                # Runtime config is not persisted, so it is set again on every open: an all-zero
                # tile must still be stored, or it would be indistinguishable from a missing one.
                array = array.with_config({"write_empty_chunks": True})
            self._arrays[name] = array
        return self._arrays[name]

    def write_shard(self, shard_index: int, tiles: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Write every array of shard `shard_index` whole, then its completion record.

        `tiles[name]` has shape (stop - start, *tile_shape). Rewriting a complete shard first
        withdraws its record, so a crash mid-rewrite leaves it missing, never stale.
        Returns the content checksums recorded.
        """
        if not self._writable:
            raise PermissionError(f"{self.path} was opened read-only; open it with mode='r+'")
        start, stop = self.layout.shard_range(shard_index)
        unknown = sorted(set(tiles) - set(self.names))
        absent = sorted(set(self.names) - set(tiles))
        if unknown or absent:
            raise ValueError(
                f"write_shard({shard_index}) needs exactly the arrays {self.names}; "
                f"missing {absent}, unknown {unknown}"
            )
        prepared = {
            spec.name: _conform(spec, tiles[spec.name], stop - start, shard_index)
            for spec in self.layout.arrays
        }
        self._record_path(shard_index).unlink(missing_ok=True)
        for name, data in prepared.items():
            with naming_write_errors(self.shard_file(name, shard_index)):  # zarr names none
                self._array(name)[start:stop] = data
        # On disk before the record that vouches for them: after a power loss a recorded shard
        # must not turn out empty.
        flush_to_disk(*(self.shard_file(name, shard_index) for name in prepared))
        checksums = {name: content_checksum(data) for name, data in prepared.items()}
        record = {"shard": shard_index, "start": start, "stop": stop, "sha256": checksums}
        _write_json_atomic(self._record_path(shard_index), record)
        return checksums

    def check_arrays(self) -> None:
        """Raise StoreLayoutError, with the rebuild command, when an array cannot be opened."""
        for name in self.names:
            self._array(name)

    def invalidate_shard(self, shard_index: int) -> None:
        """Withdraw a shard's completion record, then delete its data, so it is recomputed."""
        if not self._writable:
            raise PermissionError(f"{self.path} was opened read-only; open it with mode='r+'")
        self.layout.shard_range(shard_index)
        self.check_arrays()  # before anything is deleted
        files = [self.shard_file(name, shard_index) for name in self.names]
        self._record_path(shard_index).unlink(missing_ok=True)
        for file in files:
            file.unlink(missing_ok=True)

    def shard_file(self, name: str, shard_index: int) -> Path:
        """Path of the file holding shard `shard_index` of array `name` (may not exist yet)."""
        spec = self.layout.spec(name)
        coords = (shard_index,) + (0,) * len(spec.tile_shape)
        key = self._array(name).metadata.encode_chunk_key(coords)
        return self.path / name / key

    def remove_partial_files(self) -> list[Path]:
        """Delete leftovers of interrupted zarr writes (they would pollute DVC directory hashes)."""
        leftovers = sorted(self.path.rglob(f"*{_PARTIAL_SUFFIX}"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers

    # ------------------------------------------------------------------ reading

    def read_shard(
        self, shard_index: int, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """All tiles of a complete shard, one read per array: {name: (stop-start, *tile_shape)}."""
        self._require_complete(shard_index)
        start, stop = self.layout.shard_range(shard_index)
        out = {}
        for name in names or self.names:
            try:
                out[name] = self._array(name)[start:stop]
            except _DECODE_ERRORS as error:
                raise self._corrupt(name, shard_index, error) from None
        return out

    def read_tiles(
        self, indices: Iterable[int], names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Tiles at arbitrary indices, stacked in the given order; every shard must be complete."""
        index_list = [int(i) for i in indices]
        for shard_index in sorted({self.layout.shard_of(i) for i in index_list}):
            self._require_complete(shard_index)
        out: dict[str, np.ndarray] = {}
        for name in names or self.names:
            spec = self.layout.spec(name)
            array = self._array(name)
            # Per-tile reads: batched fancy selections on sharded arrays are ~10x slower in 3.1.
            stacked = np.empty((len(index_list), *spec.tile_shape), dtype=spec.dtype)
            for row, index in enumerate(index_list):
                try:
                    stacked[row] = array[index]
                except _DECODE_ERRORS as error:
                    raise self._corrupt(name, self.layout.shard_of(index), error) from None
            out[name] = stacked
        return out

    def _corrupt(self, name: str, shard_index: int, error: Exception) -> CorruptShardError:
        """A failed decode of a complete shard, as an error that says how to repair it."""
        return CorruptShardError(
            f"{self.path}: shard {shard_index} of {name!r} is recorded complete but cannot "
            f"be decoded ({type(error).__name__}: {error}). Check the whole store with "
            f"`dtkd-pipeline verify-cache {self.path}`; `--repair` recomputes bad teacher "
            "shards (a prepared store is rebuilt with `dtkd-pipeline prepare-data`)"
        )

    def read_tile(self, index: int, name: str) -> np.ndarray:
        return self.read_tiles([index], [name])[name][0]

    # ------------------------------------------------------------------ verification

    def verify(
        self, shards: Iterable[int] | None = None, *, progress: bool = False
    ) -> VerifyReport:
        """Decode every complete shard and compare with its recorded checksums.

        ``progress`` shows a bar over the shards: a real-sized store takes minutes to decode.
        """
        report = VerifyReport(self.path, self.n_shards)
        chosen = list(shards) if shards is not None else list(range(self.n_shards))
        bar = tqdm(chosen, desc=f"verify {self.path.name}", unit="shard", **hidden_unless(progress))
        for shard_index in bar:
            self.layout.shard_range(shard_index)  # range check
            if not self._record_path(shard_index).is_file():
                report.missing.append(shard_index)
                continue
            problem = self._absent_file(shard_index) or self._shard_problem(shard_index)
            if problem is not None:
                report.corrupt[shard_index] = problem
        report.partial_files = [
            str(p.relative_to(self.path)) for p in self.path.rglob(f"*{_PARTIAL_SUFFIX}")
        ]
        return report

    def _shard_problem(self, shard_index: int) -> str | None:
        start, stop = self.layout.shard_range(shard_index)
        try:
            record = self._read_record(shard_index)
            recorded = record["sha256"]
            if (record["start"], record["stop"]) != (start, stop):
                return f"completion record covers tiles {record['start']}..{record['stop']}"
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"unreadable completion record ({error})"
        for name in self.names:
            try:
                data = self._array(name)[start:stop]
            except ValueError as error:  # zarr's crc32c codec raises ValueError on mismatch
                return f"{name}: codec checksum failed ({error})"
            except (OSError, KeyError, StoreLayoutError) as error:  # a file or array is gone
                return f"{name}: unreadable ({type(error).__name__}: {error})"
            if content_checksum(data) != recorded.get(name):
                return f"{name}: content checksum differs from the completion record"
        return None


# ---------------------------------------------------------------------- helpers


def _build_skeleton(root: Path, layout: StoreLayout, provenance: dict[str, Any]) -> None:
    group = zarr.create_group(
        root, attributes={LAYOUT_ATTR: layout.to_json(), PROVENANCE_ATTR: provenance}
    )
    for spec in layout.arrays:
        group.create_array(
            spec.name,
            shape=(layout.n_tiles, *spec.tile_shape),
            dtype=spec.dtype,
            chunks=(1, *spec.tile_shape),
            shards=(layout.shard_size, *spec.tile_shape),
            compressors=layout.compression.codecs(),
            fill_value=0,
            config={"write_empty_chunks": True},
        )
    (root / DONE_DIR).mkdir()


def _conform(spec: ArraySpec, data: np.ndarray, n_rows: int, shard_index: int) -> np.ndarray:
    array = np.asarray(data)
    expected_shape = (n_rows, *spec.tile_shape)
    if array.shape != expected_shape:
        raise ValueError(
            f"shard {shard_index} of {spec.name!r}: expected shape {expected_shape}, "
            f"got {array.shape}"
        )
    target = np.dtype(spec.dtype)
    if array.dtype != target:
        # Floats may be narrowed (float32 subbands -> float16); integers must match exactly,
        # since a silent wrap-around of pixel values would be cached for good.
        if not (array.dtype.kind == "f" and target.kind == "f"):
            raise TypeError(
                f"shard {shard_index} of {spec.name!r}: expected dtype {target}, got {array.dtype}"
            )
        array = array.astype(target)
    return np.ascontiguousarray(array)


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(exist_ok=True)  # a deleted _done/ folder: every shard counts as missing
    # Named like zarr's own interrupted writes, so a killed writer's leftover is reported by
    # verify and removed with them.
    partial = path.with_name(f"{path.name}.{os.getpid()}{_PARTIAL_SUFFIX}")
    with replacing(path, durable=True, temporary=partial) as tmp:
        tmp.write_text(json.dumps(payload, sort_keys=True))


def _is_empty_folder(path: Path) -> bool:
    """A folder made ahead (mkdir, a mount point) holding nothing yet: as good as no folder."""
    return path.is_dir() and not any(path.iterdir())


def _move_into_place(skeleton: Path, path: Path) -> None:
    """Rename the built ``skeleton`` to ``path``; a store another creator put there meanwhile
    (both found ``path`` free) is left to it, with an error that says so."""
    try:
        os.rename(skeleton, path)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise StoreCreatedMeanwhileError(
            f"{path} was created by another run while this run was creating it; this run "
            "stopped and left it as it is. Wait for that run to finish (or stop it), then run "
            "again: a run without --overwrite resumes from that store"
        ) from None


def _put_back(trash: Path, path: Path) -> None:
    """Return the store being overwritten (moved to ``trash``) to ``path`` after a failed
    creation. Where a store stands at ``path`` now (another run's, or this run's new one), that
    one stays and the old one is deleted: overwriting it was asked for."""
    try:
        os.rename(trash, path)
    except OSError:
        delete_trash(trash)


def _is_tile_store(path: Path) -> bool:
    """Whether ``path`` holds a readable tile store of this pipeline."""
    try:
        TileStore._open(path, mode="r", lock=None)
    except CacheError:
        return False
    return True


def _refuse_unless_store(path: Path) -> None:
    """Overwrite deletes a directory tree: only ever one that is a Zarr store (or empty)."""
    if _is_empty_folder(path) or (path.is_dir() and (path / "zarr.json").is_file()):
        return
    raise NotAStoreError(
        f"refusing to overwrite {path}: it is not a Zarr store; move or delete it by hand"
    )


__all__ = [
    "DONE_DIR",
    "CacheError",
    "TileStore",
    "VerifyReport",
    "content_checksum",
]
