"""Tile store contract: round trips, completion, corruption, provenance, lock, fingerprint."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from dtkd_pipeline.cache import (
    KIND_PREPARED,
    KIND_TEACHER,
    Compression,
    CorruptShardError,
    IncompleteShardError,
    ProvenanceMismatchError,
    StoreCreatedMeanwhileError,
    StoreLayout,
    StoreLayoutError,
    StoreLockedError,
    TileStore,
    prepared_arrays,
    teacher_arrays,
)
from dtkd_pipeline.cache import store as store_module
from tests.pipeline_helpers import bars_made

N_TILES, SHARD, TILE, SCALE = 10, 4, 8, 4  # 3 shards, the last holding 2 tiles
PROVENANCE = {"scale": SCALE, "tile_size": TILE, "sources": [{"name": "a.png", "sha256": "ab"}]}
DWT_SHAPES = {"LL2": (3, 8, 8), "LH1": (3, 16, 16)}


def prepared_layout(codec: str = "zstd") -> StoreLayout:
    return StoreLayout(
        KIND_PREPARED, N_TILES, SHARD, prepared_arrays(TILE, SCALE), Compression(codec, 3)
    )


def prepared_tiles(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hr = TILE * SCALE
    return {
        "lr": rng.integers(0, 256, (N_TILES, 3, TILE, TILE), dtype=np.uint8),
        "hr": rng.integers(0, 256, (N_TILES, 3, hr, hr), dtype=np.uint8),
        "tile_source": rng.integers(0, 5, N_TILES, dtype=np.int32),
        "tile_offset": rng.integers(0, 500, (N_TILES, 2), dtype=np.int32),
    }


def shard_slice(tiles: dict[str, np.ndarray], shard: int) -> dict[str, np.ndarray]:
    start, stop = shard * SHARD, min((shard + 1) * SHARD, N_TILES)
    return {name: data[start:stop] for name, data in tiles.items()}


def filled_prepared(path: Path, seed: int = 0, codec: str = "zstd") -> TileStore:
    store = TileStore.create(path, prepared_layout(codec), PROVENANCE)
    tiles = prepared_tiles(seed)
    for shard in (2, 0, 1):  # order must not matter
        store.write_shard(shard, shard_slice(tiles, shard))
    return store


@pytest.mark.parametrize("codec", ["zstd", "blosc"])
def test_prepared_round_trip_is_bit_identical(tmp_path: Path, codec: str) -> None:
    store = filled_prepared(tmp_path / "train.zarr", codec=codec)
    tiles = prepared_tiles()
    assert store.completed_shards() == [0, 1, 2] and store.missing_shards() == []
    last = store.read_shard(2)
    assert last["hr"].shape == (2, 3, TILE * SCALE, TILE * SCALE)  # partial last shard
    for name, data in tiles.items():
        assert np.array_equal(np.concatenate([store.read_shard(k)[name] for k in range(3)]), data)
    picked = [9, 0, 5, 5]
    got = store.read_tiles(picked)
    for name, data in tiles.items():
        assert got[name].dtype == data.dtype and np.array_equal(got[name], data[picked])
    reopened = TileStore.open(tmp_path / "train.zarr")
    assert reopened.provenance == PROVENANCE and reopened.kind == KIND_PREPARED
    assert np.array_equal(reopened.read_tile(7, "lr"), tiles["lr"][7])


def test_shard_data_reaches_the_disk_before_its_completion_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power loss the record must not be durable while the data it vouches for is not."""
    from dtkd_pipeline import atomic

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    store = TileStore.create(tmp_path / "train.zarr", prepared_layout(), PROVENANCE)
    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    store.write_shard(1, shard_slice(prepared_tiles(), 1))
    done = tmp_path / "train.zarr" / store_module.DONE_DIR
    record = str(done / f"1.json.{os.getpid()}.partial")  # synced under its name before rename
    shard_files = {str(store.shard_file(name, 1)) for name in store.names}
    assert shard_files <= set(synced) and record in synced
    assert max(synced.index(f) for f in shard_files) < synced.index(record)
    assert synced.index(record) < synced.index(str(done))  # the rename too


