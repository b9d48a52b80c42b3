"""The GPU benchmark scripts run end to end on the CPU with the tiny teacher and print figures.

They are the deliverables of docs/performance.md; these runs keep them from rotting between the
sessions that have a GPU. Numbers are asserted positive and consistent, not compared to targets.
The two teacher runs sample several full diffusion chains (1-2 min on 2 cores): slow tier.
"""

from __future__ import annotations

import json
import re
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
