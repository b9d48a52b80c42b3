"""Tile store I/O vs PNG and .npy files: write/read throughput and compression ratio.

    python benchmarks/cache_io.py --tiles 128 --tile-size 256 --shard-size 16

Tiles are random crops of data/demo/hr/* when that folder has images, otherwise synthetic
"natural-ish" images (smooth low-frequency fields plus mild noise, which compress like photos do).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import device_name
from PIL import Image

from dtkd_pipeline.cache import (
    KIND_TEACHER,
    Compression,
    StoreLayout,
    TileStore,
    teacher_arrays,
)

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo" / "hr"


def demo_tiles(n: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    paths = sorted(p for p in DEMO_DIR.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    images = [im for im in images if min(im.shape[:2]) >= size]
    if not images:
        return None
    tiles = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        image = images[rng.integers(len(images))]
        y = rng.integers(image.shape[0] - size + 1)
        x = rng.integers(image.shape[1] - size + 1)
        tiles[i] = image[y : y + size, x : x + size].transpose(2, 0, 1)
    return tiles


def synthetic_tiles(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(0, 255, (n, 3, size // 32 + 2, size // 32 + 2))
    smooth = np.stack(
        [
            np.asarray(Image.fromarray(c.astype(np.float32)).resize((size, size), Image.BICUBIC))
            for c in coarse.reshape(-1, *coarse.shape[2:])
        ]
    )
    noisy = smooth.reshape(n, 3, size, size) + rng.normal(0, 3, (n, 3, size, size))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_store(root: Path, tiles: np.ndarray, shard: int, compression: Compression) -> dict:
    n, _, size, _ = tiles.shape
    layout = StoreLayout(KIND_TEACHER, n, shard, teacher_arrays(size), compression)
    path = root / f"{compression.codec}.zarr"
    store = TileStore.create(path, layout, {"benchmark": True})

    def write() -> None:
        for k in range(store.n_shards):
            start, stop = layout.shard_range(k)
            store.write_shard(k, {"teacher": tiles[start:stop]})

    def read_all() -> None:
        for k in range(store.n_shards):
            store.read_shard(k)

    picks = np.random.default_rng(1).integers(0, n, min(n, 64))
    result = {
        "write_s": timed(write),
        "read_s": timed(read_all),
        "random_ms": timed(lambda: [store.read_tile(int(i), "teacher") for i in picks])
        / len(picks)
        * 1e3,
        "verify_s": timed(store.verify),
        "bytes": disk_bytes(path),
    }
    store.close()
    return result


def bench_files(root: Path, tiles: np.ndarray, fmt: str) -> dict:
    folder = root / fmt
    folder.mkdir()
    paths = [folder / f"{i:06d}.{fmt}" for i in range(len(tiles))]

    def write() -> None:
        for tile, path in zip(tiles, paths, strict=True):
            if fmt == "png":
                Image.fromarray(tile.transpose(1, 2, 0)).save(path, compress_level=6)
            else:
                np.save(path, tile)

    def read_one(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path)) if fmt == "png" else np.load(path)

    picks = np.random.default_rng(1).integers(0, len(tiles), min(len(tiles), 64))
    return {
        "write_s": timed(write),
        "read_s": timed(lambda: [read_one(p) for p in paths]),
        "random_ms": timed(lambda: [read_one(paths[i]) for i in picks]) / len(picks) * 1e3,
        "verify_s": float("nan"),
        "bytes": disk_bytes(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=128, help="number of tiles")
    parser.add_argument("--tile-size", type=int, default=256, help="tile height = width (pixels)")
    parser.add_argument("--shard-size", type=int, default=16, help="tiles per shard")
    parser.add_argument("--level", type=int, default=3, help="zstd / blosc compression level")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tiles = demo_tiles(args.tiles, args.tile_size, rng)
    source = f"crops of {DEMO_DIR}"
    if tiles is None:
        tiles, source = synthetic_tiles(args.tiles, args.tile_size, rng), "synthetic smooth+noise"
    raw_mb = tiles.nbytes / 1e6
    print(f"machine: {device_name(torch.device('cpu'))} (compression and disk I/O only)")
    print(
        f"{args.tiles} tiles of 3x{args.tile_size}x{args.tile_size} uint8 ({source}), "
        f"{raw_mb:.1f} MB raw, shards of {args.shard_size}"
    )

    root = Path(tempfile.mkdtemp(prefix="cache_io_", dir=args.workdir))
    try:
        rows = {
            f"zarr zstd-{args.level}": bench_store(
                root, tiles, args.shard_size, Compression("zstd", args.level)
            ),
            f"zarr blosc-zstd-{args.level}": bench_store(
                root, tiles, args.shard_size, Compression("blosc", args.level)
            ),
            "zarr uncompressed": bench_store(root, tiles, args.shard_size, Compression("none")),
            "png files": bench_files(root, tiles, "png"),
            "npy files": bench_files(root, tiles, "npy"),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    header = (
        f"{'format':<22}{'ratio':>7}{'write MB/s':>12}{'write t/s':>11}"
        f"{'read MB/s':>11}{'read t/s':>10}{'rand ms':>9}{'verify s':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<22}{tiles.nbytes / r['bytes']:>7.2f}"
            f"{raw_mb / r['write_s']:>12.0f}{args.tiles / r['write_s']:>11.0f}"
            f"{raw_mb / r['read_s']:>11.0f}{args.tiles / r['read_s']:>10.0f}"
            f"{r['random_ms']:>9.2f}{r['verify_s']:>10.2f}"
        )


if __name__ == "__main__":
    main()