def test_a_completion_record_is_synced_once_before_its_rename_and_its_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync of the record's content and one of its folder make it durable; no more."""
    from dtkd_pipeline import atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        events.append(f"rename {dst}")
        real_replace(src, dst)

    store = TileStore.create(tmp_path / "train.zarr", prepared_layout(), PROVENANCE)
    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    monkeypatch.setattr(atomic.os, "replace", recording_replace)
    store.write_shard(0, shard_slice(prepared_tiles(), 0))
    done = tmp_path / "train.zarr" / store_module.DONE_DIR
    record_events = [e for e in events if "/0.json" in e or e.endswith(str(done))]
    assert record_events == [
        f"fsync {done}/0.json.{os.getpid()}.partial",
        f"rename {done}/0.json",
        f"fsync {done}",
    ]


def test_teacher_round_trip_with_dwt(tmp_path: Path) -> None:
    layout = StoreLayout(KIND_TEACHER, N_TILES, SHARD, teacher_arrays(TILE * SCALE, DWT_SHAPES))
    store = TileStore.create(tmp_path / "teacher.zarr", layout, {"steps": 15})
    rng = np.random.default_rng(1)
    teacher = rng.integers(0, 256, (N_TILES, 3, TILE * SCALE, TILE * SCALE), dtype=np.uint8)
    bands = {n: rng.normal(size=(N_TILES, *s)).astype(np.float16) for n, s in DWT_SHAPES.items()}
    for shard in range(3):
        start, stop = shard * SHARD, min((shard + 1) * SHARD, N_TILES)
        tiles = {"teacher": teacher[start:stop]}
        tiles |= {f"dwt/{n}": b[start:stop].astype(np.float32) for n, b in bands.items()}
        store.write_shard(shard, tiles)
    assert np.array_equal(
        np.concatenate([store.read_shard(k)["teacher"] for k in range(3)]), teacher
    )
    for name, data in bands.items():
        got = store.read_tiles(range(N_TILES), [f"dwt/{name}"])[f"dwt/{name}"]
        assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), data.view(np.uint16))
    assert isinstance(zarr.open_group(tmp_path / "teacher.zarr", mode="r")["dwt"], zarr.Group)
    # float32 subbands were narrowed to float16: the checksums are of the bytes stored.
    assert store.verify().ok


@pytest.mark.parametrize(("codec", "compressor"), [("zstd", "ZstdCodec"), ("blosc", "BloscCodec")])
def test_arrays_hold_one_tile_per_chunk_and_one_shard_per_file_with_crc32c(
    tmp_path: Path, codec: str, compressor: str
) -> None:
    store = filled_prepared(tmp_path / "p.zarr", codec=codec)
    group = zarr.open_group(store.path, mode="r")
    for spec in store.layout.arrays:
        array = group[spec.name]
        assert array.chunks == (1, *spec.tile_shape)
        assert array.shards == (SHARD, *spec.tile_shape)
        assert array.metadata.zarr_format == 3
        (sharding,) = array.metadata.codecs
        inner = [type(step).__name__ for step in sharding.codecs]
        assert inner[-2:] == [compressor, "Crc32cCodec"], inner  # compressed, then checksummed
    assert sorted(p.name for p in (store.path / "lr" / "c").iterdir()) == ["0", "1", "2"]


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_crash_between_data_and_record_leaves_the_shard_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite: bool
) -> None:
    store = filled_prepared(tmp_path / "p.zarr") if rewrite else None
    store = store or TileStore.create(tmp_path / "p.zarr", prepared_layout(), PROVENANCE)

    def killed_before_the_record(path: Path, payload: dict) -> None:
        assert all(store.shard_file(name, 1).is_file() for name in store.names)  # data first
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_write_json_atomic", killed_before_the_record)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, shard_slice(prepared_tiles(seed=5), 1))
    monkeypatch.undo()
    assert 1 in store.missing_shards()  # never stale (rewrite) and never zeros (first write)
    with pytest.raises(IncompleteShardError, match="shard 1 "):
        store.read_shard(1)


