"""Teacher throughput: tiles/s of `Teacher.sample` per speed setting vs the official-style loop.

Random full-width weights (speed does not depend on the values; outputs are meaningless). A
*variant* is a precision plus optional levers joined by "+":
    fp32 | tf32 | bf16 | fp16          precision (fp32 = IEEE; tf32/bf16/fp16 use tensor cores)
    nhwc                               channels_last weights and activations
    compile | graphs | autotune        torch.compile mode default | reduce-overhead (CUDA graphs)
                                       | max-autotune-no-cudagraphs
    cudnn                              torch.backends.cudnn.benchmark (autotuned conv algorithms)
    gn32                               GroupNorm on a float32 copy under autocast (upstream's way;
                                       the default hands the half tensor to the fp32-accumulating
                                       CUDA kernel)
    bmmattn                            Swin window attention as upstream's matmul, softmax, matmul
                                       under autocast (the default fuses it into one SDPA kernel)
Reported per variant and batch size: tiles/s and the warm-up time (which holds compilation).
Also:
* --baseline: upstream's inference loop (batch 1, fp16 autocast, one seeded stream per image);
* --breakdown: ms and TFLOP/s of VQ encode, one UNet call and VQ decode at the largest batch;
* --quality: each variant's uint8 tiles against fp32 (IEEE) on the same tiles and noise: PSNR and
  the share of uint8 values that differ.

    python benchmarks/teacher_throughput.py                          # CPU: batches 1, 2; fp32
    python benchmarks/teacher_throughput.py --device cuda --variants bf16,bf16+nhwc \\
        --batch-sizes 16,64 --baseline --breakdown --quality 32
    python benchmarks/teacher_throughput.py --config ../shared/parity/resshift_tiny/config.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import device_name, synchronize
from torch.nn import functional as F

from dtkd_pipeline.compiled import CompileMode
from dtkd_pipeline.evaluate.efficiency import count_flops
from dtkd_pipeline.teacher import Teacher, build_teacher_networks, resolve_config
from dtkd_pipeline.teacher.layers import GroupNorm32
from dtkd_pipeline.teacher.sampler import Precision
from dtkd_pipeline.teacher.swin import WindowAttention

_COMPILE_LEVERS: dict[str, CompileMode] = {
    "compile": "default",
    "graphs": "reduce-overhead",
    "autotune": "max-autotune-no-cudagraphs",
}


@dataclass(frozen=True)
class Variant:
    name: str
    precision: Precision
    channels_last: bool
    compile_mode: CompileMode | None
    cudnn_benchmark: bool
    groupnorm_fp32_copy: bool = False
    unfused_window_attention: bool = False

    @classmethod
    def parse(cls, name: str) -> Variant:
        precision, *levers = name.split("+")
        if precision not in ("fp32", "tf32", "bf16", "fp16"):
            raise SystemExit(f"variant {name!r}: precision must be fp32, tf32, bf16 or fp16")
        unknown = set(levers) - {"nhwc", "cudnn", "gn32", "bmmattn", *_COMPILE_LEVERS}
        if unknown:
            raise SystemExit(f"variant {name!r}: unknown lever(s) {sorted(unknown)}")
        modes = [_COMPILE_LEVERS[lever] for lever in levers if lever in _COMPILE_LEVERS]
        if len(modes) > 1:
            raise SystemExit(f"variant {name!r}: at most one of compile, graphs, autotune")
        return cls(
            name,
            precision,  # type: ignore[arg-type]
            "nhwc" in levers,
            modes[0] if modes else None,
            "cudnn" in levers,
            "gn32" in levers,
            "bmmattn" in levers,
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="v1", help="preset (v1/v2/v3) or official YAML path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", help="comma list (see above); default bf16 on CUDA, fp32 CPU")
    parser.add_argument("--lr-size", type=int, default=64, help="LR tile side (SR is 4x)")
    parser.add_argument("--batch-sizes", help="comma list; default 1,2 on CPU, 1,16,64 on CUDA")
    parser.add_argument(
        "--tiles",
        type=int,
        help="tiles generated (default 2x max batch); each batch size is timed on 2x its size",
    )
    parser.add_argument("--baseline", action="store_true", help="time upstream's batch-1 loop")
    parser.add_argument("--baseline-tiles", type=int, default=8)
    parser.add_argument("--breakdown", action="store_true", help="per-network ms and TFLOP/s")
    parser.add_argument("--quality", type=int, default=0, help="tiles for the fp32 comparison")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="CUDA kernel table of one largest-batch sample() per variant",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    return parser.parse_args()


def timed(run: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


class Bench:
    """Random networks built once; each variant wraps them (layout is set per variant)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.config = resolve_config(args.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            self.unet, self.autoencoder = build_teacher_networks(self.config)
        self.device = device

    def teacher(self, variant: Variant) -> Teacher:
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
        GroupNorm32.half_io = not variant.groupnorm_fp32_copy
        WindowAttention.fused_half = not variant.unfused_window_attention
        torch._dynamo.reset()  # compile caches of an earlier variant must not be reused
        return Teacher.from_networks(
            self.unet,
            self.autoencoder,
            self.config,
            device=self.device,
            precision=variant.precision,
            channels_last=variant.channels_last,
            compile_mode=variant.compile_mode,
        )


def sample_all(teacher: Teacher, lr: torch.Tensor, batch: int, rng: str = "per-sample") -> list:
    outputs = []
    for start in range(0, lr.shape[0], batch):
        chunk = lr[start : start + batch]
        ids = list(range(start, start + chunk.shape[0]))
        sr = teacher.sample(chunk, seed=0, rng=rng, sample_ids=ids)  # type: ignore[arg-type]
        outputs.append((sr * 255).round_().to(torch.uint8))
    return outputs


def throughput(
    bench: Bench, variant: Variant, lr: torch.Tensor, batches: list[int]
) -> list[dict[str, Any]]:
    teacher = bench.teacher(variant)
    rows = []
    for batch in batches:
        try:
            warmup = timed(lambda b=batch: teacher.sample(lr[:b], seed=0), bench.device)
            tiles = lr[: 2 * batch]
            seconds = timed(lambda b=batch, t=tiles: sample_all(teacher, t, b), bench.device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"variant": variant.name, "batch": batch, "skipped": "out of memory"})
            print(f"  {variant.name:<24} batch {batch:>4}: out of memory")
            continue
        rate = tiles.shape[0] / seconds
        rows.append(
            {
                "variant": variant.name,
                "batch": batch,
                "tiles": tiles.shape[0],
                "seconds": seconds,
                "tiles_per_s": rate,
                "warmup_s": warmup,
            }
        )
        print(
            f"  {variant.name:<24} batch {batch:>4}: {rate:9.2f} tiles/s "
            f"({tiles.shape[0]} tiles in {seconds:.2f} s; warm-up {warmup:.1f} s)"
        )
    return rows


