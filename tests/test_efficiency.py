"""Efficiency tables: parameter and FLOP counts against the architecture, latency, outputs."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from dtkd_pipeline.evaluate import efficiency
from dtkd_pipeline.evaluate.efficiency import (
    EfficiencyTarget,
    benchmark_models,
    count_flops,
    count_parameters,
    measure_latency,
    student_target,
    teacher_target,
    write_efficiency,
)
from dtkd_pipeline.evaluate.figures import efficiency_figure
from dtkd_pipeline.student import build_student
from dtkd_pipeline.teacher.factory import random_teacher
from tests.pipeline_helpers import bars_made

TINY_TEACHER_CONFIG = Path(__file__).parent / "data" / "resshift_tiny_t2.yaml"


def swinir_lightweight_x4_flops(height: int, width: int) -> int:
    """Hand count for SwinIR lightweight x4 on one height×width LR image, 2 FLOPs per MAC.

    embed_dim 60, 4 RSTBs × 6 Swin layers, 6 heads, window 8, mlp_ratio 2, 3×3 conv_first, one
    3×3 conv per RSTB, a 3×3 conv_after_body and the pixelshuffledirect head (3×3 conv to 3·4²
    channels, then PixelShuffle). Norms, GELU, softmax, biases and the pixel shuffle are free.
    """
    dim, heads, window, hidden = 60, 6, 8, 120
    head_dim = dim // heads
    layers = 4 * 6
    pixels = height * width  # tokens: the body runs at LR resolution (sizes are window multiples)
    tokens_per_window = window * window
    windows = (height // window) * (width // window)

    def conv3x3(c_in: int, c_out: int) -> int:
        return 2 * c_in * c_out * 3 * 3 * pixels

    def linear(c_in: int, c_out: int) -> int:
        return 2 * c_in * c_out * pixels

    qkv = linear(dim, 3 * dim)
    proj = linear(dim, dim)
    q_kt = windows * heads * 2 * tokens_per_window * tokens_per_window * head_dim
    attn_v = windows * heads * 2 * tokens_per_window * tokens_per_window * head_dim
    mlp = linear(dim, hidden) + linear(hidden, dim)
    swin_layer = qkv + q_kt + attn_v + proj + mlp

    conv_first = conv3x3(3, dim)
    rstb_convs = 4 * conv3x3(dim, dim)
    conv_after_body = conv3x3(dim, dim)
    upsample = conv3x3(dim, 3 * 4**2)
    return conv_first + layers * swin_layer + rstb_convs + conv_after_body + upsample


def test_student_flops_match_hand_count() -> None:
    counted = count_flops(student_target("swinir-s-x4").make_call(1, 64, torch.device("cpu")))
    expected = swinir_lightweight_x4_flops(64, 64)
    assert counted == pytest.approx(expected, rel=0.01)
    assert 8.0e9 < counted < 9.5e9  # ~8.7 GFLOP, as published for SwinIR-light at 64×64


def test_student_parameter_count() -> None:
    assert count_parameters(build_student("swinir-s-x4")) == 929_628


def test_measure_latency_on_a_trivial_function() -> None:
    calls = []
    stats = measure_latency(
        lambda: calls.append(sum(range(1000))), device="cpu", warmup=2, runs=7, batch=4
    )
    assert len(calls) == 2 + 7
    assert stats.runs == 7 and stats.batch == 4
    assert 0 < stats.median_ms <= stats.p90_ms
    assert stats.images_per_s == pytest.approx(4 / (stats.median_ms / 1e3))
    with pytest.raises(ValueError, match="need runs >= 1"):
        measure_latency(lambda: None, device="cpu", warmup=0, runs=0, batch=1)


@pytest.fixture(scope="module")
def tiny_targets() -> list[EfficiencyTarget]:
    teacher = random_teacher(TINY_TEACHER_CONFIG)  # shared: built once for both teacher targets
    return [
        student_target("swinir-tiny-x4"),
        teacher_target(teacher),
        teacher_target(teacher, one_step=True),
    ]


@pytest.fixture(scope="module")
def tiny_rows(tiny_targets: list[EfficiencyTarget]) -> list[dict[str, Any]]:
    settings: dict[str, Any] = {
        "lr_size": 64,  # the teacher needs >= 33 px and pads to a multiple of 64 anyway
        "precisions": ["fp32", "bf16"],
        "warmup": 0,
        "runs": 1,
        "device": "cpu",
    }
    # One batch size for the teacher: each of its calls takes about a second on a small CPU.
    student_rows = benchmark_models(tiny_targets[:1], batch_sizes=[1, 2], **settings)
    return student_rows + benchmark_models(tiny_targets[1:], batch_sizes=[1], **settings)


def test_every_benchmark_row_has_the_table_fields(
    tiny_targets: list[EfficiencyTarget], tiny_rows: list[dict]
) -> None:
    assert len(tiny_rows) == 2 * 2 + 2 * 2 * 1  # student: 2 batches; teachers: 1
    required = {
        "model",
        "description",
        "params",
        "flops_per_image",
        "input_size",
        "lr_size",
        "precision",
        "batch",
        "median_ms",
        "p90_ms",
        "images_per_s",
        "best_batch",
        "skipped",
        "device",
        "torch",
        "random_weights",
    }
    for row in tiny_rows:
        assert required <= row.keys()
        assert row["input_size"] == "64x64" and row["torch"] == torch.__version__
        assert row["random_weights"] is True
        if row["precision"] == "bf16":
            assert row["skipped"] and "CUDA" in row["skipped"]
            assert row["median_ms"] is None and row["best_batch"] is None
        else:
            assert row["skipped"] is None
            assert 0 < row["median_ms"] <= row["p90_ms"]
            timed = [r for r in tiny_rows if r["model"] == row["model"] and r["skipped"] is None]
            fastest = max(timed, key=lambda r: r["images_per_s"])
            assert row["best_batch"] == fastest["batch"]

    by_model = {row["model"]: row for row in tiny_rows}
    assert list(by_model) == [target.name for target in tiny_targets]
    student, full, one_step = (by_model[target.name] for target in tiny_targets)
    assert student["params"] == count_parameters(build_student("swinir-tiny-x4"))
    assert full["params"] == one_step["params"]  # same networks, fewer calls
    assert "RANDOM-WEIGHTS" in full["model"] and "(2 steps)" in full["model"]
    assert "(1 step)" in one_step["model"]
    # Two UNet calls versus one; VQ encode/decode are shared by both.
    assert one_step["flops_per_image"] < full["flops_per_image"] < 2 * one_step["flops_per_image"]
    assert student["flops_per_image"] < one_step["flops_per_image"]


def test_efficiency_is_written_as_json_a_markdown_table_and_a_chart(
    tiny_rows: list[dict], tmp_path: Path
) -> None:
    json_path, markdown_path = tmp_path / "out" / "efficiency.json", tmp_path / "efficiency.md"
    chart_path = tmp_path / "efficiency.png"
    write_efficiency(tiny_rows, json_path, markdown_path, chart_path)
    with Image.open(chart_path) as chart:
        assert chart.format == "PNG" and chart.width > 600 and chart.height > 300
    assert json.loads(json_path.read_text()) == tiny_rows
    markdown = markdown_path.read_text()
    assert "| model | params (M) | GFLOPs/image @ input |" in markdown
    for model in {row["model"] for row in tiny_rows}:
        assert f"| {model} |" in markdown
    assert "random for" in markdown and "64x64" in markdown
    assert "bf16, batch 1, 2:" in markdown  # the skipped settings say why
    assert not list(tmp_path.rglob("*.tmp*"))  # no temporary files left behind


def test_a_markdown_write_that_fails_leaves_the_old_json_and_markdown_pair(
    tiny_rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while writing efficiency.md must not leave a new efficiency.json beside the
    old table: the two land together or not at all."""
    json_path, markdown_path = tmp_path / "efficiency.json", tmp_path / "efficiency.md"
    json_path.write_text("old json")
    markdown_path.write_text("old table")
    real_write_bytes = Path.write_bytes

    def disk_fills_at_the_markdown(path: Path, data: bytes) -> int:
        if ".efficiency.md." in path.name:  # the markdown's temporary
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", disk_fills_at_the_markdown)
    with pytest.raises(OSError) as info:
        write_efficiency(tiny_rows, json_path, markdown_path, tmp_path / "efficiency.png")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(markdown_path)
    assert json_path.read_text() == "old json" and markdown_path.read_text() == "old table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["efficiency.json", "efficiency.md"]