def test_a_rewrite_killed_between_two_arrays_leaves_the_shard_missing_not_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old record goes before the first array is touched: lr new, hr old must not pass."""
    store = filled_prepared(tmp_path / "p.zarr")
    fetched: list[str] = []
    real_array = store._array

    def killed_at_the_second_array(name: str) -> Any:
        fetched.append(name)
        if len(fetched) == 2:
            raise KeyboardInterrupt
        return real_array(name)

    monkeypatch.setattr(store, "_array", killed_at_the_second_array)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, shard_slice(prepared_tiles(seed=5), 1))
    monkeypatch.undo()
    assert 1 in store.missing_shards()


def test_an_all_zero_shard_written_through_a_reopened_store_is_complete(tmp_path: Path) -> None:
    """zarr skips all-zero chunks unless told otherwise, and that setting is not stored: a
    reopened store (resume, dask workers) must set it again or the shard has no file."""
    TileStore.create(tmp_path / "p.zarr", prepared_layout(), PROVENANCE).close()
    reopened = TileStore.open(tmp_path / "p.zarr", mode="r+")
    zeros = {name: np.zeros_like(data) for name, data in shard_slice(prepared_tiles(), 0).items()}
    reopened.write_shard(0, zeros)
    assert 0 not in reopened.missing_shards()
    assert reopened.verify(shards=[0]).ok


def test_an_empty_folder_made_ahead_is_filled_like_a_new_store(tmp_path: Path) -> None:
    (tmp_path / "p.zarr").mkdir()
    TileStore.check_target(tmp_path / "p.zarr", overwrite=False)
    with TileStore.open_or_create(tmp_path / "p.zarr", prepared_layout(), PROVENANCE) as store:
        assert store.missing_shards() == list(range(store.n_shards))


def _write_shard_killed_before_the_record_rename(path: str) -> None:
    real_replace = os.replace

    def killed(src: Any, dst: Any) -> None:
        if str(dst).endswith(".json"):
            os._exit(9)  # as SIGKILL: no cleanup runs
        real_replace(src, dst)

    os.replace = killed  # in this forked child only
    TileStore.open(path, mode="r+").write_shard(0, shard_slice(prepared_tiles(), 0))


def test_a_record_write_killed_before_its_rename_leaves_a_reported_partial_file(
    tmp_path: Path,
) -> None:
    store = TileStore.create(tmp_path / "p.zarr", prepared_layout(), PROVENANCE)
    context = multiprocessing.get_context("fork")
    writer = context.Process(
        target=_write_shard_killed_before_the_record_rename, args=(str(store.path),)
    )
    writer.start()
    writer.join(timeout=60)
    assert writer.exitcode == 9
    leftover = f"_done/0.json.{writer.pid}.partial"
    assert store.verify().partial_files == [leftover]
    assert store.remove_partial_files() == [store.path / leftover]
    assert store.missing_shards() == [0, 1, 2]


def test_incomplete_shard_raises_instead_of_zeros(tmp_path: Path) -> None:
    store = TileStore.create(tmp_path / "s.zarr", prepared_layout(), PROVENANCE)
    tiles = prepared_tiles()
    store.write_shard(0, shard_slice(tiles, 0))
    assert store.missing_shards() == [1, 2]
    with pytest.raises(IncompleteShardError, match=r"shard 1 \(tiles 4\.\.7\)"):
        store.read_tiles([1, 5])
    with pytest.raises(IncompleteShardError, match="shard 2"):
        store.read_shard(2)
    store.invalidate_shard(0)
    with pytest.raises(IncompleteShardError, match="verify-cache"):
        store.read_tile(0, "lr")
    with pytest.raises(IncompleteShardError, match="incomplete store"):
        store.fingerprint()
    report = store.verify()
    assert report.missing == [0, 1, 2] and not report.ok


def test_write_shard_validates_input(tmp_path: Path) -> None:
    store = TileStore.create(tmp_path / "s.zarr", prepared_layout(), PROVENANCE)
    tiles = shard_slice(prepared_tiles(), 2)
    with pytest.raises(ValueError, match="expected shape"):
        store.write_shard(1, tiles)  # shard 1 holds 4 tiles, this slice 2
    with pytest.raises(TypeError, match="expected dtype uint8"):
        store.write_shard(2, tiles | {"lr": tiles["lr"].astype(np.int64)})
    with pytest.raises(ValueError, match="missing"):
        store.write_shard(2, {"lr": tiles["lr"]})
    with pytest.raises(PermissionError, match="opened read-only"):
        TileStore.open(tmp_path / "s.zarr").write_shard(2, tiles)
    assert store.completed_shards() == []


def test_verify_hides_its_shard_bar_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Library callers (the loader, tests) check stores quietly; verify-cache asks for the bar."""
    store = filled_prepared(tmp_path / "train.zarr")
    bars = bars_made(monkeypatch, store_module)
    assert store.verify().ok and store.verify(shards=[0, 2], progress=True).ok
    assert [(bar.total, bar.unit, bar.shown) for bar in bars] == [
        (3, "shard", False),
        (2, "shard", True),
    ]


