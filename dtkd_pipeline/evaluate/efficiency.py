"""Efficiency tables: parameters, FLOPs per image and latency of the student and the teacher.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` reports: 2 per multiply-add, counted for
matmuls, linear layers, convolutions and attention only (norms, activations, interpolation and
element-wise ops are not counted, as in the SR papers' tables). Latency is wall time per call of
a whole batch: CUDA events around each call on CUDA, `time.perf_counter` on CPU.

A model enters the tables as an `EfficiencyTarget` (see `student_target` and `teacher_target`);
`benchmark_models` measures a list of them and `write_efficiency` writes JSON, markdown
and a chart.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from dtkd_pipeline import atomic
from dtkd_pipeline.compiled import CompileMode, check_compile_mode, compile_static, run_compiled
from dtkd_pipeline.evaluate.figures import efficiency_figure, png_bytes
from dtkd_pipeline.student import available_students, build_student
from dtkd_pipeline.teacher.factory import ConfigLike, random_teacher
from dtkd_pipeline.teacher.sampler import Teacher
from dtkd_pipeline.upscale import load_upscaler

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INPUT_SEED = 0
"""Seed of the random LR inputs (and of the teacher's noise): runs are repeatable."""


# ------------------------------------------------------------------------------ counting


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(parameter.numel() for parameter in module.parameters())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` as FlopCounterMode counts them (2 per multiply-add).

    Attention runs on SDPA's math kernel here: FlopCounterMode has no formula for the CPU's
    fused flash kernel and would count its matmuls as zero.
    """
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of `runs` timed calls of a batch of `batch` images."""

    median_ms: float
    p90_ms: float
    runs: int
    batch: int
    images_per_s: float


def measure_latency(
    fn: Callable[[], Any],
    *,
    device: str | torch.device,
    warmup: int,
    runs: int,
    batch: int,
) -> LatencyStats:
    """Time `runs` calls of `fn` after `warmup` untimed ones (allocator, cuDNN autotune, caches)."""
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, batch >= 1; got {runs}, {warmup}, {batch}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times_ms: list[float] = []
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            for _ in range(runs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                # The queue was empty at `start`, so the events span the host work of fn too.
                end.synchronize()
                times_ms.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            start_s = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - start_s) * 1e3)
    median_ms = float(np.percentile(times_ms, 50))
    return LatencyStats(
        median_ms=median_ms,
        p90_ms=float(np.percentile(times_ms, 90)),
        runs=runs,
        batch=batch,
        images_per_s=batch / (median_ms / 1e3) if median_ms > 0 else float("inf"),
    )


# --------------------------------------------------------------------------- model specs


@dataclass(frozen=True)
class EfficiencyTarget:
    """One model as the efficiency tables see it.

    `make_call(batch, lr_size, device)` builds a fixed random LR input of batch×3×lr_size×lr_size
    in [0, 1] on `device` and returns a zero-argument function that runs the model on it once (so
    input creation stays out of the timing). `modules` are what the parameter count sums.
    `make_eager_call`, when given, is the uncompiled twin of `make_call` that FLOPs are counted
    on (the FLOP counter cannot see inside compiled kernels).
    """

    name: str
    description: str
    modules: tuple[nn.Module, ...]
    make_call: Callable[[int, int, torch.device], Callable[[], Any]]
    random_weights: bool
    make_eager_call: Callable[[int, int, torch.device], Callable[[], Any]] | None = None

    @property
    def parameters(self) -> int:
        return sum(count_parameters(module) for module in self.modules)


def _random_lr(batch: int, lr_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(INPUT_SEED)  # CPU generator: same input everywhere
    return torch.rand(batch, 3, lr_size, lr_size, generator=generator).to(device)


def student_target(
    label: str = "swinir-s-x4",
    *,
    arch_or_path: str | Path | None = None,
    compile_mode: CompileMode | None = None,
) -> EfficiencyTarget:
    """The student, named `label` in the tables: one forward pass of the LR batch.

    `arch_or_path` is a student name (`build_student`, random weights) or a weights file (its
    architecture from the file's "arch" entry, else swinir-s-x4; loaded by
    `load_student_weights`). Default: `label` itself as a student name. `compile_mode` times the
    forward through `torch.compile` (one compilation per batch size and precision, in the
    warm-up runs); "reduce-overhead" replays CUDA graphs.
    """
    check_compile_mode(compile_mode)
    arch, model, weights = _load_student(label if arch_or_path is None else arch_or_path)
    model.eval().requires_grad_(False)
    weights_note = "" if weights is None else f" ({weights.name})"
    compiled_note = "" if compile_mode is None else f", torch.compile {compile_mode}"
    return EfficiencyTarget(
        name=label,
        description=f"student {arch}{weights_note}: one forward pass{compiled_note}",
        modules=(model,),
        make_call=_student_calls(model, compile_static(model, compile_mode), compile_mode),
        random_weights=weights is None,
        make_eager_call=_student_calls(model, model, None) if compile_mode is not None else None,
    )


def _load_student(source: str | Path) -> tuple[str, nn.Module, Path | None]:
    """(architecture, model, weights file): a student name builds random weights (file None)."""
    if isinstance(source, str) and source in available_students():
        return source, build_student(source), None
    upscaler = load_upscaler(source, device="cpu")  # reads the arch the file was trained as
    return upscaler.arch, upscaler.model, Path(source)


def _student_calls(
    model: nn.Module, net: Callable[..., torch.Tensor], mode: CompileMode | None
) -> Callable[[int, int, torch.device], Callable[[], Any]]:
    """A `make_call` that moves `model` to the device and runs `net` (it, or its compiled twin
    in `mode`) on a fixed random LR batch."""

    def make_call(batch: int, lr_size: int, device: torch.device) -> Callable[[], Any]:
        model.to(device)
        lr = _random_lr(batch, lr_size, device)

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return run_compiled(net, mode, lr)

        return call

    return make_call


def teacher_target(
    teacher: Teacher | ConfigLike = "v1",
    *,
    one_step: bool = False,
    device: str | torch.device = "cpu",
) -> EfficiencyTarget:
    """The ResShift teacher at its trained step count T, or one step (`one_step=True`).

    `teacher` is a built `Teacher` or a config / preset name, from which a random-weights teacher
    is built on `device`: enough for speed, not for outputs. The benchmark must run on the
    teacher's device. One step is one UNet call plus VQ encode/decode: the cost of a one-step
    model such as SinSR. Share one `Teacher` between the two targets to build it only once.
    """
    if not isinstance(teacher, Teacher):
        teacher = random_teacher(teacher, device=device)
    if teacher.precision != "fp32":
        # Teacher.sample autocasts by its own precision, which would override benchmark_models'.
        raise ValueError(
            f"teacher {teacher.name} was built with precision {teacher.precision!r}; build it "
            "with precision='fp32' and choose precisions in benchmark_models"
        )
    built = teacher  # narrowed type for the closure

    def make_call(batch: int, lr_size: int, device: torch.device) -> Callable[[], Any]:
        if not _same_device(built.device, device):
            raise ValueError(
                f"teacher {built.name} is on {built.device} but the benchmark runs on {device}: "
                "build the teacher on the benchmark device"
            )
        lr = _random_lr(batch, lr_size, built.device)
        return lambda: built.sample(lr, seed=INPUT_SEED, rng="per-sample", one_step=one_step)

    steps = 1 if one_step else teacher.steps
    what = (
        "one UNet call + VQ encode/decode (cost of a one-step model such as SinSR)"
        if one_step
        else f"{teacher.steps} UNet calls + VQ encode/decode (full sampler)"
    )
    return EfficiencyTarget(
        name=f"{teacher.name} ({steps} step{'s' if steps != 1 else ''})",
        description=f"teacher ResShift {teacher.version}: {what}",
        modules=(teacher.unet, teacher.autoencoder),
        make_call=make_call,
        random_weights=teacher.random_weights,
    )


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same GPU when cuda:0 is the current device.
    def index(d: torch.device) -> int | None:
        if d.type == "cuda" and d.index is None:
            return torch.cuda.current_device()
        return d.index

    return a.type == b.type and index(a) == index(b)


# ---------------------------------------------------------------------------- benchmark


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model (platform.processor() is often empty on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or device.type


def _precision_skip_reason(precision: str, device: torch.device) -> str | None:
    if precision == "fp32":
        return None
    if device.type != "cuda":
        return f"{precision} autocast is benchmarked on CUDA only (not representative on CPU)"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "bf16 is not supported by this GPU"
    return None


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def benchmark_models(
    targets: Sequence[EfficiencyTarget],
    *,
    lr_size: int,
    batch_sizes: Sequence[int],
    precisions: Sequence[str],
    warmup: int,
    runs: int,
    device: str | torch.device,
) -> list[dict[str, Any]]:
    """One JSON-able row per target × precision × batch size (skipped settings say why).

    FLOPs are counted once per target, at batch 1 in fp32, and reported per image. Every row of
    a (target, precision) group carries `best_batch`, the batch size with the highest images/s.
    """
    device = torch.device(device)
    _check_settings(precisions, batch_sizes)
    common = _run_fields(device, lr_size, warmup)
    rows: list[dict[str, Any]] = []
    settings = len(targets) * len(precisions) * len(batch_sizes)  # each timed warmup + runs times
    progress = tqdm(total=settings, desc="benchmark", unit="setting")
    with progress:
        for target in targets:
            described = {**_target_fields(target, lr_size, device), **common}
            for precision in precisions:
                skip = _precision_skip_reason(precision, device)
                group = []
                for batch in batch_sizes:
                    progress.set_postfix_str(f"{target.name} {precision} b{batch}")
                    row = _benchmark_one(
                        target, described, precision, batch, lr_size, skip, warmup, runs, device
                    )
                    group.append(row)
                    progress.update()
                _mark_best_batch(group)
                rows.extend(group)
    return rows


def _check_settings(precisions: Sequence[str], batch_sizes: Sequence[int]) -> None:
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {list(PRECISIONS)}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive, got {list(batch_sizes)}")


def _run_fields(device: torch.device, lr_size: int, warmup: int) -> dict[str, Any]:
    """The fields every row of one benchmark run shares: machine, software, input."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "lr_size": lr_size,
        "input_size": f"{lr_size}x{lr_size}",
        "warmup": warmup,
    }


def _target_fields(target: EfficiencyTarget, lr_size: int, device: torch.device) -> dict[str, Any]:
    """The fields of a target's rows: its name and size, FLOPs per image counted at batch 1."""
    flops = count_flops((target.make_eager_call or target.make_call)(1, lr_size, device))
    return {
        "model": target.name,
        "description": target.description,
        "random_weights": target.random_weights,
        "params": target.parameters,
        "flops_per_image": flops,
    }


def _mark_best_batch(group: list[dict[str, Any]]) -> None:
    """Give every row of a (target, precision) group the batch size with the most images/s."""
    timed = [row for row in group if row["skipped"] is None]
    best = max(timed, key=lambda row: row["images_per_s"])["batch"] if timed else None
    for row in group:
        row["best_batch"] = best


def _benchmark_one(
    target: EfficiencyTarget,
    described: dict[str, Any],
    precision: str,
    batch: int,
    lr_size: int,
    skip: str | None,
    warmup: int,
    runs: int,
    device: torch.device,
) -> dict[str, Any]:
    row = _untimed_row(described, precision, batch, runs, skip)
    if skip is not None:
        return row
    run = target.make_call(batch, lr_size, device)

    def call() -> Any:
        with _autocast(precision, device):
            return run()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        stats = measure_latency(call, device=device, warmup=warmup, runs=runs, batch=batch)
    except torch.cuda.OutOfMemoryError:
        stats = None  # a batch that does not fit is a result, not a reason to lose the table
    if stats is None:
        # Freed outside the except block: the traceback there still holds the activations.
        del run, call
        torch.cuda.empty_cache()
        row["skipped"] = "CUDA out of memory"
        return row
    row.update(median_ms=stats.median_ms, p90_ms=stats.p90_ms, images_per_s=stats.images_per_s)
    if cuda:
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _untimed_row(
    described: dict[str, Any], precision: str, batch: int, runs: int, skip: str | None
) -> dict[str, Any]:
    """A row with its settings and empty timings (what a skipped setting reports)."""
    return {
        **described,
        "precision": precision,
        "batch": batch,
        "runs": runs,
        "median_ms": None,
        "p90_ms": None,
        "images_per_s": None,
        "peak_memory_mb": None,
        "skipped": skip,
    }


# --------------------------------------------------------------------------------- output


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def efficiency_markdown(rows: Iterable[dict[str, Any]]) -> str:
    """The markdown table of `benchmark_models` rows, with device, input and weights notes."""
    rows = list(rows)
    lines = [*_table_lines(rows), "", *_note_lines(rows), *_skipped_lines(rows)]
    return "\n".join(lines) + "\n"


def _table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Header and one line per row; the best batch of each model and precision in bold."""
    lines = [
        "| model | params (M) | GFLOPs/image @ input | precision | batch | median ms | p90 ms "
        "| images/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        images_per_s = _number(row["images_per_s"], 2)
        if row["skipped"] is None and row["batch"] == row.get("best_batch"):
            images_per_s = f"**{images_per_s}**"  # the best batch of this model and precision
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.3f} "
            f"| {row['flops_per_image'] / 1e9:.2f} @ {row['input_size']} | {row['precision']} "
            f"| {row['batch']} | {_number(row['median_ms'], 2)} | {_number(row['p90_ms'], 2)} "
            f"| {images_per_s} |"
        )
    return lines


def _note_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the numbers were measured on and whether the weights were random."""
    devices = sorted({f"{row['device']} ({row['device_type']})" for row in rows})
    sizes = sorted({row["input_size"] for row in rows})
    torch_versions = sorted({row["torch"] for row in rows})
    random = list(dict.fromkeys(row["model"] for row in rows if row["random_weights"]))
    return [
        f"Device: {', '.join(devices)}; torch {', '.join(torch_versions)}; LR input "
        f"{', '.join(sizes)}; FLOPs count 2 per multiply-add (matmuls, convolutions, attention); "
        "bold: the batch size with the highest images/s.",
        "Weights: "
        + (
            f"random for {', '.join(random)} (timing and FLOPs only, outputs meaningless)."
            if random
            else "trained for all models."
        ),
    ]


def _skipped_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A "Skipped:" list, one line per model, precision and reason (none if nothing was)."""
    skipped: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        if row["skipped"] is not None:
            key = (row["model"], row["precision"], row["skipped"])
            skipped.setdefault(key, []).append(str(row["batch"]))
    if not skipped:
        return []
    return ["", "Skipped:"] + [
        f"- {model} {precision}, batch {', '.join(batches)}: {reason}"
        for (model, precision, reason), batches in skipped.items()
    ]


def write_efficiency(
    rows: Sequence[dict[str, Any]],
    json_path: str | Path,
    markdown_path: str | Path,
    chart_path: str | Path,
) -> None:
    """Write the rows as a JSON list, a markdown table and a latency/throughput chart (PNG);
    the three land together, so a failure (a full disk) never leaves a new table beside an old
    one."""
    files = {
        Path(json_path): atomic.json_text(list(rows)).encode("utf-8"),
        Path(markdown_path): efficiency_markdown(rows).encode("utf-8"),
        Path(chart_path): png_bytes(efficiency_figure(rows)),
    }
    atomic.write_together(files)