def test_the_efficiency_chart_draws_each_timed_setting_under_its_model_and_precision(
    tiny_rows: list[dict],
) -> None:
    figure = efficiency_figure(tiny_rows)
    latency, throughput = figure.axes
    expected: dict[str, list[tuple[int, float, float]]] = {}
    for row in tiny_rows:
        if row["skipped"] is None:
            point = (row["batch"], row["median_ms"], row["images_per_s"])
            expected.setdefault(f"{row['model']}, {row['precision']}", []).append(point)
    assert len(expected) == 3  # fp32 of the student and both teachers
    for axis, column in ((latency, 1), (throughput, 2)):
        drawn = {line.get_label(): line.get_data() for line in axis.get_lines()}
        assert set(drawn) == set(expected)  # skipped settings (bf16 on CPU) draw nothing
        for label, points in expected.items():
            xs, ys = drawn[label]
            assert list(xs) == sorted(point[0] for point in points)
            assert list(ys) == pytest.approx([point[column] for point in sorted(points)])
    assert latency.get_ylabel() == "ms per batch (log scale)"
    assert throughput.get_ylabel() == "images/s (log scale)"
    assert f"Speed on {tiny_rows[0]['device']} (LR input 64x64)" == figure._suptitle.get_text()


def test_the_benchmark_bar_counts_settings_timed(
    tiny_targets: list[EfficiencyTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step per model x precision x batch size, each timed warmup + runs times."""
    bars = bars_made(monkeypatch, efficiency)
    settings: dict[str, Any] = {"lr_size": 64, "warmup": 0, "runs": 1, "device": "cpu"}
    benchmark_models(tiny_targets[:1], batch_sizes=[1, 2], precisions=["fp32", "bf16"], **settings)
    assert [(bar.desc, bar.total, bar.unit) for bar in bars] == [("benchmark", 4, "setting")]
    assert bars[0].made.n == 4


def test_benchmark_rejects_bad_settings(tiny_targets: list[EfficiencyTarget]) -> None:
    settings: dict[str, Any] = {"lr_size": 64, "batch_sizes": [1], "warmup": 0, "runs": 1}
    with pytest.raises(ValueError, match="precision"):
        benchmark_models(tiny_targets[:1], precisions=["int8"], device="cpu", **settings)
    with pytest.raises(ValueError, match="benchmark device"):  # the teacher is on the CPU
        benchmark_models(tiny_targets[1:2], precisions=["fp32"], device="meta", **settings)


def test_student_target_from_a_checkpoint(tmp_path: Path) -> None:
    model = build_student("swinir-tiny-x4")
    path = tmp_path / "student.pt"
    torch.save({"model": model.state_dict(), "arch": "swinir-tiny-x4"}, path)
    target = student_target("DTKD", arch_or_path=path)
    assert target.name == "DTKD" and not target.random_weights
    assert "swinir-tiny-x4 (student.pt)" in target.description
    assert target.parameters == count_parameters(model)
    sr = target.make_call(2, 16, torch.device("cpu"))()
    assert sr.shape == (2, 3, 64, 64)


def test_compiled_student_is_timed_compiled_and_counted_eager(
    record_compiled_calls: Callable[[str], list[tuple]],
) -> None:
    """The FLOP counter cannot see into compiled kernels, so FLOPs come from the eager twin."""
    compiled_calls = record_compiled_calls("dtkd_pipeline.evaluate.efficiency")
    target = student_target("tiny", arch_or_path="swinir-tiny-x4", compile_mode="default")
    assert target.description.endswith("torch.compile default")
    settings: dict[str, Any] = {"lr_size": 16, "precisions": ["fp32"], "device": "cpu"}
    rows = benchmark_models([target], batch_sizes=[1, 2], warmup=1, runs=2, **settings)
    # Each batch size: 1 warm-up + 2 timed runs through the compiled forward; none for FLOPs.
    assert compiled_calls == [(1, 3, 16, 16)] * 3 + [(2, 3, 16, 16)] * 3
    eager = benchmark_models(
        [student_target("swinir-tiny-x4")], batch_sizes=[1], warmup=0, runs=1, **settings
    )
    assert rows[0]["flops_per_image"] == eager[0]["flops_per_image"] > 0
    with pytest.raises(ValueError, match="compile mode must be one of"):
        student_target("tiny", arch_or_path="swinir-tiny-x4", compile_mode="fast")  # type: ignore[arg-type]
