"""Shard-streaming loader: aligned crops, consistent augmentation, determinism, resume, sharding."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pywt
import torch

from dtkd_pipeline.cache import (
    KIND_PREPARED,
    KIND_TEACHER,
    PREPARED_FINGERPRINT,
    ProvenanceMismatchError,
    StoreLayout,
    StoreLayoutError,
    TileStore,
    prepared_arrays,
    teacher_arrays,
)
from dtkd_pipeline.train.dataset import (
    LoaderSettings,
    ShardStreamDataset,
    apply_symmetry,
    batch_to_float,
    epochs_of_batches,
    make_loader,
)

N_TILES, SHARD, TILE, SCALE, PATCH = 22, 4, 16, 4, 8  # 6 shards, the last holding 2 tiles
BANDS = ("LL2", "LH2", "HL2", "HH2", "LH1", "HL1", "HH1")
RECIPE = {"patches_per_tile": 1, "augment": True, "seed": 0}  # distill params in a real run


def haar_bands(images: np.ndarray) -> dict[str, np.ndarray]:
    """2-level Haar subbands of uint8 images in [0, 1] units, named as in the cache."""
    ll2, level2, level1 = pywt.wavedec2(images / 255.0, "haar", level=2, axes=(-2, -1))
    out = {"LL2": ll2}
    for level, details in ((2, level2), (1, level1)):
        out |= {f"{k}{level}": d for k, d in zip(("LH", "HL", "HH"), details, strict=True)}
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (N_TILES, 3, TILE, TILE), dtype=np.uint8)
    hr = lr.repeat(SCALE, axis=2).repeat(SCALE, axis=3)  # nearest upsampling: a checkable link
    teacher = rng.integers(0, 256, hr.shape, dtype=np.uint8)
    bands = {k: v.astype(np.float16) for k, v in haar_bands(teacher).items()}

    prepared_layout = StoreLayout(KIND_PREPARED, N_TILES, SHARD, prepared_arrays(TILE, SCALE))
    prepared = TileStore.create(root / "train.zarr", prepared_layout, {"sources": ["x.png"]})
    dwt_shapes = {name: band.shape[1:] for name, band in bands.items()}
    teacher_layout = StoreLayout(
        KIND_TEACHER, N_TILES, SHARD, teacher_arrays(TILE * SCALE, dwt_shapes)
    )
    for shard in range(prepared.n_shards):
        rows = slice(shard * SHARD, min((shard + 1) * SHARD, N_TILES))
        prepared.write_shard(
            shard,
            {
                "lr": lr[rows],
                "hr": hr[rows],
                "tile_source": np.zeros(rows.stop - rows.start, np.int32),
                "tile_offset": np.zeros((rows.stop - rows.start, 2), np.int32),
            },
        )
    provenance = {PREPARED_FINGERPRINT: prepared.fingerprint()}
    cache = TileStore.create(root / "teacher.zarr", teacher_layout, provenance)
    for shard in range(cache.n_shards):
        rows = slice(shard * SHARD, min((shard + 1) * SHARD, N_TILES))
        cache.write_shard(
            shard, {"teacher": teacher[rows]} | {f"dwt/{k}": v[rows] for k, v in bands.items()}
        )
    prepared.close()
    cache.close()
    return {"root": root, "lr": lr, "hr": hr, "teacher": teacher, "bands": bands}


def make_dataset(
    stores: dict[str, Any], dwt: bool | list[str] = True, **settings: Any
) -> ShardStreamDataset:
    defaults = {"patch_size": PATCH, "batch_size": 4, "shuffle_buffer": 6} | RECIPE
    return ShardStreamDataset(
        stores["root"] / "train.zarr",
        stores["root"] / "teacher.zarr",
        dwt=dwt,
        settings=LoaderSettings(**(defaults | settings)),
    )


def tile_order(batches: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    return [tuple(b["tile"].tolist() + b["offset"].flatten().tolist()) for b in batches]


def test_crops_are_aligned_without_augmentation(stores: dict[str, Any]) -> None:
    dataset = make_dataset(stores, augment=False)
    seen = 0
    for batch in make_loader(dataset):
        for i, (tile, (y, x)) in enumerate(zip(batch["tile"], batch["offset"], strict=True)):
            y, x, s, p = int(y), int(x), SCALE, PATCH
            assert np.array_equal(batch["lr"][i], stores["lr"][tile, :, y : y + p, x : x + p])
            hr_rows, hr_cols = slice(s * y, s * (y + p)), slice(s * x, s * (x + p))
            assert np.array_equal(batch["hr"][i], stores["hr"][tile, :, hr_rows, hr_cols])
            teacher_crop = stores["teacher"][tile, :, hr_rows, hr_cols]
            assert np.array_equal(batch["teacher"][i], teacher_crop)
            # Subbands of the crop == crop of the cached subbands (HR offsets are multiples of 4).
            for name, band in haar_bands(teacher_crop).items():
                got = batch["dwt"][name][i].numpy().astype(np.float64)
                np.testing.assert_allclose(got, band, rtol=1e-3, atol=1e-3)
            seen += 1
    assert seen == len(dataset) * 4


def test_augmentation_is_identical_across_arrays_and_subbands(stores: dict[str, Any]) -> None:
    """lr, hr, teacher and every cached subband get the one symmetry recorded in "aug"."""
    dataset = make_dataset(stores, augment=True, patches_per_tile=3, seed=3)
    codes: set[int] = set()
    for batch in make_loader(dataset):
        for i in range(len(batch["tile"])):
            tile, code = int(batch["tile"][i]), int(batch["aug"][i])
            y, x = (int(v) for v in batch["offset"][i])
            codes.add(code)
            lr, hr, teacher = (batch[k][i].numpy() for k in ("lr", "hr", "teacher"))
            # hr was the nearest upsampling of lr: it must still be, after the transform.
            assert np.array_equal(hr, lr.repeat(SCALE, axis=1).repeat(SCALE, axis=2))
            raw = stores["lr"][tile, :, y : y + PATCH, x : x + PATCH]
            assert np.array_equal(lr, apply_symmetry(raw, code))
            # The teacher patch is its stored region under the same symmetry as the lr patch.
            s, p = SCALE, PATCH
            stored_teacher = stores["teacher"][tile, :, s * y : s * (y + p), s * x : s * (x + p)]
            assert np.array_equal(teacher, apply_symmetry(stored_teacher, code)), code
            # Cached subbands, transformed, equal the subbands of the transformed teacher crop.
            for name, band in haar_bands(teacher).items():
                got = batch["dwt"][name][i].numpy().astype(np.float64)
                np.testing.assert_allclose(got, band, rtol=1e-3, atol=1e-3, err_msg=name)
    assert codes == set(range(8))


def test_augmenting_a_subband_without_its_transpose_partner_is_refused(
    stores: dict[str, Any],
) -> None:
    """A transpose turns LH into HL: loading one without the other cannot be augmented."""
    with pytest.raises(ValueError, match="augmenting LH2 needs HL2 too"):
        make_dataset(stores, dwt=["LL2", "LH2"], augment=True)
    assert make_dataset(stores, dwt=["LL2", "LH2"], augment=False).band_ratios == {
        "LL2": 1,
        "LH2": 1,
    }


def test_same_seed_same_sequence_other_seed_differs(stores: dict[str, Any]) -> None:
    first = tile_order(list(make_loader(make_dataset(stores, dwt=False, seed=5))))
    again = list(make_loader(make_dataset(stores, dwt=False, seed=5)))
    assert first == tile_order(again)
    assert first != tile_order(list(make_loader(make_dataset(stores, dwt=False, seed=6))))
    dataset = make_dataset(stores, dwt=False, seed=5)
    dataset.set_epoch(1)
    assert tile_order(list(make_loader(dataset))) != first


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_the_exact_sequence(stores: dict[str, Any], num_workers: int) -> None:
    settings = {"seed": 11, "num_workers": num_workers, "shuffle_buffer": 5}
    full = list(make_loader(make_dataset(stores, dwt=False, **settings)))
    assert len(full) == len(make_dataset(stores, dwt=False, **settings))
    for stop in (1, 4, len(full) - 1):
        dataset = make_dataset(stores, dwt=False, **settings)
        iterator = iter(make_loader(dataset))
        head = [next(iterator) for _ in range(stop)]
        state = dataset.state_dict(batches_consumed=stop)
        del iterator
        resumed = make_dataset(stores, dwt=False, **settings)
        resumed.load_state_dict(state)
        tail = list(make_loader(resumed))
        assert tile_order(head + tail) == tile_order(full)
        for a, b in zip(head + tail, full, strict=True):
            assert torch.equal(a["hr"], b["hr"])
    # A position at the end of an epoch resumes at the start of the next one.
    dataset = make_dataset(stores, dwt=False, **settings)
    dataset.load_state_dict(dataset.state_dict(len(full)))
    assert dataset.epoch == 1 and dataset.start_batch == 0
    with pytest.raises(ValueError, match="batch_size: saved 4, now 2"):
        make_dataset(stores, dwt=False, **(settings | {"batch_size": 2})).load_state_dict(state)


class _WorkerTaggingDataset(ShardStreamDataset):
    """Tags each batch with the process that produced it."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            yield batch | {"pid": torch.tensor(os.getpid())}


