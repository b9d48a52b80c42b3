"""Teacher throughput: images/s of `Teacher.sample` on 64->256 tiles, batched vs a naive loop.

Random full-width weights (speed does not depend on the values; outputs are meaningless). Reports:
* batched: rng="per-sample" at each --batch-sizes value (batch 1 and the best batch are summarised);
* baseline: the naive per-image loop (batch 1, rng="official"), as upstream's CLI runs with --bs 1.

CPU fp32 on 2 cores takes ~70 s per full-width tile (plus one warm-up batch per batch size),
so the CPU default is tiny:
    python benchmarks/teacher_throughput.py                          # CPU: 2 tiles, batches 1,2
    python benchmarks/teacher_throughput.py --device cuda            # bf16 autocast, batches 1..64
    python benchmarks/teacher_throughput.py --config ../shared/parity/resshift_tiny/config.yaml
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _common import device_name, synchronize

from dtkd_pipeline.teacher import Teacher, random_teacher


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="v1", help="preset (v1/v2/v3) or official YAML path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--lr-size", type=int, default=64, help="LR tile side (SR is 4x)")
    parser.add_argument(
        "--batch-sizes", type=str, help="comma list; default 1,2 on CPU, 1,8,16,32,64 on CUDA"
    )
    parser.add_argument(
        "--tiles", type=int, help="tiles per measurement (default: the largest batch size)"
    )
    parser.add_argument("--baseline-tiles", type=int, help="tiles for the naive loop (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats; the best is kept")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed warm-up batches per batch size"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def images_per_second(
    run: Callable[[], int], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Best-of-`repeats` throughput of `run` (which returns how many images it produced)."""
    best = float("inf")
    images = 0
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        images = run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return images / best, best


def batched_run(teacher: Teacher, lr: torch.Tensor, batch: int) -> Callable[[], int]:
    def run() -> int:
        for start in range(0, lr.shape[0], batch):
            chunk = lr[start : start + batch]
            ids = list(range(start, start + chunk.shape[0]))
            teacher.sample(chunk, seed=0, rng="per-sample", sample_ids=ids)
        return lr.shape[0]

    return run


def naive_run(teacher: Teacher, lr: torch.Tensor) -> Callable[[], int]:
    def run() -> int:
        for index in range(lr.shape[0]):
            teacher.sample(lr[index : index + 1], seed=12345, rng="official")
        return lr.shape[0]

    return run


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    default_batches = "1,8,16,32,64" if device.type == "cuda" else "1,2"
    batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    tiles = args.tiles or max(batch_sizes)
    baseline_tiles = args.baseline_tiles or min(2, tiles)

    teacher = random_teacher(args.config, seed=args.seed, device=device, precision=precision)
    generator = torch.Generator().manual_seed(args.seed)
    lr = torch.rand(tiles, 3, args.lr_size, args.lr_size, generator=generator).to(device)
    side = args.lr_size
    print(f"device: {device_name(device)}; teacher {teacher.name} (T={teacher.steps}), {precision}")
    print(f"tiles: {side}x{side} -> {side * 4}x{side * 4}; {tiles} per measurement")

    results: dict[int, float] = {}
    for batch in batch_sizes:
        try:
            for _ in range(args.warmup):  # oneDNN / cuDNN pick and cache kernels per shape
                teacher.sample(lr[:batch], seed=0)
            rate, seconds = images_per_second(batched_run(teacher, lr, batch), device, args.repeats)
        except torch.OutOfMemoryError:
            print(f"  batch {batch:>3}: out of memory")
            torch.cuda.empty_cache()
            continue
        results[batch] = rate
        print(f"  batch {batch:>3}: {rate:8.3f} images/s ({seconds:.1f} s)")

    for _ in range(args.warmup):
        teacher.sample(lr[:1], seed=12345, rng="official")
    baseline, seconds = images_per_second(
        naive_run(teacher, lr[:baseline_tiles]), device, args.repeats
    )
    print(f"  naive loop (batch 1, rng official): {baseline:8.3f} images/s ({seconds:.1f} s)")
    if not results:
        return
    best_batch = max(results, key=results.__getitem__)
    print(
        f"summary: batch 1 {results.get(1, float('nan')):.3f} images/s; best batch {best_batch} "
        f"{results[best_batch]:.3f} images/s; naive {baseline:.3f} images/s; "
        f"best/naive = {results[best_batch] / baseline:.2f}x"
    )


if __name__ == "__main__":
    main()
