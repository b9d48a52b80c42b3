"""The GPU benchmark scripts run end to end on the CPU with the tiny teacher and print figures.

They are the deliverables of docs/performance.md; these runs keep them from rotting between the
sessions that have a GPU (each step of benchmarks/gpu_suite.sh runs one of them: an option a
script no longer takes would waste one of those rare runs). Numbers are asserted positive and
consistent, not compared to targets. The two teacher runs sample several full diffusion chains
(1-2 min on 2 cores): slow tier.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.pipeline_helpers import run_command

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    return run_command([sys.executable, script, *args], cwd=BENCHMARKS)


@pytest.mark.slow
def test_teacher_throughput_reports_lever_baseline_and_breakdown(
    resshift_parity_dir: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "teacher.json"
    output = _run(
        "teacher_throughput.py",
        "--config", str(resshift_parity_dir / "config.yaml"),
        "--lr-size", "64",
        "--variants", "fp32+nhwc",
        "--batch-sizes", "1",
        "--baseline", "--baseline-tiles", "1",
        "--breakdown",
        "--json", str(out_json),
    )  # fmt: skip
    assert "device: CPU" in output and "official-style loop" in output
    results = json.loads(out_json.read_text())
    rates = {row["variant"]: row["tiles_per_s"] for row in results["throughput"]}
    assert set(rates) == {"fp32+nhwc"} and rates["fp32+nhwc"] > 0
    unet = results["breakdown"]["fp32+nhwc"]["UNet (one of T calls)"]
    assert unet["ms"] > 0 and unet["tflop"] > 0
    assert re.search(r"summary: best fp32\+nhwc batch 1: [\d.]+ tiles/s = [\d.]+x", output)


@pytest.mark.slow
def test_cache_teacher_end_to_end_fills_a_store(resshift_parity_dir: Path) -> None:
    output = _run(
        "cache_teacher_e2e.py",
        "--config", str(resshift_parity_dir / "config.yaml"),
        "--tiles", "2", "--batch", "1", "--dwt",
    )  # fmt: skip
    assert re.search(r"computed 2 tiles in [\d.]+s", output)
    assert re.search(r"summary: end to end [\d.]+ tiles/s \(2 tiles", output)


def test_student_latency_prints_batch_one_and_best_batch(tmp_path: Path) -> None:
    out_json = tmp_path / "student.json"
    output = _run(
        "student_latency.py",
        "--sizes", "16", "--batch-sizes", "1,2", "--warmup", "0", "--runs", "2",
        "--json", str(out_json),
    )  # fmt: skip
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["lr_size"], r["batch"]) for r in rows] == [(16, 1), (16, 2)]
    assert all(r["median_ms"] > 0 for r in rows)
    assert "summary 16px: batch 1" in output


def test_train_step_reports_each_config_with_the_dwt_loss_share() -> None:
    output = _run(
        "train_step.py",
        "--student", "swinir-tiny-x4", "--patch", "16", "--batch", "2",
        "--warmup", "0", "--iters", "1", "--skip-loader",
        "--configs", "fp32,fp32+fused,bf16+fused",
    )  # fmt: skip
    rows = re.findall(
        r"^\| (fp32|bf16), (foreach|fused) Adam \|.*\| ([\d.]+) ms \(([\d.]+)%\) \|", output, re.M
    )
    assert [(precision, adam) for precision, adam, _, _ in rows] == [
        ("fp32", "foreach"),
        ("fp32", "fused"),
        ("bf16", "fused"),
    ]
    # One timed step on a shared CPU: the share is noise-bound (seen above 100%), so only its
    # presence and sign are checked.
    assert all(float(ms) > 0 and float(share) > 0 for _, _, ms, share in rows)


def test_train_step_rejects_an_unknown_config() -> None:
    with pytest.raises(AssertionError, match="unknown step config 'fp8'"):
        _run("train_step.py", "--skip-loader", "--configs", "fp8")


def test_cache_io_reports_every_format_with_the_machine() -> None:
    output = _run("cache_io.py", "--tiles", "4", "--tile-size", "32", "--shard-size", "2")
    assert "machine: CPU" in output
    for name in ("zarr zstd-3", "zarr blosc-zstd-3", "zarr uncompressed", "png files", "npy files"):
        row = re.search(rf"^{name} +([\d.]+) +(\d+)", output, re.M)
        assert row is not None and float(row.group(1)) > 0, name


def test_train_step_loader_compares_zarr_with_png() -> None:
    output = _run(
        "train_step.py",
        "--device", "cpu", "--skip-step", "--num-workers", "0",
        "--loader-samples", "8", "--loader-batch", "4", "--tile", "64", "--stride", "64",
        "--patch", "16",
    )  # fmt: skip
    assert "loader benchmark on CPU" in output
    png = re.search(r"^\| PNG folder .*\| ([\d.]+) \| 1.00x \|$", output, re.M)
    zarr = re.search(r"^\| Zarr ShardStreamDataset \| ([\d.]+) \| ([\d.]+)x \|$", output, re.M)
    assert png is not None and zarr is not None
    assert float(png.group(1)) > 0 and float(zarr.group(1)) > 0


def test_train_step_loop_runs_the_distill_stage_and_reports_its_speed() -> None:
    """The gpu_suite "loop" step: the real distill stage with its throughput line."""
    output = _run(
        "train_step.py",
        "--device", "cpu", "--skip-step", "--skip-loader", "--loop", "2", "--batch", "2",
        "--patch", "16", "--num-workers", "0", "--tile", "64", "--stride", "64",
    )  # fmt: skip
    assert "Loop: distill stage, 2 iterations, batch 2, patch 16, fp32" in output
    speed = re.search(r"training speed: ([\d.]+) samples/s .* waiting for data ([\d.]+)%", output)
    assert speed is not None and float(speed.group(1)) > 0


def _suite_steps() -> list[tuple[str, str, list[str]]]:
    """(step, script, arguments) of every benchmark-script step of gpu_suite.sh."""
    text = (BENCHMARKS / "gpu_suite.sh").read_text().replace("\\\n", " ")
    steps = re.findall(r'run (\S+) \d+ "\$py" (\w+\.py) (.*?) ;;', text)
    return [
        (step, script, shlex.split(args.replace('"$out', '"/tmp'))) for step, script, args in steps
    ]


def test_every_gpu_suite_step_passes_options_and_variants_its_script_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked here because the suite runs only where a GPU is lent, rarely and time-boxed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    steps = _suite_steps()
    assert {script for _, script, _ in steps} == {
        "teacher_throughput.py", "cache_teacher_e2e.py", "student_latency.py", "train_step.py"
    }  # fmt: skip
    for step, script, args in steps:
        module = importlib.import_module(script.removesuffix(".py"))
        monkeypatch.setattr(sys, "argv", [script, *args])
        parsed = module.parse_args()  # argparse exits on an option the script does not take
        variants = (getattr(parsed, "variants", None) or "").split(",")
        if script == "teacher_throughput.py":
            [module.Variant.parse(name) for name in variants]
        elif script == "student_latency.py":
            levers = {lever for name in variants for lever in name.split("+")[1:]}
            assert levers <= {*module._MODES, "opsattn"}, step
        elif script == "train_step.py" and parsed.configs:
            [module.parse_step_config(name) for name in parsed.configs.split(",")]