def baseline(bench: Bench, lr: torch.Tensor, tiles: int) -> dict[str, Any]:
    """Upstream's CLI: one image per call, fp16 autocast (use_amp=True), torch.manual_seed(seed)."""
    precision: Precision = "fp16" if bench.device.type == "cuda" else "fp32"
    teacher = bench.teacher(Variant("official", precision, False, None, False))
    teacher.sample(lr[:1], seed=12345, rng="official")
    seconds = timed(
        lambda: [teacher.sample(lr[i : i + 1], seed=12345, rng="official") for i in range(tiles)],
        bench.device,
    )
    rate = tiles / seconds
    print(f"  official-style loop (batch 1, {precision}, one stream per image): {rate:.2f} tiles/s")
    return {"variant": f"official loop ({precision}, batch 1)", "tiles_per_s": rate}


def breakdown(bench: Bench, variant: Variant, lr_size: int, batch: int) -> dict[str, Any]:
    """Median ms of each network call at `batch`, and the TFLOP/s it reaches."""
    teacher = bench.teacher(variant)
    unet, encode, decode = teacher._network_calls()
    hr = 4 * lr_size
    layout = teacher._layout
    y_up = layout(torch.rand(batch, 3, hr, hr, device=bench.device) * 2 - 1)
    lq = layout(torch.rand(batch, 3, lr_size, lr_size, device=bench.device) * 2 - 1)
    z = layout(torch.randn(batch, 3, lr_size, lr_size, device=bench.device))
    t = teacher._coefficients.timesteps[:1]
    calls = {  # (as sampled, eager for counting: compiled kernels bypass the FLOP counter)
        "VQ encode": (
            lambda: teacher._call(encode, y_up),
            lambda: teacher.autoencoder.encode(y_up),
        ),
        "UNet (one of T calls)": (
            lambda: teacher._call(unet, z, t, lq),
            lambda: teacher.unet(z, t, lq),
        ),
        "VQ decode": (lambda: teacher._call(decode, z), lambda: teacher.autoencoder.decode(z)),
    }
    figures = {}
    with torch.inference_mode(), teacher._math_mode():
        for name, (call, eager) in calls.items():
            flops = count_flops(eager)
            for _ in range(2):
                call()
            times = sorted(timed(call, bench.device) for _ in range(5))
            ms = 1e3 * times[len(times) // 2]
            tflops = flops / (ms / 1e3) / 1e12
            figures[name] = {"ms": ms, "tflop": flops / 1e12, "tflop_per_s": tflops}
            print(f"  {name:<22} {ms:8.2f} ms  {flops / 1e12:7.2f} TFLOP  {tflops:6.1f} TFLOP/s")
    return figures


def profile(bench: Bench, variant: Variant, lr: torch.Tensor, batch: int) -> None:
    """Where the device time goes: the top kernels of one sample() call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    teacher = bench.teacher(variant)
    teacher.sample(lr[:batch], seed=0)  # warm-up
    cuda = bench.device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with torch_profile(activities=[activity]) as prof:
        teacher.sample(lr[:batch], seed=0)
        synchronize(bench.device)
    print(f"profile, {variant.name}, batch {batch}:")
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))


def psnr_u8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def quality(bench: Bench, variants: list[Variant], lr: torch.Tensor) -> list[dict[str, Any]]:
    reference = torch.cat(sample_all(bench.teacher(Variant.parse("fp32")), lr, 16))
    rows = []
    for variant in variants:
        if variant.precision == "fp32" and variant.compile_mode is None:
            continue
        out = torch.cat(sample_all(bench.teacher(variant), lr, 16))
        differ = (out != reference).float().mean().item()
        beyond_one = ((out.int() - reference.int()).abs() > 1).float().mean().item()
        value = psnr_u8(out, reference)
        rows.append(
            {
                "variant": variant.name,
                "psnr_vs_fp32_db": value,
                "uint8_differ": differ,
                "uint8_differ_by_more_than_1": beyond_one,
            }
        )
        print(
            f"  {variant.name:<24} PSNR vs fp32 {value:6.2f} dB; uint8 values differing "
            f"{100 * differ:5.2f}% (by more than 1 level: {100 * beyond_one:5.2f}%)"
        )
    return rows


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    names = args.variants or ("bf16" if cuda else "fp32")
    variants = [Variant.parse(v) for v in names.split(",")]
    batches = [int(b) for b in (args.batch_sizes or ("1,16,64" if cuda else "1,2")).split(",")]
    tiles = args.tiles or 2 * max(batches)
    generator = torch.Generator().manual_seed(args.seed)
    # Smooth random LR content (bicubic-upsampled noise): closer to images than white noise.
    coarse = torch.rand(tiles, 3, args.lr_size // 4, args.lr_size // 4, generator=generator)
    lr = F.interpolate(coarse, size=args.lr_size, mode="bicubic").clamp(0, 1).to(device)
    bench = Bench(args, device)
    side = args.lr_size
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; teacher "
        f"resshift-{bench.config.version} (T={bench.config.diffusion.steps}), random weights"
    )
    print(f"tiles: {side}x{side} -> {4 * side}x{4 * side}")
    results: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "lr_size": side,
        "throughput": [],
    }
    for variant in variants:
        results["throughput"] += throughput(bench, variant, lr, batches)
    if args.baseline:
        results["baseline"] = baseline(bench, lr, min(args.baseline_tiles, tiles))
    if args.breakdown:
        results["breakdown"] = {}
        for variant in variants:
            print(f"breakdown, {variant.name}, batch {max(batches)}:")
            results["breakdown"][variant.name] = breakdown(bench, variant, side, max(batches))
    if args.profile:
        for variant in variants:
            profile(bench, variant, lr, max(batches))
    if args.quality:
        print(f"quality against fp32 (IEEE) on {args.quality} tiles, same noise:")
        results["quality"] = quality(bench, variants, lr[: args.quality])
    timed_rows = [r for r in results["throughput"] if "tiles_per_s" in r]
    if timed_rows:
        best = max(timed_rows, key=lambda r: r["tiles_per_s"])
        line = f"summary: best {best['variant']} batch {best['batch']}: {best['tiles_per_s']:.2f}"
        if "baseline" in results:
            speedup = best["tiles_per_s"] / results["baseline"]["tiles_per_s"]
            line += f" tiles/s = {speedup:.1f}x the official-style loop"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