def test_workers_live_across_epochs_and_follow_the_epoch(stores: dict[str, Any]) -> None:
    """One loader serves every epoch: its worker processes start once, and each epoch still gets
    that epoch's own sequence (the one a fresh loader at that epoch gives), resume included."""
    settings = {"seed": 11, "num_workers": 2, "shuffle_buffer": 5}
    expected = []
    for epoch in range(3):
        fresh = make_dataset(stores, dwt=False, **settings)
        fresh.set_epoch(epoch)
        expected += tile_order(list(make_loader(fresh)))
    per_epoch = len(make_dataset(stores, dwt=False, **settings))
    assert expected[:per_epoch] != expected[per_epoch : 2 * per_epoch]

    tagged = _WorkerTaggingDataset(
        stores["root"] / "train.zarr",
        stores["root"] / "teacher.zarr",
        settings=make_dataset(stores, dwt=False, **settings).settings,
    )
    tagged.load_state_dict(tagged.state_dict(batches_consumed=1))  # a resume one batch in
    stream = epochs_of_batches(tagged)
    batches = [next(stream) for _ in range(3 * per_epoch - 1)]
    assert tile_order([b for b, _ in batches]) == expected[1:]
    assert [consumed for _, consumed in batches][per_epoch - 2 : per_epoch] == [per_epoch - 1, 1]
    assert len({int(b["pid"]) for b, _ in batches}) == 2
    assert os.getpid() not in {int(b["pid"]) for b, _ in batches}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_run_resumes_again_exactly(stores: dict[str, Any], num_workers: int) -> None:
    """A killed run resumed, killed again and resumed again (the position adds up)."""
    settings = {"seed": 11, "num_workers": num_workers, "shuffle_buffer": 5}
    full = list(make_loader(make_dataset(stores, dwt=False, **settings)))
    first = make_dataset(stores, dwt=False, **settings)
    head = list(iter(make_loader(first)))[:1]
    state = first.state_dict(batches_consumed=1)
    second = make_dataset(stores, dwt=False, **settings)
    second.load_state_dict(state)
    iterator = iter(make_loader(second))
    middle = [next(iterator) for _ in range(2)]
    state = second.state_dict(batches_consumed=2)
    del iterator
    third = make_dataset(stores, dwt=False, **settings)
    third.load_state_dict(state)
    tail = list(make_loader(third))
    assert tile_order(head + middle + tail) == tile_order(full)


