"""Stage-two speed: student training step time (L1 vs L1 + DWT KD) and loader throughput.

(a) One training step of the student = forward + backward + Adam step on random data already on
    the device (compute only): plain L1 vs L1 + DecomposedDWTLoss (as the loop computes them), and
    the DWT overhead. On CUDA also bf16 autocast and fused Adam. Warm-up steps, then median/p90.
    The step difference is noisy when the loss is small, so the DWT loss is also timed alone
    (forward + backward on the step's output size) and reported as a share of the L1+DWT step.
(b) Loader throughput (samples/s): ShardStreamDataset/make_loader on Zarr stores vs a BasicSR-style
    PNG folder loader (PIL decode per sample, random crop, flips/rotation); same tiles and workers.
    Stores are built in a temp dir from data/demo/hr with stages.prepare_data; the teacher store is
    synthetic (teacher = blurred HR, as in tests/test_distill.py) so no teacher runs.

    python benchmarks/train_step.py                      # CPU: batch 2, 1 warm-up + 3 steps
    python benchmarks/train_step.py --batch 16 --iters 5 # CPU, 8x the default batch (slow)
    python benchmarks/train_step.py --device cuda        # batch 64, fp32/bf16, foreach/fused Adam
(c) --loop N: the real `distill` stage for N iterations on those stores (batch --batch, patch
    --patch, --loop-precision, --loop-compile, --num-workers), which prints samples/s and the share
    of time spent waiting for the loader.

    python benchmarks/train_step.py --device cuda --skip-loader --loop 200 --loop-compile
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from _common import attention_ops_for_students, device_name, synchronize
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dtkd_pipeline.cache import (
    HR,
    KIND_TEACHER,
    LR,
    PREPARED_FINGERPRINT,
    TEACHER,
    StoreLayout,
    TileStore,
    teacher_arrays,
)
from dtkd_pipeline.cache.teacher_record import teacher_params_provenance
from dtkd_pipeline.config import Params, load_params
from dtkd_pipeline.losses import build_kd_loss
from dtkd_pipeline.stage_files import TRAIN_STORE
from dtkd_pipeline.student import build_student
from dtkd_pipeline.train.dataset import LoaderSettings, ShardStreamDataset, make_loader
from stages import prepare_data

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data" / "demo" / "hr"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student", default="swinir-s-x4")
    parser.add_argument("--patch", type=int, default=64, help="LR patch side (HR = 4x)")
    # A step costs ~0.8 s per sample of patch 64 on 2 CPU cores (batch 4: 3.3 s): the CPU default
    # stays small.
    parser.add_argument("--batch", type=int, help="step batch; default 2 on CPU, 64 on CUDA")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 1 CPU, 10 CUDA)")
    parser.add_argument("--iters", type=int, help="timed steps (default 3 CPU, 50 CUDA)")
    parser.add_argument("--loader-batch", type=int, default=16, help="loader batch size")
    parser.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--loader-samples", type=int, default=512, help="samples per loader")
    parser.add_argument("--tile", type=int, default=64, help="LR tile side of the stores")
    parser.add_argument("--stride", type=int, default=16, help="LR tile stride (overlap = more)")
    parser.add_argument("--skip-step", action="store_true", help="only the loader benchmark")
    parser.add_argument("--skip-loader", action="store_true", help="only the step benchmark")
    parser.add_argument("--loop", type=int, default=0, help="iterations of the real distill loop")
    parser.add_argument(
        "--loop-precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--loop-compile", action="store_true", help="distill.compile=true")
    parser.add_argument(
        "--configs",
        help=f"step configs, comma-separated (default: fp32 on CPU, {','.join(STEP_CONFIGS)} "
        "on CUDA; bf16 is autocast, on the CPU too)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------------- (a) training step


@dataclass(frozen=True)
class StepVariant:
    precision: str  # fp32 | bf16 (autocast on CUDA)
    fused: bool  # fused Adam (CUDA) vs the default foreach implementation
    kd: bool  # L1 + DWT KD vs plain L1
    compiled: bool = False  # torch.compile the student (as distill.compile does)

    @property
    def config(self) -> str:
        adam = "fused" if self.fused else "foreach"
        return f"{self.precision}, {adam} Adam" + (", compiled" if self.compiled else "")


def make_step(
    variant: StepVariant,
    model: torch.nn.Module,
    forward: Callable,
    args: argparse.Namespace,
    device: torch.device,
) -> Callable:
    """One training step (forward + loss + backward + Adam step) of `model` on fixed random data.

    Both loss variants of a config share one model and its `forward` (compiled once if so).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=variant.fused)
    kd_loss = build_kd_loss("dwt").to(device)
    b, p = args.batch, args.patch
    lr = torch.rand(b, 3, p, p, device=device)
    hr = torch.rand(b, 3, 4 * p, 4 * p, device=device)
    teacher = torch.rand(b, 3, 4 * p, 4 * p, device=device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16"
    )

    def step() -> None:
        with autocast:
            sr = forward(lr)
        # Losses in fp32 outside autocast, as train/loop.py does.
        sr = sr.float()
        loss = F.l1_loss(sr, hr)
        if variant.kd:
            loss = loss + kd_loss(sr, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_pair(
    precision: str, fused: bool, compiled: bool, args: argparse.Namespace, device: torch.device
) -> dict[bool, list[float]]:
    """Seconds per step for L1 (False) and L1+DWT (True), interleaved after warm-up.

    Interleaving (alternating which goes first) cancels drift from other load on the machine,
    which would otherwise land entirely on whichever variant runs second.
    """
    torch.manual_seed(args.seed)
    model = build_student(args.student).to(device).train()
    forward = torch.compile(model) if compiled else model
    steps = {
        kd: make_step(StepVariant(precision, fused, kd, compiled), model, forward, args, device)
        for kd in (False, True)
    }
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.iters):
        for kd in (False, True) if i % 2 == 0 else (True, False):
            synchronize(device)
            start = time.perf_counter()
            steps[kd]()
            synchronize(device)
            times[kd].append(time.perf_counter() - start)
    return times


