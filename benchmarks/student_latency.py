"""Student inference: latency at batch 1 and throughput at the best batch, per speed setting.

Times one forward pass of the student (random weights; speed does not depend on the values) on
LR images of each --sizes side, after warm-up, with CUDA events (median and p90 of --runs).
A *variant* is fp32 | bf16 | fp16, optionally "+graphs" (torch.compile mode reduce-overhead,
which replays CUDA graphs and removes the per-kernel launch cost that dominates batch 1) or
"+compile" (torch.compile default mode); "+opsattn" runs the official attention ops instead of
SDPA (the A/B of the fused-kernel window layout).

    python benchmarks/student_latency.py                               # CPU: fp32, 64 px, batch 1
    python benchmarks/student_latency.py --device cuda --variants fp32,bf16,bf16+graphs \\
        --sizes 64,512 --batch-sizes 1,16,64,256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _common import attention_ops_for_students, device_name

from dtkd_pipeline.compiled import CompileMode, compile_static
from dtkd_pipeline.evaluate.efficiency import count_flops, measure_latency
from dtkd_pipeline.student import build_student

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MODES: dict[str, CompileMode] = {"compile": "default", "graphs": "reduce-overhead"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--student", default="swinir-s-x4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", help="comma list; default fp32 (CPU), fp32,bf16 (CUDA)")
    parser.add_argument("--sizes", default="64", help="comma list of LR sides")
    parser.add_argument("--batch-sizes", default="1", help="comma list; larger sizes stop at OOM")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=16 * 512 * 512,
        help="skip batch x side^2 above this many LR pixels",
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def make_model(student: str, variant: str, device: torch.device) -> tuple[Any, str]:
    precision, *levers = variant.split("+")
    model = build_student(student).to(device).eval().requires_grad_(False)
    forward: Any = model
    for lever in levers:
        if lever == "opsattn":
            continue  # applied around the timing, see main()
        if lever not in _MODES:
            raise SystemExit(f"variant {variant!r}: unknown lever {lever!r}")
        forward = compile_static(model, _MODES[lever])
    return forward, precision


def time_variant(
    args: argparse.Namespace,
    variant: str,
    device: torch.device,
    sizes: list[int],
    batches: list[int],
) -> list[dict[str, Any]]:
    """Latency rows of one variant over every LR side and batch size (until out of memory)."""
    rows: list[dict[str, Any]] = []
    forward, precision = make_model(args.student, variant, device)
    for side in sizes:
        for batch in batches:
            if batch * side * side > args.max_pixels:
                continue
            lr = torch.rand(batch, 3, side, side, device=device)

            def call(
                x: torch.Tensor = lr,
                net: Any = forward,
                dtype: torch.dtype | None = _DTYPES.get(precision),
                graphs: bool = "graphs" in variant,
            ) -> torch.Tensor:
                with (
                    torch.inference_mode(),
                    torch.autocast(
                        device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                    ),
                ):
                    if graphs:  # outputs of the previous replay are no longer needed
                        torch.compiler.cudagraph_mark_step_begin()
                    return net(x)

            try:
                stats = measure_latency(
                    call, device=device, warmup=args.warmup, runs=args.runs, batch=batch
                )
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"  {variant:<12} {side:>4}px batch {batch:>4}: out of memory")
                break
            rows.append(
                {
                    "variant": variant,
                    "lr_size": side,
                    "batch": batch,
                    "median_ms": stats.median_ms,
                    "p90_ms": stats.p90_ms,
                    "images_per_s": stats.images_per_s,
                }
            )
            print(
                f"  {variant:<12} {side:>4}px batch {batch:>4}: median "
                f"{stats.median_ms:8.2f} ms, p90 {stats.p90_ms:8.2f} ms, "
                f"{stats.images_per_s:9.1f} images/s"
            )
    return rows


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    variants = (args.variants or ("fp32,bf16" if cuda else "fp32")).split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    flops = count_flops(lambda: build_student(args.student)(torch.rand(1, 3, 64, 64)))
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; {args.student}, random "
        f"weights, {flops / 1e9:.2f} GFLOP per 64x64 LR image"
    )
    rows: list[dict[str, Any]] = []
    for variant in variants:
        with attention_ops_for_students("opsattn" in variant.split("+")):
            rows += time_variant(args, variant, device, sizes, batches)
    for side in sizes:
        here = [r for r in rows if r["lr_size"] == side]
        ones = [r for r in here if r["batch"] == 1]
        if ones and here:
            fastest = min(ones, key=lambda r: r["median_ms"])
            best = max(here, key=lambda r: r["images_per_s"])
            print(
                f"summary {side}px: batch 1 {fastest['median_ms']:.2f} ms "
                f"({fastest['variant']}); best {best['images_per_s']:.1f} images/s "
                f"({best['variant']}, batch {best['batch']})"
            )
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
