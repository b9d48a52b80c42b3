"""Stage-two loader: streams whole shards of the prepared and teacher stores into random patches.

Each epoch, the shard list is permuted with (seed, epoch); rank r takes every world_size-th shard
from r, and DataLoader worker w of that rank takes every num_workers-th of those. A worker reads a
shard's tiles in one go per array, feeds them (each tile repeated `patches_per_tile` times, in a
shuffled order) through a shuffle buffer, and cuts one random patch per buffer draw.

Geometry of one sample (LR tile h x w, scale s, patch p, LR offset (y, x) with integer y, x):
    lr       [y : y+p,           x : x+p]
    hr, teacher [s*y : s*y + s*p, s*x : s*x + s*p]
    subband with tile height r*h (r = s / 2**level, e.g. level 1 -> 2h, level 2 -> h for s = 4)
             [r*y : r*y + r*p, r*x : r*x + r*p]
Because s*y is a multiple of 2**level, the Haar subbands of the teacher crop equal this crop of the
cached subbands exactly; r must be an integer, i.e. level <= log2(s).

Augmentation is one of the 8 symmetries of the square (transpose, vertical flip, horizontal flip,
applied in that order), identical for every array. Cached Haar subbands are transformed exactly:
a transpose swaps LH_j <-> HL_j, and a flip along an axis negates the subbands that are a detail
(high-pass) along that axis. Subband names follow pytorch_wavelets / pywt: LL = cA, LH = cH
(detail along y), HL = cV (detail along x), HH = cD.

Determinism and resume: the whole per-worker sequence (tile order, buffer draws, offsets,
augmentations) is drawn from numpy Generators seeded by (seed, epoch, rank, worker) before any data
is read, so a run restarted from `state_dict(batches_consumed)` skips exactly the batches already
consumed without reading them. DataLoader hands out worker batches round-robin, which is how
consumed batches are mapped back to per-worker counts. Ranks are truncated to the same number of
batches so DDP ranks never wait on each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dtkd_pipeline.cache import (
    DWT_GROUP,
    HR,
    KIND_TEACHER,
    LR,
    PREPARED_FINGERPRINT,
    TEACHER,
    StoreLayoutError,
    TileStore,
)
from dtkd_pipeline.cache.prepared_store import open_prepared
from dtkd_pipeline.cache.teacher_record import REBUILD_ADVICE
from dtkd_pipeline.config import ConfigError

_BAND_NAME = re.compile(r"^(LL|LH|HL|HH)(\d+)$")
# Filter along (y, x) for each band family: "a" = low-pass (approximation), "d" = high-pass.
_BAND_FILTERS = {"LL": ("a", "a"), "LH": ("d", "a"), "HL": ("a", "d"), "HH": ("d", "d")}
_TRANSPOSED_FAMILY = {"LL": "LL", "LH": "HL", "HL": "LH", "HH": "HH"}
IMAGE_KEYS = (LR, HR, TEACHER)


@dataclass(frozen=True)
class LoaderSettings:
    """Everything that fixes the sample sequence; a resumed run must use identical settings.

    The recipe comes from the distill params (no defaults here); the process layout defaults to
    one process reading in the main thread. Every rank runs the same number of batches (the
    fewest any rank has), and a short last batch of a worker is dropped.
    """

    patch_size: int
    batch_size: int
    shuffle_buffer: int
    patches_per_tile: int
    augment: bool
    seed: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in (
            "patch_size",
            "batch_size",
            "shuffle_buffer",
            "patches_per_tile",
            "world_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, world_size={self.world_size})")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def worker_count(self) -> int:
        """Sample streams per rank: the main process counts as one when num_workers == 0."""
        return max(1, self.num_workers)


@dataclass(frozen=True)
class _Plan:
    """One worker's epoch, drawn before any data is read."""

    tiles: np.ndarray  # [M] tile index per sample
    offsets: np.ndarray  # [M, 2] LR (y, x)
    augment: np.ndarray  # [M] symmetry code: bit 2 transpose, bit 1 vflip, bit 0 hflip