STEP_CONFIGS = ("fp32", "fp32+fused", "bf16+fused", "bf16+fused+compile")
STEP_LEVERS = {"fused", "compile", "opsattn"}


def parse_step_config(name: str) -> tuple[str, bool, bool, bool]:
    """Parse a step config, e.g. "bf16+fused+compile" -> (precision, fused Adam, compiled,
    official attention ops instead of SDPA: the "opsattn" lever, the A/B of the fused layout)."""
    parts = name.strip().split("+")
    if parts[0] not in ("fp32", "bf16") or not set(parts[1:]) <= STEP_LEVERS:
        raise SystemExit(
            f"--configs: unknown step config {name!r}; e.g. {','.join(STEP_CONFIGS)} "
            f"(levers: {', '.join(sorted(STEP_LEVERS))})"
        )
    return parts[0], "fused" in parts, "compile" in parts, "opsattn" in parts


def time_kd_loss(args: argparse.Namespace, device: torch.device) -> float:
    """Median seconds of the DWT KD loss alone: forward + backward on a batch of SR outputs.

    The loop computes it in fp32 outside autocast, so one figure serves every precision.
    """
    kd_loss = build_kd_loss("dwt").to(device)
    shape = (args.batch, 3, 4 * args.patch, 4 * args.patch)
    sr = torch.rand(shape, device=device, requires_grad=True)
    teacher = torch.rand(shape, device=device)
    times = []
    for i in range(args.warmup + max(args.iters, 5)):
        synchronize(device)
        start = time.perf_counter()
        kd_loss(sr, teacher).backward()
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Prints the table row by row (compiled last), so a time-boxed run keeps what finished."""
    configs = [parse_step_config(name) for name in args.configs.split(",")]
    print(
        "| config | L1 median (ms) | L1 p90 (ms) | L1+DWT median (ms) | L1+DWT p90 (ms) "
        "| DWT overhead | DWT loss alone (share) | samples/s (L1+DWT) |"
        "\n|---|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    kd_alone = time_kd_loss(args, device)
    for precision, fused, compiled, ops_attention in configs:
        with attention_ops_for_students(ops_attention):
            times = time_pair(precision, fused, compiled, args, device)
        plain, kd = times[False], times[True]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        m_plain, m_kd = statistics.median(plain), statistics.median(kd)
        print(
            f"| {StepVariant(precision, fused, True, compiled).config}"
            f"{', attention ops' if ops_attention else ''} | {1e3 * m_plain:.1f} "
            f"| {1e3 * percentile(plain, 90):.1f} | {1e3 * m_kd:.1f} "
            f"| {1e3 * percentile(kd, 90):.1f} | {100 * (m_kd / m_plain - 1):+.1f}% "
            f"| {1e3 * kd_alone:.1f} ms ({100 * kd_alone / m_kd:.1f}%) "
            f"| {args.batch / m_kd:.1f} |",
            flush=True,
        )


# ---------------------------------------------------------------------- (b) loaders


def build_stores(root: Path, args: argparse.Namespace) -> Params:
    """prepare-data on the demo images, then a synthetic teacher store (blurred HR)."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(
        params_file,
        [
            f"data.hr_dir={DEMO_DIR}",
            f"data.prepared_dir={root / 'prepared'}",
            f"data.lr_tile={args.tile}",
            f"data.stride={args.stride}",
            "data.workers=1",
            f"teacher.store={root / 'cache' / 'teacher.zarr'}",
        ],
    )
    prepare_data.run(params)
    prepared = TileStore.open(params.data.prepared_dir / TRAIN_STORE)
    layout = StoreLayout(
        kind=KIND_TEACHER,
        n_tiles=prepared.n_tiles,
        shard_size=prepared.layout.shard_size,
        arrays=teacher_arrays(prepared.layout.spec(HR).tile_shape[1]),
    )
    provenance = {
        **teacher_params_provenance(params.teacher),
        PREPARED_FINGERPRINT: prepared.fingerprint(),
    }
    with TileStore.create(params.teacher.store, layout, provenance) as store:
        for shard in range(layout.n_shards):
            hr = prepared.read_shard(shard, [HR])[HR].astype(np.float32)
            blurred = (hr + np.roll(hr, 1, axis=-1) + np.roll(hr, 1, axis=-2)) / 3
            store.write_shard(shard, {TEACHER: np.round(blurred).astype(np.uint8)})
    return params