def test_every_epoch_draws_a_new_order_crops_and_symmetries(
    stores: dict[str, Any], tmp_path: Path
) -> None:
    """One shard: the shard order cannot change between epochs, so only the plan's own seed
    (which includes the epoch) keeps epoch 1 from repeating epoch 0."""
    layout = StoreLayout(KIND_PREPARED, 4, 4, prepared_arrays(TILE, SCALE))
    with TileStore.create(tmp_path / "one.zarr", layout, {"sources": ["x.png"]}) as store:
        store.write_shard(
            0,
            {
                "lr": stores["lr"][:4],
                "hr": stores["hr"][:4],
                "tile_source": np.zeros(4, np.int32),
                "tile_offset": np.zeros((4, 2), np.int32),
            },
        )
    settings = LoaderSettings(
        patch_size=PATCH, batch_size=2, shuffle_buffer=2, patches_per_tile=1, augment=True, seed=0
    )
    dataset = ShardStreamDataset(tmp_path / "one.zarr", settings=settings)
    first, second = dataset.plan(0, 0, 0), dataset.plan(1, 0, 0)
    assert not (
        np.array_equal(first.tiles, second.tiles)
        and np.array_equal(first.offsets, second.offsets)
        and np.array_equal(first.augment, second.augment)
    )