def test_verify_finds_flipped_bytes_and_rewrite_restores_them(tmp_path: Path) -> None:
    store = filled_prepared(tmp_path / "s.zarr")
    shard_file = store.shard_file("hr", 1)
    assert shard_file.relative_to(store.path).parts[:2] == ("hr", "c")
    original = shard_file.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 3] ^= 0xFF
    shard_file.write_bytes(bytes(damaged))

    report = store.verify()
    assert report.missing == [] and list(report.corrupt) == [1]
    assert "hr" in report.corrupt[1] and "checksum" in report.corrupt[1]
    assert "corrupt shard 1" in str(report)

    store.invalidate_shard(1)
    assert store.missing_shards() == [1] and not shard_file.exists()
    store.write_shard(1, shard_slice(prepared_tiles(), 1))
    assert store.verify().ok
    assert shard_file.read_bytes() == original


def test_damaged_files_are_named_with_the_command_that_checks_them(tmp_path: Path) -> None:
    store = filled_prepared(tmp_path / "s.zarr")
    shard_file = store.shard_file("hr", 1)
    shard_file.write_bytes(shard_file.read_bytes()[:100])  # truncated by a full disk, say
    for read in (lambda: store.read_shard(1), lambda: store.read_tiles([5], ["hr"])):
        with pytest.raises(CorruptShardError, match=r"shard 1 of 'hr' .* verify-cache"):
            read()
    assert store.read_shard(0)["hr"].shape[0] == SHARD  # the other shards still read

    shutil.rmtree(store.path / "lr")  # a whole array folder gone
    reopened = TileStore.open(store.path, mode="r+")
    report = reopened.verify()
    assert set(report.corrupt) == {0, 1, 2} and "lr: array folder" in report.corrupt[0]
    with pytest.raises(StoreLayoutError, match=r"/lr: the array is missing .* prepare-data"):
        reopened.invalidate_shard(1)  # a repair cannot restore it shard by shard
    assert reopened.verify().missing == []  # nothing was withdrawn before the refusal
    reopened.close()

    (store.path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreLayoutError, match=r"zarr\.json cannot be read .* --overwrite"):
        TileStore.open(store.path)
    with pytest.raises(StoreLayoutError, match="does not exist"):
        TileStore.open(tmp_path / "nowhere.zarr")