def write_png_tiles(params: Params, folder: Path) -> list[int]:
    """The stores' tiles as <folder>/{lr,hr,teacher}/<tile>.png (BasicSR's sub-image layout)."""
    prepared = TileStore.open(params.data.prepared_dir / TRAIN_STORE)
    teacher = TileStore.open(params.teacher.store)
    for name in (LR, HR, TEACHER):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for shard in range(prepared.n_shards):
        start, _ = prepared.layout.shard_range(shard)
        arrays = prepared.read_shard(shard, [LR, HR]) | teacher.read_shard(shard, [TEACHER])
        for name, data in arrays.items():
            for row, tile in enumerate(data):
                # compress_level 3 = BasicSR's extract_subimages setting.
                Image.fromarray(tile.transpose(1, 2, 0)).save(
                    folder / name / f"{start + row:06d}.png", compress_level=3
                )
    return list(range(prepared.n_tiles))


class PngTileDataset(Dataset):
    """BasicSR PairedImageDataset-style: decode LR/HR/teacher PNGs per sample, crop, augment.

    Returns uint8 CHW tensors like ShardStreamDataset (float conversion happens on the device in
    both cases, so the comparison is decode + crop + augment + collate only).
    """

    def __init__(self, folder: Path, tiles: list[int], patch: int, scale: int = 4) -> None:
        self.folder, self.tiles, self.patch, self.scale = folder, tiles, patch, scale

    def __len__(self) -> int:
        return len(self.tiles)

    def _read(self, name: str, index: int) -> np.ndarray:
        with Image.open(self.folder / name / f"{self.tiles[index]:06d}.png") as image:
            return np.asarray(image.convert("RGB"))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        lr, hr, teacher = (self._read(name, index) for name in (LR, HR, TEACHER))
        p, s = self.patch, self.scale
        y = random.randint(0, lr.shape[0] - p)
        x = random.randint(0, lr.shape[1] - p)
        crops = [
            lr[y : y + p, x : x + p],
            hr[s * y : s * (y + p), s * x : s * (x + p)],
            teacher[s * y : s * (y + p), s * x : s * (x + p)],
        ]
        hflip, vflip, rot = (random.random() < 0.5 for _ in range(3))  # BasicSR's augment()
        out = []
        for crop in crops:
            if hflip:
                crop = crop[:, ::-1]
            if vflip:
                crop = crop[::-1]
            if rot:
                crop = crop.transpose(1, 0, 2)
            out.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
        return dict(zip((LR, HR, TEACHER), out, strict=True))


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)


