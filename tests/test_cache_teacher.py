"""cache-teacher computes every tile exactly once, resumes bit-identically, verifies and repairs."""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm.auto import tqdm

import dtkd_pipeline
from dtkd_pipeline.atomic import OutputFolderError
from dtkd_pipeline.cache import (
    TEACHER,
    CacheError,
    CorruptShardError,
    IncompleteShardError,
    NotAStoreError,
    ProvenanceMismatchError,
    StoreLayoutError,
    StoreLockedError,
    TileStore,
    dask_fanout,
    preview,
    shard_compute,
)
from dtkd_pipeline.cache import store as store_module
from dtkd_pipeline.cache.batch_groups import shard_groups
from dtkd_pipeline.cache.prepared_store import open_params_prepared
from dtkd_pipeline.cache.shard_compute import compute_shards
from dtkd_pipeline.cache.store import DONE_DIR
from dtkd_pipeline.cache.teacher_record import teacher_version_identity
from dtkd_pipeline.cache.teacher_store import TeacherIdentity
from dtkd_pipeline.config import Params
from dtkd_pipeline.devices import DeviceError
from dtkd_pipeline.evaluate.figures import image_grid
from dtkd_pipeline.losses.wavelet import dwt_subbands
from dtkd_pipeline.run_lock import OutputInUseError
from dtkd_pipeline.scheduler import SchedulerUnreachableError, connect
from dtkd_pipeline.stage_files import TRAIN_STORE
from dtkd_pipeline.teacher import (
    OfficialNoise,
    Teacher,
    TeacherConfigError,
    build_teacher_networks,
)
from dtkd_pipeline.weights import WeightsError
from stages import cache_teacher, prepare_data
from tests.lock_helpers import file_snapshot, output_locked_by_child, store_locked_by_child
from tests.pipeline_helpers import (
    REPO_ROOT,
    bars_made,
    forbid_teacher,
    make_hr_images,
    tiny_params,
)

TINY_TEACHER = REPO_ROOT / "tests" / "data" / "resshift_tiny_t2.yaml"
TEACHER_OVERRIDES = [
    f"teacher.version={TINY_TEACHER}",
    "teacher.random_weights=true",
    "teacher.steps=2",
    "teacher.batch_size=2",
    "data.shard_size=1",
]


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    hr_dir = root / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256), (256, 320), (256, 256)])
    prepare_data.run(tiny_params(root, hr_dir, TEACHER_OVERRIDES))
    return root


def params_for(prepared_root: Path, tmp_path: Path, extra: list[str] | None = None) -> Params:
    overrides = [
        *TEACHER_OVERRIDES,
        f"data.prepared_dir={prepared_root / 'prepared'}",
        f"teacher.store={tmp_path / 'teacher.zarr'}",
        *(extra or []),
    ]
    return tiny_params(tmp_path, prepared_root / "hr", overrides)