def _edit_store_attributes(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update({store_module.LAYOUT_ATTR: "v1"}), "damaged 'dtkd_layout'"),
        (lambda a: a[store_module.LAYOUT_ATTR].pop("compression"), "damaged .*compression"),
        (lambda a: a.update({store_module.PROVENANCE_ATTR: None}), "damaged .*not a mapping"),
        (lambda a: a.update({store_module.LAYOUT_ATTR: {"format_version": 0}}), "store format 0"),
    ],
    ids=["layout-not-a-mapping", "layout-key-missing", "provenance-null", "older-format"],
)
def test_damaged_or_foreign_store_metadata_is_a_store_error_naming_the_fix(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    """A CacheError (one-line CLI message, and what cache-teacher's rebuild_on_change catches),
    never a bare KeyError/TypeError from parsing; an older format is named before parsing it."""
    store = filled_prepared(tmp_path / "s.zarr")
    _edit_store_attributes(store.path, edit)
    with pytest.raises(StoreLayoutError, match=message) as error:
        TileStore.open(store.path)
    assert "--overwrite" in str(error.value)


def test_a_foreign_zarr_group_is_refused_without_a_lock_file_left_in_it(tmp_path: Path) -> None:
    """verify-cache --repair and cache-teacher lock a store before writing; pointed at someone
    else's Zarr group by mistake they refused it, but left a .lock file inside it."""
    foreign = tmp_path / "theirs.zarr"
    zarr.open_group(foreign, mode="w")
    before = sorted(p.name for p in foreign.iterdir())
    with pytest.raises(StoreLayoutError, match="not a dtkd tile store"):
        TileStore.open(foreign, mode="r+", lock=True)
    with TileStore.lock_if_present(foreign) as lock:
        assert lock is None
    assert sorted(p.name for p in foreign.iterdir()) == before


def test_a_deleted_shard_file_is_a_missing_shard_never_zeros(tmp_path: Path) -> None:
    """zarr reads an absent chunk file as zeros: a complete shard whose file is gone must be
    refused on read, listed as missing (so the filling stage recomputes it) and named by verify."""
    store = filled_prepared(tmp_path / "s.zarr")
    store.shard_file("hr", 1).unlink()
    with pytest.raises(IncompleteShardError, match=r"shard 1 .* a file of it was deleted"):
        store.read_shard(1)
    with pytest.raises(IncompleteShardError, match="shard 1"):
        store.read_tiles([5], ["lr"])  # even an array whose own file is intact
    assert store.missing_shards() == [1] and store.completed_shards() == [0, 2]
    report = TileStore.open(store.path).verify()
    assert report.missing == [] and "hr: shard file hr/c/1/0/0/0 missing" in report.corrupt[1]


def test_verify_catches_content_that_decodes_cleanly(tmp_path: Path) -> None:
    store = filled_prepared(tmp_path / "s.zarr")
    # A writer that bypasses write_shard: valid chunks (codec checksums pass), wrong content.
    raw = zarr.open_group(tmp_path / "s.zarr", mode="r+")["lr"]
    raw[0] = np.zeros((3, TILE, TILE), np.uint8)
    report = store.verify()
    assert list(report.corrupt) == [0] and "content checksum" in report.corrupt[0]


def test_provenance_mismatch_names_each_field(tmp_path: Path) -> None:
    path = tmp_path / "teacher.zarr"
    layout = StoreLayout(KIND_TEACHER, N_TILES, SHARD, teacher_arrays(TILE * SCALE))
    stored = {"teacher": "resshift-v3", "steps": 15, "seed": 7, "precision": "fp32"}
    TileStore.create(path, layout, stored).close()
    store = TileStore.open(path)
    store.check_provenance({"steps": 15, "seed": 7})  # a matching subset passes
    with pytest.raises(ProvenanceMismatchError) as caught:
        store.check_provenance({"steps": 4, "seed": 7, "precision": "bf16", "rng": "per-sample"})
    message = str(caught.value)
    assert "steps: stored 15, requested 4" in message
    assert "precision: stored 'fp32', requested 'bf16'" in message
    assert "rng: stored <absent>, requested 'per-sample'" in message
    assert "seed" not in message
    assert f"--overwrite or delete {path}" in message


def test_open_or_create_resumes_refuses_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    tiles = prepared_tiles()
    with TileStore.open_or_create(path, prepared_layout(), PROVENANCE) as store:
        store.write_shard(0, shard_slice(tiles, 0))
    with TileStore.open_or_create(path, prepared_layout(), PROVENANCE) as resumed:
        assert resumed.completed_shards() == [0]  # resume keeps finished work
    changed = PROVENANCE | {"scale": 2}
    with pytest.raises(ProvenanceMismatchError, match="scale: stored 4, requested 2"):
        TileStore.open_or_create(path, prepared_layout(), changed)
    with pytest.raises(ProvenanceMismatchError, match=r"layout\.compression\.codec"):
        TileStore.open_or_create(path, prepared_layout("blosc"), PROVENANCE)
    with TileStore.open_or_create(path, prepared_layout(), changed, overwrite=True) as fresh:
        assert fresh.completed_shards() == [] and fresh.provenance["scale"] == 2
    with pytest.raises(FileExistsError, match="--overwrite"):
        TileStore.create(path, prepared_layout(), PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no tmp/trash left


def test_create_removes_a_killed_creators_temporaries_but_not_a_live_ones(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    for kind in ("tmp", "trash"):  # what SIGKILL during create leaves behind
        (tmp_path / f"s.zarr.{kind}-{int(dead.stdout)}" / "lr").mkdir(parents=True)
    alive = tmp_path / f"s.zarr.tmp-{os.getppid()}"  # another running creator's: left alone
    alive.mkdir()
    TileStore.create(path, prepared_layout(), PROVENANCE).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.zarr", alive.name])


def test_reopening_without_a_stored_field_is_refused_by_name(tmp_path: Path) -> None:
    """Resuming is exact: a field the store recorded but the caller no longer sends is a change."""
    path = tmp_path / "s.zarr"
    TileStore.create(path, prepared_layout(), PROVENANCE).close()
    without_scale = {key: value for key, value in PROVENANCE.items() if key != "scale"}
    with pytest.raises(ProvenanceMismatchError) as caught:
        TileStore.open_or_create(path, prepared_layout(), without_scale)
    message = str(caught.value)
    assert "scale: stored 4, requested <absent>" in message
    assert "tile_size" not in message and "sources" not in message
    store = TileStore.open(path)
    store.check_provenance(without_scale)  # a subset passes when exactness is not asked for
    with pytest.raises(ProvenanceMismatchError, match="scale: stored 4, requested <absent>"):
        store.check_provenance(without_scale, exact=True)
    TileStore.open(path, mode="r+", lock=True).close()  # the refused open released its lock


def test_failed_creation_leaves_nothing(tmp_path: Path) -> None:
    bad = StoreLayout(
        KIND_PREPARED, N_TILES, SHARD, prepared_arrays(TILE, SCALE), Compression("lz9")
    )
    with pytest.raises(ValueError, match="unknown compressor"):
        TileStore.create(tmp_path / "s.zarr", bad, PROVENANCE)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(StoreLayoutError, match="refusing to overwrite"):
        TileStore.create(tmp_path / "notes", prepared_layout(), PROVENANCE, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").exists()


def test_second_process_fails_fast_on_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    holder = TileStore.create(path, prepared_layout(), PROVENANCE)  # holds the lock
    script = (
        "import sys\n"
        "from dtkd_pipeline.cache import TileStore, StoreLockedError\n"
        "try:\n"
        f"    TileStore.open({str(path)!r}, mode='r+', lock=True)\n"
        "except StoreLockedError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    # A lock that waited instead of failing would hang here until the timeout error.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert f"PID {os.getpid()}" in result.stdout and str(path) in result.stdout
    with pytest.raises(StoreLockedError):  # flock is per open file, so this process too
        TileStore.open(path, mode="r+", lock=True)
    assert TileStore.open(path).missing_shards() == [0, 1, 2]  # readers take no lock
    holder.close()
    TileStore.open(path, mode="r+", lock=True).close()


def test_lock_released_when_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    TileStore.create(path, prepared_layout(), PROVENANCE).close()
    script = (
        "import os\nfrom dtkd_pipeline.cache import TileStore\n"
        f"TileStore.open({str(path)!r}, mode='r+', lock=True)\n"
        "print('locked', flush=True)\nos._exit(1)\n"  # dies holding it, never closing
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "locked", result.stderr  # it did hold the lock
    TileStore.open(path, mode="r+", lock=True).close()


def _write_one_shard(path: str, shard: int) -> None:
    TileStore.open(path, mode="r+").write_shard(shard, shard_slice(prepared_tiles(), shard))


def test_processes_writing_distinct_shards(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    coordinator = TileStore.create(path, prepared_layout(), PROVENANCE)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_one_shard, args=(str(path), k)) for k in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert coordinator.verify().ok
    assert np.array_equal(coordinator.read_tiles(range(N_TILES))["hr"], prepared_tiles()["hr"])


def test_format_1_on_disk_keeps_layout_and_provenance_in_attributes_and_sha256_in_records(
    tmp_path: Path,
) -> None:
    """A store outlives the code that wrote it (a teacher cache takes GPU-hours): what format 1
    puts on disk, spelled out; changing any of it needs a new FORMAT_VERSION."""
    store = filled_prepared(tmp_path / "s.zarr")
    attributes = json.loads((store.path / "zarr.json").read_text())["attributes"]
    assert attributes == {
        "dtkd_layout": {
            "format_version": 1,
            "kind": "prepared",
            "n_tiles": N_TILES,
            "shard_size": SHARD,
            "arrays": [
                {"name": "lr", "tile_shape": [3, TILE, TILE], "dtype": "uint8"},
                {"name": "hr", "tile_shape": [3, TILE * SCALE, TILE * SCALE], "dtype": "uint8"},
                {"name": "tile_source", "tile_shape": [], "dtype": "int32"},
                {"name": "tile_offset", "tile_shape": [2], "dtype": "int32"},
            ],
            "compression": {"codec": "zstd", "level": 3},
        },
        "provenance": PROVENANCE,
    }
    tiles = prepared_tiles()
    for shard in range(3):
        start, stop = shard * SHARD, min((shard + 1) * SHARD, N_TILES)
        record = json.loads((store.path / "_done" / f"{shard}.json").read_text())
        # sha256 of each array's C-order bytes: the prepared-store fingerprint is built from it.
        sha256 = {
            name: hashlib.sha256(data[start:stop].tobytes()).hexdigest()
            for name, data in tiles.items()
        }
        assert record == {"shard": shard, "start": start, "stop": stop, "sha256": sha256}


def test_fingerprint_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    first = filled_prepared(tmp_path / "a.zarr").fingerprint()
    assert first == TileStore.open(tmp_path / "a.zarr").fingerprint()
    assert first == filled_prepared(tmp_path / "b.zarr").fingerprint()  # path-independent
    assert first != filled_prepared(tmp_path / "c.zarr", seed=1).fingerprint()
    store = TileStore.open(tmp_path / "b.zarr", mode="r+")
    tiles = shard_slice(prepared_tiles(), 1)
    tiles["lr"] = tiles["lr"].copy()
    tiles["lr"][0, 0, 0, 0] ^= 1
    store.write_shard(1, tiles)
    assert store.fingerprint() != first


def _rename_meeting_another_creator(
    monkeypatch: pytest.MonkeyPatch, path: Path, other: Path
) -> None:
    """Make another run's store (built at `other`) land at `path` just before this run's
    skeleton is renamed there: both runs found `path` free."""
    real_rename = os.rename
    skeleton = store_module.pid_temporary(path)

    def rename(source: Any, target: Any) -> None:
        if Path(source) == skeleton and other.exists():
            real_rename(other, path)
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_store_another_run_created_meanwhile_is_named_and_left_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    path, other = tmp_path / "s.zarr", tmp_path / "others" / "s.zarr"
    filled_prepared(other, seed=1).close()
    if overwrite:
        filled_prepared(path, seed=2).close()
    _rename_meeting_another_creator(monkeypatch, path, other)
    with pytest.raises(StoreCreatedMeanwhileError) as caught:
        TileStore.create(path, prepared_layout(), PROVENANCE, overwrite=overwrite)
    monkeypatch.undo()
    message = str(caught.value)
    assert f"{path} was created by another run while this run was creating it" in message
    assert "Wait for that run to finish" in message
    assert "a run without --overwrite resumes from that store" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["others", "s.zarr"]  # no tmp or trash
    with TileStore.open(path, mode="r+", lock=True) as theirs:  # its lock is not ours
        assert theirs.verify().ok
        np.testing.assert_array_equal(theirs.read_tiles(range(N_TILES))["hr"],
                                      prepared_tiles(seed=1)["hr"])  # fmt: skip


def test_a_failed_overwrite_puts_the_old_store_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.zarr"
    filled_prepared(path).close()
    real_rename = os.rename
    skeleton = store_module.pid_temporary(path)

    def rename(source: Any, target: Any) -> None:
        if Path(source) == skeleton:
            raise PermissionError(13, "Permission denied", str(target))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PermissionError):
        TileStore.create(path, prepared_layout(), PROVENANCE | {"scale": 2}, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    with TileStore.open(path, mode="r+", lock=True) as old:
        assert old.provenance["scale"] == SCALE and old.verify().ok


def test_an_overwrite_whose_old_store_cannot_be_deleted_warns_and_keeps_the_new_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.zarr"
    filled_prepared(path).close()
    trash = store_module.pid_trash(path)
    real_rmtree = shutil.rmtree

    def rmtree(target: Any, ignore_errors: bool = False, **kwargs: Any) -> None:
        if Path(target) != trash:
            real_rmtree(target, ignore_errors=ignore_errors, **kwargs)
        elif not ignore_errors:
            raise PermissionError(13, "Permission denied", str(trash / "lr"))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.warns(UserWarning) as caught:
        new = TileStore.create(path, prepared_layout(), PROVENANCE | {"scale": 2}, overwrite=True)
    monkeypatch.undo()
    message = str(caught[0].message)
    assert f"{trash}: the replaced copy could not be deleted (Permission denied)" in message
    assert f"delete {trash} by hand" in message
    new.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", trash.name]
    with TileStore.open(path, mode="r+", lock=True) as fresh:  # the new store, its lock released
        assert fresh.provenance["scale"] == 2 and fresh.missing_shards() == [0, 1, 2]