def samples_per_second(make_batches: Callable[[int], Iterable[dict]], target: int) -> float:
    """Pull whole epochs (the first worker start-up included) until `target` samples."""
    samples, epoch = 0, 0
    start = time.perf_counter()
    while samples < target:
        for batch in make_batches(epoch):
            samples += batch[LR].shape[0]
        epoch += 1
    return samples / (time.perf_counter() - start)


def loader_benchmark(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="dtkd-train-step-") as tmp:
        root = Path(tmp)
        params = build_stores(root, args)
        tiles = write_png_tiles(params, root / "png")
        zarr = ShardStreamDataset(
            params.data.prepared_dir / TRAIN_STORE,
            params.teacher.store,
            settings=LoaderSettings(
                patch_size=args.patch,
                batch_size=args.loader_batch,
                shuffle_buffer=64,
                patches_per_tile=1,
                augment=True,
                seed=args.seed,
                num_workers=args.num_workers,
            ),
        )

        zarr_loader = make_loader(zarr)  # workers live across epochs, as in training

        def zarr_epoch(epoch: int) -> Iterable[dict]:
            zarr.set_epoch(epoch)
            return zarr_loader

        png = DataLoader(
            PngTileDataset(root / "png", tiles, args.patch),
            batch_size=args.loader_batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.num_workers,
            persistent_workers=args.num_workers > 0,
            worker_init_fn=_seed_worker,
        )
        png_rate = samples_per_second(lambda _: png, args.loader_samples)
        zarr_rate = samples_per_second(zarr_epoch, args.loader_samples)
        tile_note = f"{len(tiles)} tiles of LR {args.tile} (+HR, teacher {4 * args.tile})"
        return [
            f"Loader: {tile_note}, patch {args.patch}, batch {args.loader_batch}, "
            f"{args.num_workers} workers, >= {args.loader_samples} samples, "
            f"{params.data.shard_size} tiles/shard, {params.data.compression.codec} "
            f"level {params.data.compression.level}",
            "",
            "| loader | samples/s | vs PNG |",
            "|---|---:|---:|",
            f"| PNG folder (PIL per sample, BasicSR-style) | {png_rate:.1f} | 1.00x |",
            f"| Zarr ShardStreamDataset | {zarr_rate:.1f} | {zarr_rate / png_rate:.2f}x |",
        ]


def loop_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """The distill stage itself on demo-image stores; it prints samples/s and the loader wait."""
    from stages import distill

    with tempfile.TemporaryDirectory(prefix="dtkd-loop-") as tmp:
        root = Path(tmp)
        params = build_stores(root, args)
        cfg = params.distill.model_copy(
            update={
                "iterations": args.loop,
                "batch_size": args.batch,
                "patch_size": args.patch,
                "precision": args.loop_precision,
                "compile": args.loop_compile,
                "num_workers": args.num_workers,
                "shuffle_buffer": max(4 * args.batch, 64),
                "milestones": [args.loop + 1],
                "val_every": 10 * args.loop,  # validation only at the end
                "log_every": max(args.loop // 10, 1),
                "checkpoint_every": args.loop,
                "out_dir": root / "models",
            }
        )
        print(
            f"Loop: distill stage, {args.loop} iterations, batch {args.batch}, patch {args.patch}, "
            f"{args.loop_precision}, compile={args.loop_compile}, {args.num_workers} workers"
        )
        distill.run(params.model_copy(update={"distill": cfg}), device=str(device))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    args.batch = args.batch or (64 if on_cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    args.iters = args.iters or (50 if on_cuda else 3)
    args.configs = args.configs or (",".join(STEP_CONFIGS) if on_cuda else "fp32")
    args.loop_precision = args.loop_precision or ("bf16" if on_cuda else "fp32")
    for name in args.configs.split(","):
        parse_step_config(name)  # fail before anything runs
    params = sum(p.numel() for p in build_student(args.student).parameters())
    print(f"# Training step / loader benchmark on {device_name(device)}, torch {torch.__version__}")
    print()
    if not args.skip_step:
        print(
            f"Step: {args.student} ({params:,} params), LR patch {args.patch} -> HR "
            f"{4 * args.patch}, batch {args.batch}, {args.warmup} warm-up + {args.iters} timed "
            "steps (random data on the device)"
        )
        print()
        step_benchmark(args, device)
        print()
    if not args.skip_loader:
        print("\n".join(loader_benchmark(args)))
    if args.loop:
        loop_benchmark(args, device)


if __name__ == "__main__":
    main()