def test_crops_reach_every_offset_including_the_last_row_and_column(
    stores: dict[str, Any],
) -> None:
    dataset = make_dataset(stores, dwt=False, patches_per_tile=3)
    offsets = np.concatenate([dataset.plan(epoch, 0, 0).offsets for epoch in range(3)])
    every = set(range(TILE - PATCH + 1))
    assert set(offsets[:, 0].tolist()) == every and set(offsets[:, 1].tolist()) == every


def test_ranks_and_workers_split_shards_disjointly(stores: dict[str, Any]) -> None:
    n_shards = -(-N_TILES // SHARD)
    dataset = make_dataset(stores, dwt=False, world_size=2, num_workers=2)
    for epoch in (0, 1):
        parts = [dataset.shards_for(epoch, r, w).tolist() for r in range(2) for w in range(2)]
        flat = [k for part in parts for k in part]
        assert sorted(flat) == list(range(n_shards))

    seen: list[list[int]] = []
    owned: list[set[int]] = []
    for rank in range(2):
        ranked = make_dataset(
            stores, dwt=False, rank=rank, world_size=2, num_workers=2, augment=False, batch_size=1
        )
        seen.append([t for batch in make_loader(ranked) for t in batch["tile"].tolist()])
        shards = [k for w in range(2) for k in ranked.shards_for(0, rank, w).tolist()]
        owned.append({t for k in shards for t in range(*ranked.layout.shard_range(k))})
    for rank in range(2):  # each tile at most once, from the rank's own shards
        assert len(set(seen[rank])) == len(seen[rank]) and set(seen[rank]) <= owned[rank]
    # Ranks step in lockstep: both run as many batches as the rank with fewer tiles has.
    assert len(seen[0]) == len(seen[1]) == min(len(tiles) for tiles in owned)

    equal = [make_dataset(stores, dwt=False, rank=r, world_size=2) for r in range(2)]
    assert len(equal[0]) == len(equal[1])
    assert [len(list(make_loader(d))) for d in equal] == [len(equal[0])] * 2


def test_refuses_teacher_built_from_other_tiles(stores: dict[str, Any], tmp_path: Path) -> None:
    layout = StoreLayout(KIND_TEACHER, N_TILES, SHARD, teacher_arrays(TILE * SCALE))
    other = TileStore.create(tmp_path / "teacher.zarr", layout, {PREPARED_FINGERPRINT: "0" * 64})
    for shard in range(other.n_shards):
        rows = min((shard + 1) * SHARD, N_TILES) - shard * SHARD
        other.write_shard(shard, {"teacher": np.zeros((rows, 3, 64, 64), np.uint8)})
    settings = LoaderSettings(patch_size=PATCH, batch_size=4, shuffle_buffer=6, **RECIPE)
    with pytest.raises(ProvenanceMismatchError, match="prepared_fingerprint: stored '0000") as info:
        ShardStreamDataset(stores["root"] / "train.zarr", other.path, settings=settings)
    assert "`dtkd-pipeline cache-teacher --overwrite`" in str(info.value)
    other.invalidate_shard(2)
    with pytest.raises(StoreLayoutError, match="incomplete"):
        ShardStreamDataset(stores["root"] / "train.zarr", other.path, settings=settings)


def test_batches_convert_to_float_with_or_without_teacher_and_subbands(
    stores: dict[str, Any],
) -> None:
    dataset = ShardStreamDataset(
        stores["root"] / "train.zarr",
        settings=LoaderSettings(patch_size=PATCH, batch_size=2, shuffle_buffer=6, **RECIPE),
    )
    batch = batch_to_float(next(iter(make_loader(dataset))))
    assert set(batch) == {"lr", "hr", "tile", "offset", "aug"}
    assert batch["lr"].dtype == torch.float32 and batch["hr"].shape == (2, 3, 32, 32)
    assert float(batch["hr"].min()) >= 0.0 and float(batch["hr"].max()) <= 1.0
    with_dwt = batch_to_float(next(iter(make_loader(make_dataset(stores)))))
    assert with_dwt["dwt"]["LL2"].dtype == torch.float32
    assert with_dwt["dwt"]["LH1"].shape == (4, 3, 2 * PATCH, 2 * PATCH)
