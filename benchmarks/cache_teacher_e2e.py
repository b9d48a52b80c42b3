"""Stage one end to end: `cache-teacher` tiles/s from LR shards to compressed teacher shards.

Runs the real stage (`stages.cache_teacher.run`: shard reads, per-sample noise, sampling, uint8
quantisation, optional DWT subbands, the writer thread with zstd/blosc + crc32c, completion
records) on a synthetic prepared store, with a random-weight teacher (speed does not depend on the
values). One small warm-up run first (cuDNN/compile caches), then the timed run on a fresh store.
Compare with `teacher_throughput.py` (sampling alone) to see what I/O and the stage cost.

    python benchmarks/cache_teacher_e2e.py --device cuda --tiles 2048 --batch 64 \\
        --precision bf16 --channels-last --shard-size 256
    python benchmarks/cache_teacher_e2e.py --config ../shared/parity/resshift_tiny/config.yaml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _common import device_name, synchronize

from dtkd_pipeline.cache import HR, LR, TILE_OFFSET, TILE_SOURCE, TileStore
from dtkd_pipeline.cache.prepared_store import prepared_provenance
from dtkd_pipeline.config import DataParams, Params, load_params
from dtkd_pipeline.stage_files import TRAIN_STORE
from dtkd_pipeline.teacher import Teacher
from stages import cache_teacher, prepare_data

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="v1", help="teacher preset or official YAML path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiles", type=int, help="timed tiles (default 4 CPU, 2048 CUDA)")
    parser.add_argument("--lr-size", type=int, default=64, help="LR tile side (multiple of 64)")
    parser.add_argument("--batch", type=int, help="teacher.batch_size (default 2 CPU, 64 CUDA)")
    parser.add_argument("--shard-size", type=int, help="tiles per shard (default 2x batch)")
    parser.add_argument("--precision", help="teacher.precision (default bf16 CUDA, fp32 CPU)")
    parser.add_argument("--compile", help="teacher.compile mode (default none)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC teacher (benchmark)")
    parser.add_argument("--dwt", action="store_true", help="also cache the DWT subbands")
    parser.add_argument("--codec", default="zstd", choices=["zstd", "blosc"])
    parser.add_argument("--level", type=int, default=3)
    return parser.parse_args()


def synthetic_prepared(path: Path, data: DataParams, tiles: int) -> None:
    """A prepared store of blocky random tiles, in prepare-data's layout and provenance."""
    rng = np.random.default_rng(0)
    layout = prepare_data.train_store_layout(data, tiles)
    side, shard_size = data.lr_tile, data.shard_size
    coarse = rng.integers(0, 256, (shard_size, 3, side // 8, side // 8), dtype=np.uint8)
    lr = coarse.repeat(8, axis=2).repeat(8, axis=3)
    hr = lr.repeat(data.scale, axis=2).repeat(data.scale, axis=3)
    provenance = prepared_provenance(data, ["synthetic"])
    with TileStore.create(path, layout, provenance) as store:
        for shard in range(layout.n_shards):
            start, stop = layout.shard_range(shard)
            n = stop - start
            store.write_shard(
                shard,
                {
                    LR: np.roll(lr[:n], shard, axis=0),
                    HR: hr[:n],
                    TILE_SOURCE: np.zeros(n, np.int32),
                    TILE_OFFSET: np.zeros((n, 2), np.int32),
                },
            )


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    tiles = args.tiles or (2048 if cuda else 4)
    batch = args.batch or (64 if cuda else 2)
    shard = args.shard_size or 2 * batch
    precision = args.precision or ("bf16" if cuda else "fp32")
    root = Path(tempfile.mkdtemp(prefix="cache-e2e-"))
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(raw))

    def params_for(name: str) -> Params:
        return load_params(
            root / "params.yaml",
            [
                f"data.prepared_dir={root / name / 'prepared'}",  # beside the store, not above
                f"data.lr_tile={args.lr_size}",
                f"data.shard_size={shard}",
                f"data.compression.codec={args.codec}",
                f"data.compression.level={args.level}",
                f"teacher.version={args.config}",
                "teacher.random_weights=true",
                f"teacher.precision={precision}",
                f"teacher.batch_size={batch}",
                f"teacher.compile={args.compile or 'null'}",
                f"teacher.dwt={str(args.dwt).lower()}",
                f"teacher.store={root / name / 'teacher.zarr'}",
                f"teacher.preview={root / name / 'teacher_preview.png'}",
            ],
        )

    warm, timed = params_for("warm"), params_for("timed")
    synthetic_prepared(warm.data.prepared_dir / TRAIN_STORE, warm.data, batch)
    synthetic_prepared(timed.data.prepared_dir / TRAIN_STORE, timed.data, tiles)
    teacher = cache_teacher.build_teacher(timed.teacher, device)
    if args.channels_last:  # a benchmark-only lever: measured slower in eager mode on an H100
        teacher = Teacher.from_networks(
            teacher.unet,
            teacher.autoencoder,
            teacher.config,
            device=device,
            precision=teacher.precision,
            channels_last=True,
            compile_mode=teacher.compile_mode,
        )
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; {teacher.name}, "
        f"{precision}, channels_last={args.channels_last}, compile={args.compile}, "
        f"dwt={args.dwt}, {args.codec}-{args.level}"
    )
    print(f"{tiles} tiles of {args.lr_size}->{4 * args.lr_size}, batch {batch}, shard {shard}")
    started = time.perf_counter()
    cache_teacher.run(warm, teacher=teacher)
    print(f"warm-up run (compilation, autotuning): {time.perf_counter() - started:.1f} s")
    synchronize(device)
    started = time.perf_counter()
    cache_teacher.run(timed, teacher=teacher)
    seconds = time.perf_counter() - started
    print(f"summary: end to end {tiles / seconds:.2f} tiles/s ({tiles} tiles in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