class ShardStreamDataset(IterableDataset):
    """Random aligned patches from `train.zarr` (+ `teacher.zarr`, + cached DWT subbands).

    Yields batches (use `make_loader`, which sets `batch_size=None`) as dicts of tensors:
    "lr"/"hr"/"teacher" uint8 [B,3,*,*], "dwt" {name: float16 [B,3,*,*]}, and "tile" [B],
    "offset" [B,2] (LR y, x), "aug" [B] int64. uint8 crosses worker processes 4x cheaper than
    float32; `batch_to_float` converts on the target device.
    """

    def __init__(
        self,
        prepared_path: Path | str,
        teacher_path: Path | str | None = None,
        *,
        dwt: bool | Sequence[str] = False,
        settings: LoaderSettings,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.prepared_path = Path(prepared_path)
        self.teacher_path = Path(teacher_path) if teacher_path is not None else None
        prepared = open_prepared(self.prepared_path)
        self.layout = prepared.layout
        self.prepared_fingerprint = prepared.fingerprint()
        lr_shape = prepared.layout.spec(LR).tile_shape
        hr_shape = prepared.layout.spec(HR).tile_shape
        self.scale = hr_shape[1] // lr_shape[1]
        if hr_shape[1:] != (lr_shape[1] * self.scale, lr_shape[2] * self.scale):
            raise StoreLayoutError(
                f"{prepared.path}: hr tiles {hr_shape} are not lr {lr_shape} x s"
            )
        self.lr_tile = lr_shape[1:]
        if self.settings.patch_size > min(self.lr_tile):
            raise ValueError(f"patch_size {self.settings.patch_size} > LR tile size {self.lr_tile}")

        self.band_ratios: dict[str, int] = {}
        if self.teacher_path is not None:
            teacher = TileStore.open(self.teacher_path)
            check_teacher_matches_prepared(teacher, prepared)
            self.band_ratios = self._band_ratios(teacher, dwt)
        elif dwt:
            raise ValueError("dwt subbands come from the teacher store: pass teacher_path")
        # Persistent loader workers call __iter__ on their own copy of the dataset at every epoch,
        # so the position they start from (epoch, first batch) lives in shared memory, written
        # by the main process before it starts the epoch's iterator.
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        if len(self) == 0:
            raise ConfigError(
                f"no batches per epoch: {self.layout.n_tiles} tile(s) in {self.layout.n_shards} "
                f"shard(s) over world_size {self.settings.world_size} x "
                f"{self.settings.worker_count} worker(s) at batch size "
                f"{self.settings.batch_size} per rank; lower distill.batch_size or "
                "distill.num_workers, use smaller data.shard_size, or add training images"
            )

    def _band_ratios(self, teacher: TileStore, dwt: bool | Sequence[str]) -> dict[str, int]:
        """The cached subbands to load (all of them for ``dwt=True``), each with its tile side
        as a multiple of the LR tile side, refused where integer LR offsets would not map."""
        available = [n.split("/", 1)[1] for n in teacher.names if n.startswith(f"{DWT_GROUP}/")]
        wanted = list(available) if dwt is True else list(dwt or [])
        absent = sorted(set(wanted) - set(available))
        if absent:
            raise StoreLayoutError(
                f"{teacher.path} has no cached subbands {absent} (it has {available}); rebuild "
                "the teacher cache with DWT subbands or train without cached subbands"
            )
        ratios: dict[str, int] = {}
        h, w = self.lr_tile
        for band in wanted:
            _, bh, bw = teacher.layout.spec(f"{DWT_GROUP}/{band}").tile_shape
            if bh % h or bw % w or bh // h != bw // w:
                raise StoreLayoutError(
                    f"subband {band} tiles are {bh}x{bw}, not an integer multiple of the LR tile "
                    f"{h}x{w}: integer LR offsets would not map to whole subband pixels"
                )
            ratios[band] = bh // h
        if self.settings.augment:
            _require_augmentable(wanted)
        return ratios

    # ------------------------------------------------------------------ position

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._position[0] = value

    @property
    def start_batch(self) -> int:
        """The batch of `epoch` the next loader iterator starts from (non-zero after a resume)."""
        return int(self._position[1])

    @start_batch.setter
    def start_batch(self, value: int) -> None:
        self._position[1] = value

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (call before creating the loader iterator)."""
        self.epoch = epoch
        self.start_batch = 0

    def state_dict(self, batches_consumed: int) -> dict[str, Any]:
        """Data position after taking `batches_consumed` batches from the current loader iterator.

        The iterator started at `self.start_batch` (non-zero after `load_state_dict`), so the saved
        position is `start_batch + batches_consumed` within `self.epoch`.
        """
        return {
            "epoch": self.epoch,
            "batches_consumed": self.start_batch + batches_consumed,
            "settings": asdict(self.settings),
            "prepared_fingerprint": self.prepared_fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where `state_dict` was taken; settings must be unchanged."""
        saved = dict(state["settings"])
        current = asdict(self.settings)
        changed = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}"
            for k, v in current.items()
            if saved.get(k) != v
        ]
        if state["prepared_fingerprint"] != self.prepared_fingerprint:
            changed.append("prepared store content (fingerprint) differs")
        if changed:
            raise ValueError(
                "cannot resume the data position: loader settings changed since the checkpoint:\n  "
                + "\n  ".join(changed)
            )
        epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch, self.start_batch = epoch, consumed

    # ------------------------------------------------------------------ epoch arithmetic

    def shards_for(self, epoch: int, rank: int, worker: int) -> np.ndarray:
        """Shards read by one worker of one rank; disjoint across (rank, worker), covering all."""
        order = np.random.default_rng([self.settings.seed, epoch]).permutation(self.layout.n_shards)
        return order[rank :: self.settings.world_size][worker :: self.settings.worker_count]

    def _worker_batches(self, epoch: int, rank: int, worker: int) -> int:
        shards = self.shards_for(epoch, rank, worker)
        n_tiles = sum(stop - start for start, stop in map(self.layout.shard_range, shards))
        samples = n_tiles * self.settings.patches_per_tile
        size = self.settings.batch_size
        return samples // size

    def _rank_batches(self, epoch: int, rank: int) -> list[int]:
        return [self._worker_batches(epoch, rank, w) for w in range(self.settings.worker_count)]

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        # DDP steps in lockstep: a rank with more batches would wait forever for the others.
        return min(sum(self._rank_batches(epoch, r)) for r in range(self.settings.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch()

    # ------------------------------------------------------------------ sampling plan

    def plan(self, epoch: int, rank: int, worker: int) -> _Plan:
        s = self.settings
        rng = np.random.default_rng([s.seed, epoch, rank, worker])
        stream: list[np.ndarray] = []
        for shard in self.shards_for(epoch, rank, worker):
            start, stop = self.layout.shard_range(int(shard))
            stream.append(np.repeat(rng.permutation(np.arange(start, stop)), s.patches_per_tile))
        items = np.concatenate(stream) if stream else np.zeros(0, dtype=np.int64)
        tiles = _shuffle_buffer_order(items, s.shuffle_buffer, rng)
        h, w = self.lr_tile
        offsets = np.stack(
            [
                rng.integers(0, h - s.patch_size + 1, len(tiles)),
                rng.integers(0, w - s.patch_size + 1, len(tiles)),
            ],
            axis=1,
        )
        codes = rng.integers(0, 8, len(tiles)) if s.augment else np.zeros(len(tiles), np.int64)
        return _Plan(tiles, offsets, codes)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if n_workers != self.settings.worker_count:
            raise RuntimeError(
                f"dataset was configured for {self.settings.num_workers} workers but runs in "
                f"{n_workers}: build the DataLoader with make_loader()"
            )
        s = self.settings
        counts = self._rank_batches(self.epoch, s.rank)
        done, next_worker = _round_robin_share(counts, self.start_batch)
        # After a resume, DataLoader starts its round-robin at worker 0 again: worker slots are
        # rotated so slot 0 plays the logical worker whose batch was due next.
        logical = (next_worker + worker) % n_workers
        first = done[logical]
        last = _round_robin_share(counts, self.batches_per_epoch())[0][logical]
        if first >= last:
            return
        plan = self.plan(self.epoch, s.rank, logical)
        begin, end = first * s.batch_size, min(last * s.batch_size, len(plan.tiles))
        yield from self._batches(plan, begin, end)

    def _batches(self, plan: _Plan, begin: int, end: int) -> Iterator[dict[str, Any]]:
        prepared = TileStore.open(self.prepared_path)  # opened here: one handle per worker
        teacher = TileStore.open(self.teacher_path) if self.teacher_path is not None else None
        last_use = {int(t): pos for pos, t in enumerate(plan.tiles[begin:end], start=begin)}
        cache: dict[int, dict[str, np.ndarray]] = {}
        for batch_start in range(begin, end, self.settings.batch_size):
            samples = []
            for pos in range(batch_start, min(batch_start + self.settings.batch_size, end)):
                tile = int(plan.tiles[pos])
                if tile not in cache:
                    self._load_shard(prepared, teacher, tile, pos, last_use, cache)
                samples.append(self._sample(cache[tile], plan.offsets[pos], int(plan.augment[pos])))
                if last_use[tile] == pos:
                    del cache[tile]
            yield self._collate(samples, plan, batch_start, batch_start + len(samples))

    def _load_shard(
        self,
        prepared: TileStore,
        teacher: TileStore | None,
        tile: int,
        pos: int,
        last_use: Mapping[int, int],
        cache: dict[int, dict[str, np.ndarray]],
    ) -> None:
        shard = self.layout.shard_of(tile)
        start, _ = self.layout.shard_range(shard)
        arrays = prepared.read_shard(shard, [LR, HR])
        if teacher is not None:
            names = [TEACHER] + [f"{DWT_GROUP}/{band}" for band in self.band_ratios]
            arrays |= teacher.read_shard(shard, names)
        for row in range(len(arrays[LR])):
            index = start + row
            if last_use.get(index, -1) >= pos:
                # Copies, so a lingering tile does not pin its whole shard in memory.
                cache[index] = {name: data[row].copy() for name, data in arrays.items()}

    def _sample(self, tile: Mapping[str, np.ndarray], offset: np.ndarray, code: int) -> dict:
        p, s = self.settings.patch_size, self.scale
        y, x = int(offset[0]), int(offset[1])
        sample: dict[str, Any] = {
            LR: apply_symmetry(tile[LR][:, y : y + p, x : x + p], code),
            HR: apply_symmetry(tile[HR][:, s * y : s * (y + p), s * x : s * (x + p)], code),
        }
        if TEACHER in tile:
            crop = tile[TEACHER][:, s * y : s * (y + p), s * x : s * (x + p)]
            sample[TEACHER] = apply_symmetry(crop, code)
        if self.band_ratios:
            crops = {
                band: tile[f"{DWT_GROUP}/{band}"][:, r * y : r * (y + p), r * x : r * (x + p)]
                for band, r in self.band_ratios.items()
            }
            sample["dwt"] = apply_band_symmetry(crops, code) if code else crops
        return sample

    def _collate(
        self, samples: Sequence[Mapping[str, Any]], plan: _Plan, begin: int, end: int
    ) -> dict[str, Any]:
        batch: dict[str, Any] = {
            key: torch.from_numpy(np.stack([sample[key] for sample in samples]))
            for key in IMAGE_KEYS
            if key in samples[0]
        }
        if "dwt" in samples[0]:
            batch["dwt"] = {
                band: torch.from_numpy(np.stack([sample["dwt"][band] for sample in samples]))
                for band in samples[0]["dwt"]
            }
        batch["tile"] = torch.from_numpy(plan.tiles[begin:end].astype(np.int64))
        batch["offset"] = torch.from_numpy(plan.offsets[begin:end].astype(np.int64))
        batch["aug"] = torch.from_numpy(plan.augment[begin:end].astype(np.int64))
        return batch


# ---------------------------------------------------------------------- public helpers


def check_teacher_matches_prepared(teacher: TileStore, prepared: TileStore) -> None:
    """Refuse a teacher cache computed from other tiles than `prepared` holds."""
    teacher.require_kind(KIND_TEACHER)
    teacher.require_complete("cache-teacher")
    teacher.check_provenance({PREPARED_FINGERPRINT: prepared.fingerprint()}, rebuild=REBUILD_ADVICE)
    if (
        teacher.n_tiles != prepared.n_tiles
        or teacher.layout.shard_size != prepared.layout.shard_size
    ):
        raise StoreLayoutError(
            f"{teacher.path} has {teacher.n_tiles} tiles in shards of {teacher.layout.shard_size}, "
            f"{prepared.path} has {prepared.n_tiles} in shards of {prepared.layout.shard_size}: "
            f"rerun cache-teacher with --overwrite or delete {teacher.path}"
        )
    if teacher.layout.spec(TEACHER).tile_shape != prepared.layout.spec(HR).tile_shape:
        raise StoreLayoutError(f"{teacher.path}: teacher tiles do not match the HR tile shape")


def make_loader(dataset: ShardStreamDataset, *, pin_memory: bool = False) -> DataLoader:
    """DataLoader matching the dataset's settings (batches come from the dataset itself).

    Workers persist across `iter()` calls (a process start per epoch would stall the GPU on small
    stores); each `iter()` starts from the dataset's current epoch and position, which the workers
    read from shared memory. Every `iter()` draws a base seed; from its own generator, not the
    global RNG, or a resumed run (which opens an iterator mid-epoch) would shift the training RNG
    (drop-path masks). The samples come from the dataset's own seeded generators and do not use
    that base seed.
    """
    n = dataset.settings.num_workers
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=n,
        pin_memory=pin_memory,
        persistent_workers=n > 0,
        prefetch_factor=2 if n else None,
        generator=torch.Generator().manual_seed(dataset.settings.seed),
    )


def epochs_of_batches(
    dataset: ShardStreamDataset, *, pin_memory: bool = False
) -> Iterator[tuple[dict[str, Any], int]]:
    """Yield (batch, batches consumed so far in its epoch's iterator), epoch after epoch.

    One loader serves every epoch, so its workers start once per run, not once per epoch.
    """
    loader = make_loader(dataset, pin_memory=pin_memory)
    while True:
        for consumed, batch in enumerate(loader, start=1):
            yield batch, consumed
        dataset.set_epoch(dataset.epoch + 1)


def batch_to_float(
    batch: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False
) -> dict[str, Any]:
    """Images to float32 in [0, 1] and subbands to float32, on `device` (convert after moving)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "dwt":
            out[key] = {
                b: t.to(device, non_blocking=non_blocking).float() for b, t in value.items()
            }
        elif key in IMAGE_KEYS:
            out[key] = value.to(device, non_blocking=non_blocking).float().div_(255.0)
        else:
            out[key] = value
    return out


def apply_symmetry(image: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 square symmetries on the last two axes: transpose, then vflip, then hflip."""
    if code & 4:
        image = image.swapaxes(-1, -2)
    if code & 2:
        image = image[..., ::-1, :]
    if code & 1:
        image = image[..., :, ::-1]
    return image


def apply_band_symmetry(bands: Mapping[str, np.ndarray], code: int) -> dict[str, np.ndarray]:
    """Haar subbands of the transformed image, from the subbands of the original (exact)."""
    out: dict[str, np.ndarray] = {}
    for band, data in bands.items():
        match = _BAND_NAME.match(band)
        if match is None:
            raise ValueError(f"cannot map subband {band!r} through a flip or transpose")
        family, level = match.groups()
        if code & 4:
            family = _TRANSPOSED_FAMILY[family]
        filter_y, filter_x = _BAND_FILTERS[family]
        # Reversing an even-length, pair-aligned signal reverses the pairs and negates each
        # Haar difference, so high-pass bands along a flipped axis change sign.
        negate = ((code & 2) and filter_y == "d") != ((code & 1) and filter_x == "d")
        moved = apply_symmetry(data, code)
        out[family + level] = -moved if negate else moved
    return out


# ---------------------------------------------------------------------- internals


def _shuffle_buffer_order(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Order in which a streaming shuffle buffer of `size` emits `items`."""
    draws = rng.integers(0, size, len(items))
    buffer: list[int] = []
    out: list[int] = []
    for item, draw in zip(items.tolist(), draws.tolist(), strict=True):
        if len(buffer) < size:
            buffer.append(item)
        else:
            out.append(buffer[draw])
            buffer[draw] = item
    tail = np.asarray(buffer, dtype=np.int64)
    rng.shuffle(tail)
    return np.concatenate([np.asarray(out, dtype=np.int64), tail])


def _require_augmentable(bands: Sequence[str]) -> None:
    """Refuse subbands a flip or transpose cannot be mapped through: unknown names, or a band
    whose transpose partner (LH_j <-> HL_j) is not loaded too."""
    for band in bands:
        match = _BAND_NAME.match(band)
        if match is None:
            raise ValueError(
                f"cannot augment subband {band!r}: names must be LL<j>/LH<j>/HL<j>/HH<j> "
                "so flips and transposes can be mapped; or set augment=False"
            )
        partner = _TRANSPOSED_FAMILY[match.group(1)] + match.group(2)
        if partner not in bands:
            raise ValueError(f"augmenting {band} needs {partner} too (transpose swaps them)")


def _round_robin_share(counts: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """Per-worker batches behind the first `consumed` batches of a DataLoader, and the next turn.

    DataLoader takes one batch from each worker in turn and skips workers that are exhausted.
    """
    share = [0] * len(counts)
    remaining = consumed
    turn = 0
    while remaining > 0 and any(s < c for s, c in zip(share, counts, strict=True)):
        if share[turn] < counts[turn]:
            share[turn] += 1
            remaining -= 1
        turn = (turn + 1) % len(counts)
    return share, turn