@pytest.fixture(scope="module")
def cached_root(prepared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete teacher cache (default params) for tests that only need a copy of it."""
    root = tmp_path_factory.mktemp("cached")
    cache_teacher.run(params_for(prepared_root, root), device="cpu")
    return root


def copy_of_cache(cached_root: Path, tmp_path: Path) -> Path:
    """The module's cache copied to where `params_for(..., tmp_path)` expects its store."""
    return Path(shutil.copytree(cached_root / "teacher.zarr", tmp_path / "teacher.zarr"))


def copied_prepared(prepared_root: Path, tmp_path: Path) -> Path:
    """A copy of the module's prepared store, to damage."""
    return Path(shutil.copytree(prepared_root / "prepared" / TRAIN_STORE, tmp_path / "prepared"))


def teacher_bytes(path: Path) -> np.ndarray:
    with TileStore.open(path) as store:
        return store.read_tiles(range(store.n_tiles), [TEACHER])[TEACHER]


def test_store_holds_teacher_output_of_every_tile(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stored tile is round(255 * the teacher's float output), exactly, for its own id."""
    sampled: dict[int, torch.Tensor] = {}
    original = Teacher.sample

    def recording(self: Teacher, lr: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = original(self, lr, **kwargs)  # type: ignore[arg-type]
        sampled.update(zip(kwargs["sample_ids"], out.clone(), strict=True))  # type: ignore[arg-type]
        return out

    monkeypatch.setattr(Teacher, "sample", recording)
    params = params_for(prepared_root, tmp_path, ["teacher.dwt=true"])
    path = cache_teacher.run(params, device="cpu")
    monkeypatch.undo()
    with TileStore.open(path) as store:
        assert store.missing_shards() == [] and store.n_tiles == 4
        provenance = store.provenance
        assert provenance["steps"] == 2 and provenance["rng"] == "per-sample"
        assert provenance["teacher_name"].endswith("RANDOM-WEIGHTS")
        recorded = {key: provenance[key] for key in ("teacher_version", "seed", "precision")}
        assert recorded == {
            "teacher_version": teacher_version_identity(str(TINY_TEACHER)),
            "seed": 12345,
            "precision": "fp32",
        }
        assert provenance["package_version"] == dtkd_pipeline.__version__
        assert provenance["checkpoint_sha256"] == {"unet": None, "autoencoder": None}
        tiles = store.read_tiles(range(4))
    with TileStore.open(prepared_root / "prepared" / TRAIN_STORE) as prepared:
        assert provenance["prepared_fingerprint"] == prepared.fingerprint()
        lr = torch.from_numpy(prepared.read_tiles([2, 3], ["lr"])["lr"]).float() / 255
    # Quantisation: the uint8 bytes are the rounding (not truncation) of the floats it sampled.
    assert sorted(sampled) == [0, 1, 2, 3]
    outputs = torch.stack([sampled[i] for i in range(4)])
    expected_u8 = (outputs.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(tiles[TEACHER], expected_u8)
    # Independently: batches of 2 run across the one-tile shards, so the stage sampled tiles 2
    # and 3 together with noise seeded by their ids; doing the same reproduces their bytes.
    teacher = cache_teacher.build_teacher(params.teacher, torch.device("cpu"))
    tp = params.teacher
    again = teacher.sample(lr, seed=tp.seed, rng=tp.rng, sample_ids=[2, 3], steps=tp.steps)
    again_u8 = (again.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(tiles[TEACHER][2:4], again_u8)
    bands = dwt_subbands(torch.from_numpy(tiles[TEACHER]).float() / 255, levels=2)
    for name, band in bands.items():
        np.testing.assert_allclose(tiles[f"dwt/{name}"], band.half().numpy(), atol=0)


def test_preview_shows_bicubic_teacher_and_hr_of_tiles_spread_over_the_store(
    prepared_root: Path, cached_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path, ["teacher.preview_tiles=3"])
    drawn: dict = {}

    def recording(rows: list, path: Path, *, title: str) -> Path:
        drawn.update(rows=rows, title=title)
        return image_grid(rows, path, title=title)

    monkeypatch.setattr(preview, "image_grid", recording)
    with TileStore.open(params.teacher.store) as store:
        path = preview.write_preview(store, params)
        teacher = store.read_tiles([0, 2, 3], [TEACHER])[TEACHER]
    with TileStore.open(prepared_root / "prepared" / TRAIN_STORE) as prepared:
        hr = prepared.read_tiles([0, 2, 3], ["hr"])["hr"]
        names = prepared.provenance["sources"]

    assert [row[0].split("\n")[0] for row in drawn["rows"]] == ["tile 0", "tile 2", "tile 3"]
    assert all(row[0].split("\n")[1] in names for row in drawn["rows"])
    assert "RANDOM WEIGHTS" in drawn["title"]
    for row, (_, panels) in enumerate(drawn["rows"]):
        labels = [label for label, _ in panels]
        assert labels == ["LR, bicubic x4", "teacher", "HR"]
        np.testing.assert_array_equal((panels[1][1] * 255).round().byte().numpy(), teacher[row])
        np.testing.assert_array_equal((panels[2][1] * 255).round().byte().numpy(), hr[row])
        assert panels[0][1].shape == panels[2][1].shape
    with Image.open(path) as picture:
        assert path == params.teacher.preview and picture.format == "PNG"
        assert picture.height > picture.width / 3 * 2  # three rows of three near-square panels


_KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from dtkd_pipeline.cache import TileStore
from dtkd_pipeline.scheduler import SchedulerUnreachableError, connect
from dtkd_pipeline.config import load_params
from stages import cache_teacher

original = TileStore.write_shard
def write_then_die(self, shard, tiles):
    result = original(self, shard, tiles)
    if shard == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
TileStore.write_shard = write_then_die
cache_teacher.run(load_params({params!r}, {overrides!r}), device="cpu")
"""


def test_sigkilled_run_resumes_to_identical_bytes_without_recomputing(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = cache_teacher.run(params_for(prepared_root, tmp_path / "straight"), device="cpu")

    params = params_for(prepared_root, tmp_path / "killed")
    overrides = [
        *TEACHER_OVERRIDES,
        f"data.prepared_dir={prepared_root / 'prepared'}",
        f"teacher.store={params.teacher.store}",
        f"data.hr_dir={prepared_root / 'hr'}",
    ]
    script = _KILL_AFTER_FIRST_SHARD.format(
        root=str(REPO_ROOT), params=str(tmp_path / "killed" / "params.yaml"), overrides=overrides
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with TileStore.open(params.teacher.store) as store:
        done_before = store.completed_shards()
    assert 1 in done_before and len(done_before) < 4

    sampled_ids: list[int] = []
    original = Teacher.sample

    def counting(self: Teacher, lr: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sampled_ids.extend(kwargs["sample_ids"])  # type: ignore[arg-type]
        return original(self, lr, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Teacher, "sample", counting)
    cache_teacher.run(params, device="cpu")
    assert sorted(sampled_ids) == [i for i in range(4) if i not in done_before]
    np.testing.assert_array_equal(teacher_bytes(params.teacher.store), teacher_bytes(straight))


def test_verify_names_corrupt_shard_and_repair_restores_bytes(
    prepared_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = params_for(prepared_root, tmp_path)
    path = cache_teacher.run(params, device="cpu")
    before = teacher_bytes(path)
    with TileStore.open(path) as store:
        shard_file = store.shard_file(TEACHER, 2)
    data = bytearray(shard_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard_file.write_bytes(bytes(data))

    assert cache_teacher.verify(path, params) is False
    printed = capsys.readouterr().out
    assert "corrupt shard 2" in printed and f"verify-cache {path} --repair" in printed
    assert cache_teacher.verify(path, params, repair=True, device="cpu") is True
    np.testing.assert_array_equal(teacher_bytes(path), before)


def test_cache_teacher_counts_each_batchs_diffusion_steps_under_its_tile_bar(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU batch runs the teacher's steps for minutes: a bar of its own counts them, under the
    tile bar, gone when the batch is done, and hidden where the tile bar is (TQDM_DISABLE)."""
    params = params_for(prepared_root, tmp_path, ["teacher.batch_size=1"])
    prepared = open_params_prepared(params, complete=False)
    teacher = cache_teacher.build_teacher(params.teacher, torch.device("cpu"))
    batches = prepared.layout.tiles_in([0])  # one tile per batch
    steps = bars_made(monkeypatch, shard_compute)
    with tqdm(total=batches, disable=False) as tiles:  # shown, whatever TQDM_DISABLE says
        list(compute_shards(teacher, prepared, [0], params, tiles))
    assert len(steps) == batches
    for bar in steps:
        assert (bar.total, bar.unit, bar.leave) == (params.teacher.steps, "step", False)
        assert bar.shown and bar.made.n == params.teacher.steps

    hidden_steps = bars_made(monkeypatch, shard_compute)
    with tqdm(total=batches, disable=True) as hidden_tiles:
        list(compute_shards(teacher, prepared, [0], params, hidden_tiles))
    assert [bar.shown for bar in hidden_steps] == [False] * batches


def test_verify_cache_shows_a_bar_over_the_shards_that_tqdm_disable_hides(
    cached_root: Path, prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding a real-sized store takes minutes: verify-cache counts the shards it checked."""
    path = copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path)
    with TileStore.open(path) as store:
        n_shards = store.n_shards
    bars = bars_made(monkeypatch, store_module)
    assert cache_teacher.verify(path, params) is True
    assert [(bar.total, bar.unit, bar.shown) for bar in bars] == [(n_shards, "shard", True)]

    hidden = bars_made(monkeypatch, store_module, tqdm_disable=True)
    assert cache_teacher.verify(path, params) is True
    assert [bar.shown for bar in hidden] == [False]


def test_an_emptied_shard_file_counts_as_missing_in_both_stores_never_as_black_tiles(
    cached_root: Path, prepared_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """zarr reads a 0-byte shard file as zeros (a power loss can leave one behind its record)."""
    copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path)
    path = params.teacher.store
    before = teacher_bytes(path)
    with TileStore.open(path) as store:
        store.shard_file(TEACHER, 1).write_bytes(b"")
        assert store.missing_shards() == [1]
        with pytest.raises(IncompleteShardError, match="shard 1"):
            store.read_shard(1)
    cache_teacher.run(params, device="cpu")  # a resume recomputes it
    np.testing.assert_array_equal(teacher_bytes(path), before)

    copy = copied_prepared(prepared_root, tmp_path)
    assert cache_teacher.verify(copy, params) is True
    with TileStore.open(copy) as prepared:
        prepared.shard_file("lr", 3).write_bytes(b"")
    capsys.readouterr()
    assert cache_teacher.verify(copy, params) is False
    printed = capsys.readouterr().out
    assert "lr: shard file" in printed and "is empty (0 bytes)" in printed
    assert "dtkd-pipeline prepare-data" in printed
    with pytest.raises(CacheError, match="prepared store: --repair recomputes teacher shards"):
        cache_teacher.verify(copy, params, repair=True)


def test_a_deleted_completion_folder_is_rebuilt_and_a_garbled_record_is_named(
    cached_root: Path, prepared_root: Path, tmp_path: Path
) -> None:
    copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path)
    path = params.teacher.store
    before = teacher_bytes(path)
    shutil.rmtree(path / DONE_DIR)
    cache_teacher.run(params, device="cpu")
    np.testing.assert_array_equal(teacher_bytes(path), before)

    copy = copied_prepared(prepared_root, tmp_path)
    (copy / DONE_DIR / "2.json").write_text("garbage")
    with TileStore.open(copy) as prepared, pytest.raises(CorruptShardError) as info:
        prepared.fingerprint()
    assert str(copy / DONE_DIR / "2.json") in str(info.value)
    assert "verify-cache" in str(info.value)


def test_a_config_file_teacher_is_recorded_by_content_not_by_how_its_path_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "teacher.yaml"
    shutil.copy(TINY_TEACHER, config)
    monkeypatch.chdir(tmp_path)
    recorded = teacher_version_identity(str(config))
    assert teacher_version_identity("teacher.yaml") == recorded
    assert recorded.startswith("config file sha256 ")
    shutil.copy(config, tmp_path / "renamed.yaml")
    assert teacher_version_identity("renamed.yaml") == recorded
    config.write_text(config.read_text().replace("kappa: 2.0", "kappa: 1.0"))
    assert teacher_version_identity("teacher.yaml") != recorded  # an edited teacher is another
    assert teacher_version_identity("v1") == "v1"
    with pytest.raises(TeacherConfigError, match=re.escape("missing.yaml: no such config file")):
        teacher_version_identity("missing.yaml")


def test_official_rng_continues_one_stream_in_tile_order_through_resumes(
    prepared_root: Path, tmp_path: Path
) -> None:
    """teacher.rng=official: one stream seeded once, as upstream's script runs image after image
    (re-seeding per batch gave every batch the same noise); a resumed shard gets the same bytes."""
    params = params_for(prepared_root, tmp_path, ["teacher.rng=official", "teacher.batch_size=1"])
    path = cache_teacher.run(params, device="cpu")
    cached = teacher_bytes(path)

    teacher = cache_teacher.build_teacher(params.teacher, torch.device("cpu"))
    with TileStore.open(prepared_root / "prepared" / TRAIN_STORE) as prepared:
        lr = torch.from_numpy(prepared.read_tiles(range(4), ["lr"])["lr"]).float() / 255
    stream = OfficialNoise(params.teacher.seed, torch.device("cpu"))
    for tile in range(4):
        sr = teacher.sample(lr[tile : tile + 1], rng="official", steps=2, stream=stream)
        np.testing.assert_array_equal(cached[tile], (sr[0] * 255).round().byte().numpy())

    with TileStore.open(path, mode="r+") as store:
        store.invalidate_shard(2)
    cache_teacher.run(params, device="cpu")
    np.testing.assert_array_equal(teacher_bytes(path), cached)

    # Another batching would continue the stream at other tiles: a resume with it is refused.
    with TileStore.open(path, mode="r+") as store:
        store.invalidate_shard(2)
    rebatched = params_for(
        prepared_root, tmp_path, ["teacher.rng=official", "teacher.batch_size=2"]
    )
    with pytest.raises(
        ProvenanceMismatchError, match=re.escape("teacher.batch_size (rng: official)")
    ):
        cache_teacher.run(rebatched, device="cpu")


def test_official_rng_replays_short_batches_of_skipped_groups(tmp_path: Path) -> None:
    """shard_size 2, batch 3: each group of 4 tiles runs batches of 3 and 1. Resuming only the
    second group must replay the first group's short batch as a short batch of draws."""
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(512, 512), (512, 512), (256, 256)])  # 4 + 4 tiles, 1 validation
    overrides = [*TEACHER_OVERRIDES, "data.shard_size=2", "teacher.batch_size=3"]
    params = tiny_params(tmp_path, hr_dir, [*overrides, "teacher.rng=official"])
    prepare_data.run(params)
    path = cache_teacher.run(params, device="cpu")
    cached = teacher_bytes(path)
    with TileStore.open(path, mode="r+") as store:
        assert store.n_tiles == 8
        store.invalidate_shard(3)
    cache_teacher.run(params, device="cpu")
    np.testing.assert_array_equal(teacher_bytes(path), cached)


def test_leftovers_of_a_killed_writer_are_reported_and_removed_by_repair(
    prepared_root: Path, cached_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL mid-write leaves a record temp and a zarr temp; both would change DVC's hash."""
    path = copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path)
    leftovers = [path / "_done" / "1.json.4242.partial", path / TEACHER / "c" / "x.1234.partial"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half")

    assert cache_teacher.verify(path, params) is True  # every shard is still intact
    assert "leftover partial writes: 2 file(s)" in capsys.readouterr().out
    assert all(leftover.exists() for leftover in leftovers)  # plain verify changes nothing
    cache_teacher.verify(path, params, repair=True, device="cpu")
    assert "removing 2 leftover partial write(s)" in capsys.readouterr().out
    assert not any(leftover.exists() for leftover in leftovers)


def test_repair_with_another_seed_is_refused_and_leaves_the_shard_missing(
    prepared_root: Path, cached_root: Path, tmp_path: Path
) -> None:
    """--repair must not fill a store's holes with another teacher setting's outputs."""
    path = copy_of_cache(cached_root, tmp_path)
    before = teacher_bytes(path)
    with TileStore.open(path, mode="r+") as store:
        store.invalidate_shard(2)
    other_seed = params_for(prepared_root, tmp_path, ["teacher.seed=1"])
    with pytest.raises(ProvenanceMismatchError, match="seed: stored 12345, requested 1"):
        cache_teacher.verify(path, other_seed, repair=True, device="cpu")
    with TileStore.open(path) as store:
        assert store.missing_shards() == [2]
        kept = store.read_tiles([0, 1, 3], [TEACHER])[TEACHER]
    np.testing.assert_array_equal(kept, before[[0, 1, 3]])


def test_verify_fails_a_cache_built_from_another_prepared_store(
    prepared_root: Path, cached_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Intact shards are not enough: the cache must come from the prepared store in params."""
    path = copy_of_cache(cached_root, tmp_path)
    assert cache_teacher.verify(path, params_for(prepared_root, tmp_path)) is True
    assert "fingerprint" not in capsys.readouterr().out
    other = tmp_path / "other"
    make_hr_images(other / "hr", [(256, 256), (256, 256), (256, 320), (256, 256)], seed=1)
    prepare_data.run(tiny_params(other, other / "hr", TEACHER_OVERRIDES))
    assert cache_teacher.verify(path, params_for(other, tmp_path)) is False
    printed = capsys.readouterr().out
    assert "4/4 shards complete and intact" in printed  # only the provenance is wrong
    assert "fingerprint differs" in printed and str(other / "prepared") in printed
    assert "cache-teacher --overwrite" in printed


def test_resume_with_other_settings_is_refused_by_field(
    prepared_root: Path, tmp_path: Path
) -> None:
    cache_teacher.run(params_for(prepared_root, tmp_path), device="cpu")
    changed = params_for(prepared_root, tmp_path, ["teacher.seed=1", "teacher.rng=official"])
    with pytest.raises(ProvenanceMismatchError) as info:
        cache_teacher.run(changed, device="cpu")
    message = str(info.value)
    assert "seed: stored 12345, requested 1" in message
    assert "rng" in message and "--overwrite" in message


def test_prepared_tiles_cut_with_other_data_settings_are_refused_before_the_teacher_is_built(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.lr_tile edited by hand without prepare-data: the stale tiles are not cached."""
    forbid_teacher(monkeypatch, cache_teacher, before="the prepared store was checked")
    params = params_for(prepared_root, tmp_path, ["data.lr_tile=128"])
    with pytest.raises(CacheError, match=r"data\.lr_tile: store 64, params 128.*prepare-data"):
        cache_teacher.run(params, device="cpu")
    assert not params.teacher.store.exists()


def test_output_locations_that_cannot_be_written_are_refused_before_the_teacher_is_built(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_teacher(monkeypatch, cache_teacher, before="the outputs were checked")
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"a user's file")
    params = params_for(prepared_root, tmp_path, [f"teacher.store={mine}"])
    for rebuild in (False, True):  # DVC runs it with --rebuild-on-change
        with pytest.raises(NotAStoreError, match=r"teacher\.store: .*my-photos is not a tile"):
            cache_teacher.run(params, rebuild_on_change=rebuild)
    assert sorted(p.name for p in mine.iterdir()) == ["holiday.jpg"]  # not even a .lock file
    with pytest.raises(NotAStoreError, match="refusing to overwrite"):
        cache_teacher.run(params, overwrite=True)

    folder = tmp_path / "preview.png"
    folder.mkdir()
    params = params_for(prepared_root, tmp_path, [f"teacher.preview={folder}"])
    with pytest.raises(OutputFolderError, match=r"teacher\.preview: .*preview\.png is a folder"):
        cache_teacher.run(params)

    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    params = params_for(prepared_root, tmp_path, [f"teacher.store={a_file / 't.zarr'}"])
    with pytest.raises(OutputFolderError, match=r"teacher\.store: .*notes\.txt is a file"):
        cache_teacher.run(params)


def test_a_run_on_a_store_another_run_holds_is_refused_before_the_teacher_is_built(
    cached_root: Path, prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = copy_of_cache(cached_root, tmp_path)
    with TileStore.open(store, mode="r+") as opened:
        opened.invalidate_shard(0)  # work left for the refused run
    forbid_teacher(monkeypatch, cache_teacher, before="the store lock was checked")
    with store_locked_by_child(store) as holder_pid:
        before = file_snapshot(store)
        for params, options in [
            (params_for(prepared_root, tmp_path), {}),
            (params_for(prepared_root, tmp_path, ["teacher.seed=7"]), {"rebuild_on_change": True}),
            (params_for(prepared_root, tmp_path), {"overwrite": True}),
        ]:
            with pytest.raises(StoreLockedError) as caught:
                cache_teacher.run(params, **options)
            assert f"store {store} is in use: PID {holder_pid} holds {store / '.lock'}" in str(
                caught.value
            )
        assert file_snapshot(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "teacher.zarr"]


def test_a_run_on_a_store_another_run_is_about_to_create_is_refused_before_the_teacher_is_built(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs on a store that does not exist yet meet at the lock beside it, not after both
    built a teacher (the store's own lock only exists once the store does)."""
    store = tmp_path / "teacher.zarr"
    forbid_teacher(monkeypatch, cache_teacher, before="the lock beside the store was checked")
    with output_locked_by_child(store, "teacher.store") as holder_pid:
        with pytest.raises(OutputInUseError) as caught:
            cache_teacher.run(params_for(prepared_root, tmp_path))
        assert f"teacher.store: {store} is being written by another run (PID {holder_pid}" in str(
            caught.value
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_the_store_stays_locked_from_before_the_teacher_is_built_through_a_rebuild(
    cached_root: Path, prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = copy_of_cache(cached_root, tmp_path)
    locked_at: list[str] = []

    def refused_to_another_run(step: str) -> None:
        with pytest.raises(StoreLockedError):
            TileStore.open(store, mode="r+", lock=True)
        locked_at.append(step)

    build, fill, create = cache_teacher.build_teacher, cache_teacher.fill_locally, TileStore.create

    def build_once_locked(*args: Any) -> Teacher:
        refused_to_another_run("build")
        return build(*args)

    def create_once_locked(*args: Any, **kwargs: Any) -> TileStore:
        refused_to_another_run("rebuild")  # no gap between the refused resume and the rebuild
        return create(*args, **kwargs)

    def fill_then_check(*args: Any) -> None:
        fill(*args)
        refused_to_another_run("fill")

    monkeypatch.setattr(cache_teacher, "build_teacher", build_once_locked)
    monkeypatch.setattr(TileStore, "create", staticmethod(create_once_locked))
    monkeypatch.setattr(cache_teacher, "fill_locally", fill_then_check)
    params = params_for(prepared_root, tmp_path, ["teacher.seed=7"])  # settings changed
    cache_teacher.run(params, device="cpu", rebuild_on_change=True)
    assert locked_at == ["build", "rebuild", "fill"]
    TileStore.open(store, mode="r+", lock=True).close()  # released when the run ended


def test_damaged_array_metadata_is_found_before_the_teacher_runs(
    cached_root: Path, prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path)
    with TileStore.open(params.teacher.store, mode="r+") as store:
        store.invalidate_shard(0)
    metadata = params.teacher.store / TEACHER / "zarr.json"
    metadata.write_text(metadata.read_text()[:50])

    def sample(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher ran before the store was checked")

    with monkeypatch.context() as patch:
        patch.setattr(Teacher, "sample", sample)
        with pytest.raises(StoreLayoutError, match="teacher"):
            cache_teacher.run(params, device="cpu")
    cache_teacher.run(params, device="cpu", rebuild_on_change=True)  # how DVC runs it: rebuilt
    assert teacher_bytes(params.teacher.store).shape[0] == 4


def test_a_store_without_subbands_refused_for_teacher_dwt_names_the_dwt_setting(
    cached_root: Path, prepared_root: Path, tmp_path: Path
) -> None:
    copy_of_cache(cached_root, tmp_path)
    params = params_for(prepared_root, tmp_path, ["teacher.dwt=true"])
    with pytest.raises(ProvenanceMismatchError, match="dwt: stored False, requested True"):
        cache_teacher.run(params, device="cpu")


def test_ctrl_c_says_how_many_shards_are_stored_and_how_to_resume(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_teacher, "fill_locally", interrupted)
    params = params_for(prepared_root, tmp_path)
    with pytest.raises(KeyboardInterrupt) as raised:
        cache_teacher.run(params, device="cpu")
    (note,) = raised.value.__notes__  # printed by the CLI
    assert note.startswith("0 of 4 shards are stored") and "run the same command again" in note


def test_ctrl_c_after_overwrite_says_to_resume_without_it(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_teacher, "fill_locally", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        cache_teacher.run(params_for(prepared_root, tmp_path), overwrite=True, device="cpu")
    (note,) = raised.value.__notes__  # repeating --overwrite would delete the stored shards
    assert "; run the same command again without --overwrite to compute the rest" in note


def test_offline_weights_stop_at_once_with_url_path_and_alternative(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTKD_MIRROR", "http://127.0.0.1:9")  # discard port: connection refused
    params = params_for(
        prepared_root,
        tmp_path,
        [
            "teacher.version=v1",
            "teacher.random_weights=false",
            "teacher.steps=15",
            f"teacher.weights_dir={tmp_path / 'weights'}",
        ],
    )
    with pytest.raises(WeightsError) as info:
        cache_teacher.run(params, device="cpu")
    message = str(info.value)
    assert message.startswith("teacher.unet_weights=resshift-realsr-v1: ")  # the key to change
    assert "resshift_realsrx4_s15_v1.pth" in message
    assert str(tmp_path / "weights") in message and "--weights-dir" in message
    assert not params.teacher.store.exists()

    shutil.rmtree(tmp_path / "weights", ignore_errors=True)
    (tmp_path / "weights").write_text("a file, not a folder")
    with pytest.raises(WeightsError, match=r"teacher\.weights_dir: .*weights is a file"):
        cache_teacher.run(params, device="cpu")


@pytest.mark.slow
def test_dask_scheduler_fills_the_same_store_as_a_local_run(
    prepared_root: Path, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    local = cache_teacher.run(params_for(prepared_root, tmp_path / "local"), device="cpu")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        fanned = cache_teacher.run(
            params_for(prepared_root, tmp_path / "dask"), scheduler=cluster.scheduler_address
        )
    # Workers run torch with another intra-op thread count, which reorders float reductions:
    # outputs agree to the last uint8 step, bit-identity holds per process configuration.
    diff = np.abs(teacher_bytes(fanned).astype(int) - teacher_bytes(local).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_dask_workers_get_absolute_paths_whatever_folder_they_run_in(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(TINY_TEACHER, tmp_path / "teacher.yaml")
    monkeypatch.chdir(tmp_path)
    params = params_for(prepared_root, tmp_path)
    params = params.model_copy(
        update={
            "teacher": params.teacher.model_copy(
                update={"store": Path("cache/t.zarr"), "version": "teacher.yaml"}
            ),
            "data": params.data.model_copy(update={"prepared_dir": Path("prepared")}),
        }
    )
    sent = Params.model_validate_json(dask_fanout.params_for_workers(params))
    assert sent.teacher.store == tmp_path / "cache" / "t.zarr"
    assert sent.data.prepared_dir == tmp_path / "prepared"
    assert sent.teacher.version == str(tmp_path / "teacher.yaml")
    assert sent.teacher.unet_weights == params.teacher.unet_weights  # a name, not a file here


class _RecordingTeacher:
    """Stands in for a compiled teacher: records batch sizes, returns a per-tile function of its
    own LR tile (nearest x4), so a dropped filler row could not hide among real outputs."""

    compile_mode = "default"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.batch_ids: list[list[int]] = []

    def sample(self, lr: torch.Tensor, sample_ids: list[int], **_: object) -> torch.Tensor:
        self.batch_sizes.append(lr.shape[0])
        self.batch_ids.append(list(sample_ids))
        return lr.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


@pytest.mark.parametrize("batch", [3, 11])
def test_compiled_teacher_gets_full_batches_across_shard_boundaries(
    prepared_root: Path, tmp_path: Path, batch: int
) -> None:
    """Batches run across shards (a batch may exceed data.shard_size), a ragged batch is filled
    (no new compiled shape), and each shard gets exactly its own tiles' outputs."""
    params = params_for(prepared_root, tmp_path, [f"teacher.batch_size={batch}"])
    prepared = open_params_prepared(params, complete=False)
    layout = prepared.layout
    assert layout.shard_size < batch and layout.n_tiles % batch != 0, "fixture: ragged, small"
    teacher = _RecordingTeacher()
    shards = list(range(layout.n_shards))[::-1]  # any order the store's gaps dictate
    results = dict(compute_shards(teacher, prepared, shards, params))  # type: ignore[arg-type]
    assert set(teacher.batch_sizes) == {batch}
    assert len(teacher.batch_sizes) == -(-layout.n_tiles // batch)  # no tile computed twice
    assert sorted(results) == sorted(shards)
    for shard, arrays in results.items():
        lr = prepared.read_shard(shard, ["lr"])["lr"]
        np.testing.assert_array_equal(arrays[TEACHER], lr.repeat(4, axis=2).repeat(4, axis=3))


def test_a_resumed_shard_is_sampled_in_the_batch_a_full_run_gives_it(
    prepared_root: Path, tmp_path: Path
) -> None:
    """Bit-exact resume and --repair: batch composition depends on tile indices only."""
    params = params_for(prepared_root, tmp_path, ["teacher.batch_size=2"])
    prepared = open_params_prepared(params, complete=False)
    full, alone = _RecordingTeacher(), _RecordingTeacher()
    list(compute_shards(full, prepared, range(prepared.n_tiles), params))  # type: ignore[arg-type]
    (shard, _), *rest = compute_shards(alone, prepared, [3], params)  # type: ignore[arg-type]
    assert shard == 3 and rest == []
    assert alone.batch_ids == [[2, 3]] and [2, 3] in full.batch_ids
    groups = shard_groups(prepared.layout, [3, 0, 2, 1], batch_size=2)
    assert groups == [[3, 2], [0, 1]]  # one dask task per group: no shard has two writers
    # A group holds at least one batch: 3 tiles in shards of 2 need groups of 2 shards, not 1.
    pairs = dataclasses.replace(prepared.layout, n_tiles=8, shard_size=2)
    assert shard_groups(pairs, [0, 1, 2, 3], batch_size=3) == [[0, 1], [2, 3]]


@pytest.fixture
def checkpoint_overrides(tmp_path: Path) -> list[str]:
    """The tiny teacher as official-format checkpoint files (hashes, not None, in provenance)."""
    unet, vq = build_teacher_networks(TINY_TEACHER)
    torch.save(unet.state_dict(), tmp_path / "unet.pth")
    torch.save({"state_dict": vq.state_dict()}, tmp_path / "vq.pth")
    return [
        "teacher.random_weights=false",
        f"teacher.unet_weights={tmp_path / 'unet.pth'}",
        f"teacher.autoencoder_weights={tmp_path / 'vq.pth'}",
    ]


def test_fanned_out_run_records_the_local_provenance_without_building_a_teacher(
    prepared_root: Path, tmp_path: Path, checkpoint_overrides: list[str], monkeypatch
) -> None:
    local = cache_teacher.run(
        params_for(prepared_root, tmp_path / "local", checkpoint_overrides), device="cpu"
    )
    filled: list[list[int]] = []

    def no_teacher_here(*_: object) -> Teacher:
        raise AssertionError("the coordinator built a teacher")

    monkeypatch.setattr(cache_teacher, "build_teacher", no_teacher_here)
    monkeypatch.setattr(cache_teacher, "dask_device_type", lambda address: "cpu")
    monkeypatch.setattr(
        cache_teacher,
        "fill_with_dask",
        lambda store, params, shards, address: filled.append(shards),
    )
    params = params_for(prepared_root, tmp_path / "fanned", checkpoint_overrides)
    with pytest.raises(CacheError, match="still missing"):  # the stand-in fill writes nothing
        cache_teacher.run(params, scheduler="tcp://127.0.0.1:1")
    assert filled == [[0, 1, 2, 3]]
    with TileStore.open(local) as a, TileStore.open(params.teacher.store) as b:
        assert a.provenance["checkpoint_sha256"]["unet"] is not None
        assert b.provenance == a.provenance


def test_worker_with_another_teacher_is_named_by_field() -> None:
    stored = {
        "teacher_name": "resshift-v1",
        "checkpoint_sha256": {"unet": "a"},
        "device_type": "cuda",
    }
    same = TeacherIdentity("resshift-v1", {"unet": "a"}, "cuda")
    assert same.mismatch(stored) is None
    other_device = TeacherIdentity("resshift-v1", {"unet": "a"}, "cpu")
    assert other_device.mismatch(stored) == "device_type: store has 'cuda', this worker has 'cpu'"
    other_weights = TeacherIdentity("resshift-v1", {"unet": "b"}, "cuda")
    assert "checkpoint_sha256" in str(other_weights.mismatch(stored))


def test_tensor_core_precision_on_cpu_workers_is_refused_before_anything_is_written(
    prepared_root: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cache_teacher, "dask_device_type", lambda address: "cpu")
    params = params_for(prepared_root, tmp_path, ["teacher.precision=bf16"])
    with pytest.raises(DeviceError, match=r"teacher\.precision=bf16 needs a CUDA device"):
        cache_teacher.run(params, scheduler="tcp://127.0.0.1:1")
    assert not params.teacher.store.exists()


def test_cluster_mixing_gpu_and_cpu_workers_is_refused(monkeypatch) -> None:
    from distributed import LocalCluster

    # In-process workers run the patched probe: worker 0 claims a GPU, worker 1 does not.
    monkeypatch.setattr(
        dask_fanout,
        "worker_device_type",
        lambda dask_worker: "cuda" if str(dask_worker.name) == "0" else "cpu",
    )
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        with pytest.raises(CacheError, match=r"\['cpu', 'cuda'\] devices"):
            dask_fanout.dask_device_type(cluster.scheduler_address)
        monkeypatch.setattr(dask_fanout, "worker_device_type", lambda dask_worker: "cpu")
        assert dask_fanout.dask_device_type(cluster.scheduler_address) == "cpu"


def test_a_malformed_scheduler_address_is_named_with_the_expected_form() -> None:
    with pytest.raises(SchedulerUnreachableError, match=r"no dask scheduler at 'gpu-box'.*tcp://"):
        connect("gpu-box")  # the port (and scheme) forgotten
