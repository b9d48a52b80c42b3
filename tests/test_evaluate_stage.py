"""The evaluate and report stages on a small validation set with tiny random models."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dtkd_pipeline.atomic import OutputFolderError
from dtkd_pipeline.cli import app
from dtkd_pipeline.config import ConfigError, Params, section_dict
from dtkd_pipeline.evaluate.efficiency import write_efficiency
from dtkd_pipeline.evaluate.figures import curve_figure, curve_panels, training_curves
from dtkd_pipeline.evaluate.metrics import MetricWeightsError
from dtkd_pipeline.evaluate.testsets import TestSetError
from dtkd_pipeline.images import ImageReadError, read_image, write_image
from dtkd_pipeline.resize import bicubic_downscale_x4
from dtkd_pipeline.stage_files import EFFICIENCY_JSON, EFFICIENCY_MD, EFFICIENCY_PNG
from dtkd_pipeline.student import StudentWeightsError, build_student
from dtkd_pipeline.teacher import TeacherCheckpointError, build_teacher_networks
from dtkd_pipeline.weights import WeightsError
from stages import evaluate, report
from tests.pipeline_helpers import (
    forbid_teacher,
    make_hr_images,
    pretend_read_only,
    tiny_params,
)

TINY_TEACHER = [
    "teacher.version=tests/data/resshift_tiny_t2.yaml",
    "teacher.random_weights=true",
    "teacher.steps=2",
]


def _student_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_student("swinir-tiny-x4")
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "arch": "swinir-tiny-x4", "iteration": 0}, path)
    return path


def _val_set(folder: Path) -> None:
    """Two whole-image pairs in the prepare stage's val layout (lr/ + hr/, MATLAB bicubic)."""
    for path in make_hr_images(folder / "src", [(96, 128), (80, 80)], seed=3):
        lr, hr = bicubic_downscale_x4(read_image(path).rgb)
        write_image(folder / "lr" / path.name, np.clip(lr, 0, 1))
        write_image(folder / "hr" / path.name, hr)


@pytest.fixture
def params(tmp_path: Path) -> Params:
    _val_set(tmp_path / "prepared" / "val")
    runs = [_student_file(tmp_path / f"s{seed}.pt", seed) for seed in (0, 1)]
    return tiny_params(
        tmp_path,
        tmp_path / "unused",
        [
            *TINY_TEACHER,
            f"evaluate.models.students={{DTKD: ['{runs[0]}', '{runs[1]}']}}",
            "evaluate.metrics=[psnr, ssim]",
            "evaluate.teacher_seeds=[1, 2]",
            "evaluate.teacher_chop=64",
            "evaluate.comparison.images=[img00]",
            "evaluate.comparison.crop=64",
            "evaluate.efficiency.enabled=false",
            "evaluate.bands.enabled=false",
            "report.paper_deltas={demo: {psnr_y: 0.25}}",
        ],
    )


def test_evaluate_averages_runs_and_writes_metrics_csv_and_figures(params: Params) -> None:
    evaluate.run(params, device="cpu")
    cfg = params.evaluate
    metrics = json.loads((cfg.metrics_dir / "demo.json").read_text())
    assert metrics["images"] == 2
    # Two checkpoints and two teacher seeds: mean and std over runs, not over images. (The tiny
    # random teacher's VQ quantisation absorbs the noise, so its seeds may agree exactly.)
    assert metrics["DTKD"]["psnr_y"]["runs"] == 2 and metrics["DTKD"]["psnr_y"]["std"] > 0
    assert metrics["teacher (RANDOM weights)"]["psnr_y"]["runs"] == 2  # named so in every output
    assert metrics["bicubic"]["psnr_y"]["runs"] == 1
    rows = list(csv.DictReader((cfg.out_dir / "demo.csv").open()))
    assert len(rows) == 2 * (1 + 2 + 2)  # images x (bicubic + 2 students + 2 seeds)
    by_run: dict[str, list[float]] = {}
    for row in rows:
        by_run.setdefault(f"{row['model']}/{row['run']}", []).append(float(row["psnr_y"]))
    dtkd_means = [np.mean(v) for k, v in by_run.items() if k.startswith("DTKD/")]
    assert metrics["DTKD"]["psnr_y"]["mean"] == pytest.approx(np.mean(dtkd_means))
    assert metrics["DTKD"]["psnr_y"]["std"] == pytest.approx(np.std(dtkd_means, ddof=1))
    assert (cfg.plots_dir / "comparisons" / "demo" / "img00.png").is_file()
    assert not (cfg.plots_dir / "comparisons" / "demo" / "img01.png").exists()

    params.teacher.preview.parent.mkdir(parents=True)
    write_image(params.teacher.preview, np.zeros((8, 8, 3)))  # as cache-teacher leaves it
    text = report.build_report(params)
    assert "![teacher cache preview](figures/teacher_preview.png)" in text
    assert "| *paper (reported)* | +0.2500 |" in text
    assert re.search(r"\| DTKD \| [-+]\d+\.\d{4} \|", text)  # delta against bicubic
    for link in re.findall(r"\]\(([^)]+\.(?:png|csv))\)", text):
        assert (params.report.out_dir / link).is_file()
    assert "Per-image values: [demo.csv](demo.csv)" in text and "(2 images," in text
    # Each absent piece is named with the stage that makes it, not silently left out.
    assert "*Not measured: `evaluate.efficiency.enabled` is false.*" in text
    assert "*Not analysed: `evaluate.bands.enabled` is false.*" in text
    assert "*No training curves: `" in text and "run `dtkd-pipeline distill`" in text
    assert "No student checkpoint at" in text


def test_ctrl_c_leaves_the_evaluation_outputs_as_they_were_and_says_so(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_set", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        evaluate.run(params, device="cpu")
    (note,) = raised.value.__notes__  # printed by the CLI
    assert "are as they were" in note
    cfg = params.evaluate
    for folder in (cfg.metrics_dir, cfg.out_dir, cfg.plots_dir):
        assert not folder.exists() and not folder.with_name(folder.name + ".partial").exists()


def test_images_whose_alpha_is_ignored_are_named_in_one_note(
    params: Params,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hr_path = params.evaluate.sets[0].path / "hr" / "img00.png"
    rgb = read_image(hr_path).rgb
    write_image(hr_path, rgb, alpha=np.full(rgb.shape[:2], 0.5))
    bands_lr = write_image(tmp_path / "bands" / "lr" / "0.png", rgb, alpha=np.ones(rgb.shape[:2]))
    write_image(tmp_path / "bands" / "teacher" / "0.png", np.full((64, 64, 3), 0.5))
    monkeypatch.setattr(evaluate, "analyze_folder", lambda *a, **k: None)  # not under test
    monkeypatch.setattr(evaluate, "write_band_report", lambda *a: None)
    bands = params.evaluate.bands.model_copy(
        update={"enabled": True, "source": bands_lr.parents[1]}
    )
    no_teacher = params.evaluate.models.model_copy(update={"teacher": False})
    evaluate_cfg = params.evaluate.model_copy(update={"models": no_teacher, "bands": bands})
    evaluate.run(params.model_copy(update={"evaluate": evaluate_cfg}), device="cpu")
    notes = [line for line in capsys.readouterr().out.splitlines() if "note: alpha" in line]
    assert notes == [
        "note: alpha channel ignored, only colour is compared, in test set demo: "
        f"{hr_path}; evaluate.bands.source: {bands_lr}"
    ]


def test_report_describes_the_run_its_checkpoint_records_not_the_current_params(
    params: Params,
) -> None:
    evaluate.run(params, device="cpu")
    trained = params.distill.model_copy(update={"iterations": 20})
    student = params.distill.out_dir / "student.pt"
    student.parent.mkdir(parents=True)
    cache = {"teacher_version": "v3", "steps": 4}
    torch.save(
        {
            "arch": "swinir-tiny-x4",
            "iteration": 20,
            "params": section_dict(trained),
            "provenance": {"teacher_cache": cache},
        },
        student,
    )
    text = report.build_report(params)  # params.yaml still says 6 iterations, a 2-step teacher
    assert "Teacher: ResShift v3, 4 steps" in text
    assert "20 of 20 iterations (as the student checkpoint records them" in text
    assert "iteration: 20" in text  # provenance


def test_a_baseline_without_results_is_said_not_silently_dropped() -> None:
    result = {
        "set": "demo",
        "images": 1,
        "layout": "paired",
        "metrics": {"bicubic": {"psnr_y": {"mean": 30.0, "std": 0.0}}},
    }
    text = report.metrics_section(result, "NEW", {})
    assert "No deltas: the baseline **NEW** has no results in this set" in text
    assert "(1 image," in text
    assert "Delta against" in report.metrics_section(result, "bicubic", {})


def test_training_curves_read_losses_first_three_panels_to_a_row(tmp_path: Path) -> None:
    names = ["perf/samples_per_s", "perf/loader_wait", "val/psnr_y", "train/lr", "train/kd"]
    names += ["train/lambda", "train/loss", "train/task_l1"]
    panels = curve_panels(names)
    assert list(panels) == [
        "training losses",
        "train/lambda",
        "train/lr",
        "val/psnr_y",
        "perf/loader_wait",
        "perf/samples_per_s",
    ]
    assert panels["training losses"] == ["train/loss", "train/task_l1", "train/kd"]
    series = {name: [(1.0, 1.0), (2.0, 0.5)] for name in names}
    with Image.open(training_curves(series, tmp_path / "curves.png")) as image:
        width, height = image.size
    assert width < 2 * height  # 3 columns x 2 rows, not one strip of 6 panels


def test_every_training_curve_panel_names_what_it_plots_and_its_unit(tmp_path: Path) -> None:
    """A reader must tell λ from the learning rate and PSNR in dB from SSIM without the code."""
    series = {
        "train/loss": [(10.0, 0.30), (20.0, 0.20)],
        "train/task_l1": [(10.0, 0.25), (20.0, 0.15)],
        "train/kd": [(10.0, 0.10), (20.0, 0.08)],
        "train/lambda": [(10.0, 0.5), (20.0, 1.0)],
        "val/psnr_y": [(20.0, 27.5)],
        "perf/samples_per_s": [(20.0, 12.0)],
    }
    figure = curve_figure(series)
    by_title = {axis.get_title(): axis for axis in figure.axes}
    assert {title: axis.get_ylabel() for title, axis in by_title.items()} == {
        "training losses": "loss (log scale)",
        "KD weight λ (its schedule)": "λ",
        "validation PSNR-Y (EMA weights)": "PSNR-Y (dB)",
        "training speed": "samples/s",
    }
    assert all(axis.get_xlabel() == "iteration" for axis in figure.axes)
    losses = by_title["training losses"]
    legend = [text.get_text() for text in losses.get_legend().get_texts()]
    assert legend == ["total = L1 + λ·KD", "L1 to HR (task)", "KD to teacher (before λ)"]
    drawn = {line.get_label(): list(line.get_ydata()) for line in losses.get_lines()}
    assert drawn["L1 to HR (task)"] == [0.25, 0.15]  # the task curve, not another one
    assert list(by_title["KD weight λ (its schedule)"].get_lines()[0].get_ydata()) == [0.5, 1.0]

    with Image.open(training_curves(series, tmp_path / "curves.png")) as image:
        assert image.format == "PNG" and 600 < image.width < 2500 and 400 < image.height < 1500


def test_missing_metric_weights_stop_before_any_model_runs(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    strict = params.model_copy(
        update={
            "evaluate": params.evaluate.model_copy(
                update={"metrics": ["psnr", "lpips"], "skip_unavailable": False}
            )
        }
    )
    with pytest.raises(MetricWeightsError, match=re.escape("LPIPS_v0.1_alex-df73285e.pth")):
        evaluate.run(strict, device="cpu")
    assert not params.evaluate.metrics_dir.exists() and not params.evaluate.out_dir.exists()


def test_missing_student_checkpoint_is_named(params: Params, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    broken = params.model_copy(
        update={
            "evaluate": params.evaluate.model_copy(
                update={
                    "models": params.evaluate.models.model_copy(
                        update={"students": {"DTKD": [missing]}}
                    )
                }
            )
        }
    )
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        evaluate.run(broken, device="cpu")


def test_a_missing_one_step_checkpoint_names_its_key_before_the_teacher_runs(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was reported as teacher.unet_weights, a key the user never set, after the teacher."""
    forbid_teacher(monkeypatch, evaluate, before="the one-step checkpoint was found")
    missing = tmp_path / "sinsr.pth"
    models = params.evaluate.models.model_copy(update={"one_step": str(missing)})
    broken = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"models": models})}
    )
    with pytest.raises(WeightsError) as info:
        evaluate.run(broken, device="cpu")
    assert str(info.value).startswith(f"evaluate.models.one_step={missing}: weights file")
    assert "teacher.unet_weights" not in str(info.value)
    assert not params.evaluate.metrics_dir.exists()


def test_an_unloadable_one_step_checkpoint_is_named_by_its_key_not_the_teachers(
    params: Params, tmp_path: Path
) -> None:
    """A corrupt one-step file was reported as teacher.unet_weights, which it stands in for."""
    vq = tmp_path / "vq.pth"
    torch.save(build_teacher_networks("tests/data/resshift_tiny_t2.yaml")[1].state_dict(), vq)
    page = tmp_path / "sinsr.pth"  # an error page saved as a checkpoint
    page.write_text("<html>rate limited</html>")
    models = params.evaluate.models.model_copy(update={"one_step": str(page)})
    teacher = params.teacher.model_copy(update={"autoencoder_weights": str(vq)})
    broken = params.model_copy(
        update={
            "teacher": teacher,
            "evaluate": params.evaluate.model_copy(update={"models": models}),
        }
    )
    with pytest.raises(TeacherCheckpointError) as info:
        evaluate.run(broken, device="cpu")
    assert str(info.value).startswith(f"evaluate.models.one_step: teacher checkpoint {page}")
    assert "point evaluate.models.one_step at" in str(info.value)
    assert "teacher.unet_weights" not in str(info.value)
    assert not params.evaluate.metrics_dir.exists()


def test_evaluating_before_prepare_says_to_run_prepare_data(tmp_path: Path) -> None:
    """The demo set is prepare's val/: the message told a new user to download it."""
    params = tiny_params(tmp_path, tmp_path / "unused", ["evaluate.metrics=[psnr]"])
    with pytest.raises(TestSetError, match=r"run `dtkd-pipeline prepare-data` first"):
        evaluate.run(params, device="cpu")
    assert not params.evaluate.metrics_dir.exists()


def test_a_test_set_path_that_is_a_file_names_its_entry_key(tmp_path: Path) -> None:
    """Inside data.prepared_dir too, where it was reported as not written yet."""
    for where in (tmp_path / "Set5.zip", tmp_path / "prepared" / "val"):
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(b"PK\x03\x04")
        sets = f"evaluate.sets=[{{name: demo, layout: hr-only, path: '{where}'}}]"
        params = tiny_params(tmp_path, tmp_path / "unused", ["evaluate.metrics=[psnr]", sets])
        with pytest.raises(TestSetError, match=r"\(from evaluate\.sets\.0\.path\) is a file"):
            evaluate.run(params, device="cpu")
        assert not params.evaluate.metrics_dir.exists()


def test_an_image_unreadable_mid_evaluation_says_what_to_do(params: Params) -> None:
    """Pixel data corrupt behind a good header shows only when the image is scored."""
    image = params.evaluate.sets[0].path / "hr" / "img00.png"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError) as info:
        evaluate.run(params, device="cpu")
    assert str(info.value).startswith(f"test set 'demo': {image}: corrupt or truncated")
    assert "replace or remove the file, or point evaluate.sets.0.path at" in str(info.value)
    assert not params.evaluate.metrics_dir.exists()


def test_unusable_checkpoints_and_precisions_are_refused_before_the_teacher_runs(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_teacher(monkeypatch, evaluate, before="the inputs were checked")
    picture = write_image(tmp_path / "photo.png", np.zeros((8, 8, 3)))
    models = params.evaluate.models.model_copy(update={"students": {"X": [picture]}})
    wrong = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"models": models})}
    )
    with pytest.raises(StudentWeightsError, match=r"students\.X: .*photo\.png is not a student"):
        evaluate.run(wrong, device="cpu")
    efficiency = params.evaluate.efficiency.model_copy(
        update={"enabled": True, "precisions": ["fp16"]}
    )
    half_only = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"efficiency": efficiency})}
    )
    with pytest.raises(ConfigError, match=r"half precisions are measured on CUDA only"):
        evaluate.run(half_only, device="cpu")
    assert not params.evaluate.metrics_dir.exists()


@pytest.mark.parametrize("bad", ["user's files", "read-only", "a file"])
def test_a_bad_output_location_is_refused_before_any_model_loads(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """It was refused only when the results were written, after the teacher had loaded."""
    forbid_teacher(monkeypatch, evaluate, before="the output folders were checked")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model loaded before the output folders were checked")

    monkeypatch.setattr(evaluate, "MetricSuite", no_model)  # the metric networks
    monkeypatch.setattr(evaluate, "_student_contenders", no_model)
    ours = tmp_path / "ours"
    ours.mkdir()
    if bad == "user's files":
        (ours / "notes.md").write_text("keep me")
        key, folder, refusal = "evaluate.metrics_dir", ours, "holds files no stage"
    elif bad == "read-only":
        pretend_read_only(monkeypatch, ours)
        key, folder, refusal = "evaluate.out_dir", ours / "evaluation", "is not writable"
    else:
        (ours / "plots").write_text("")
        key, folder, refusal = "evaluate.plots_dir", ours / "plots", "is a file, not a folder"
    field = key.split(".")[1]
    placed = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={field: folder})}
    )
    with pytest.raises(OutputFolderError, match=rf"^{re.escape(key)}: .*{refusal}"):
        evaluate.run(placed, device="cpu")
    untouched = (params.evaluate.metrics_dir, params.evaluate.plots_dir, params.evaluate.out_dir)
    assert not any(output.exists() for output in untouched)
    assert not list(tmp_path.rglob("*.partial"))


def test_running_out_of_memory_is_not_blamed_on_the_image(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(self: object, sr: torch.Tensor, gt: torch.Tensor) -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(evaluate.MetricSuite, "__call__", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate.run(params, device="cpu")


def test_upscale_command_writes_x4_image_and_checked_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = _student_file(tmp_path / "student.pt", 0)
    (source,) = make_hr_images(tmp_path / "in", [(40, 56)])
    out, onnx = tmp_path / "out.png", tmp_path / "student.onnx"
    args = [
        "upscale",
        str(source),
        str(out),
        "--model",
        str(model),
        "--tile",
        "48",
        "--overlap",
        "16",
    ]
    result = CliRunner().invoke(app, [*args, "--export-onnx", str(onnx)])
    assert result.exit_code == 0, result.output
    assert read_image(out).rgb.shape == (160, 224, 3)
    assert onnx.is_file() and "max |onnx - torch|" in result.output

    bad = CliRunner().invoke(app, [*args, "--precision", "bf16", "--device", "cpu"])
    assert bad.exit_code == 1 and "needs a CUDA device" in bad.output

    out.unlink()
    for target in (tmp_path / "in", tmp_path / "student.txt"):  # a folder; not an .onnx name
        refused = CliRunner().invoke(app, [*args, "--export-onnx", str(target)])
        assert refused.exit_code == 1 and "give a file name ending in .onnx" in refused.output
        assert not out.exists()  # refused before any image was upscaled


def test_band_folder_source_is_checked_first_and_capped_by_max_tiles(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_bands(**update: object) -> Params:
        bands = params.evaluate.bands.model_copy(update={"enabled": True, **update})
        return params.model_copy(
            update={"evaluate": params.evaluate.model_copy(update={"bands": bands})}
        )

    ran: list[str] = []
    monkeypatch.setattr(evaluate, "_contenders", lambda *a: ran.append("models") or [])
    with pytest.raises(FileNotFoundError, match=r"evaluate\.bands\.source: .*nowhere.lr not found"):
        evaluate.run(with_bands(source=tmp_path / "nowhere"), device="cpu")
    assert ran == [] and not params.evaluate.metrics_dir.exists()

    folder = tmp_path / "bands"
    for index in range(3):
        write_image(folder / "lr" / f"{index}.png", np.full((16, 16, 3), 0.5))
        write_image(folder / "teacher" / f"{index}.png", np.full((64, 64, 3), 0.5))
    seen: list[int | None] = []
    monkeypatch.setattr(
        evaluate, "analyze_folder", lambda *a, max_images, **k: seen.append(max_images)
    )
    monkeypatch.setattr(evaluate, "write_band_report", lambda *a: None)
    evaluate.run_bands(
        with_bands(source=folder, max_tiles=2), torch.device("cpu"), tmp_path, tmp_path
    )
    evaluate.run_bands(
        with_bands(source=folder, max_tiles=0), torch.device("cpu"), tmp_path, tmp_path
    )
    assert seen == [2, None]  # 0 = all images


def test_band_folder_image_too_small_for_bands_levels_exits_1_before_any_model_runs(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bands"
    write_image(folder / "lr" / "big.png", np.full((16, 16, 3), 0.5))
    write_image(folder / "teacher" / "big.png", np.full((64, 64, 3), 0.5))
    write_image(folder / "lr" / "small.png", np.full((4, 5, 3), 0.5))
    small = write_image(folder / "teacher" / "small.png", np.full((16, 20, 3), 0.5))
    # db2 has 4 taps: pywt.dwt_max_level(16, "db2") = 2 for the small image, 4 for the big one.
    bands = params.evaluate.bands.model_copy(
        update={"enabled": True, "source": folder, "levels": 3, "wavelet": "db2"}
    )
    too_deep = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"bands": bands})}
    )
    ran: list[str] = []
    monkeypatch.setattr(evaluate, "_contenders", lambda *a: ran.append("models") or [])
    monkeypatch.setattr(evaluate, "analyze_folder", lambda *a, **k: ran.append("bands"))
    forbid_teacher(monkeypatch, evaluate, "the band images were checked")
    monkeypatch.setattr("dtkd_pipeline.cli._params", lambda *a: too_deep)
    expected = (
        f"{small} is 20x16 px, too small for a 3-level db2 DWT (evaluate.bands.levels 3): it "
        "allows at most 2 levels. Lower evaluate.bands.levels or leave this image out"
    )
    for command in ("evaluate", "analyze-bands"):
        result = CliRunner().invoke(app, [command, "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert expected in " ".join(result.output.split())
    assert ran == [] and not params.evaluate.metrics_dir.exists()


def test_only_half_precisions_on_cpu_are_refused_instead_of_timing_nothing(
    params: Params, tmp_path: Path
) -> None:
    efficiency = params.evaluate.efficiency.model_copy(update={"precisions": ["bf16"]})
    evaluate_cfg = params.evaluate.model_copy(update={"efficiency": efficiency})
    half_only = params.model_copy(update={"evaluate": evaluate_cfg})
    with pytest.raises(ConfigError, match=r"precisions \['bf16'\].*add fp32 or run on a GPU"):
        evaluate.run_efficiency(half_only, torch.device("cpu"), tmp_path / "efficiency")
    assert not (tmp_path / "efficiency").exists()


def _timed_row(model: str, batch: int, median_ms: float) -> dict[str, Any]:
    """An efficiency row as `benchmark_models` writes it, with made-up timings."""
    return {
        "model": model,
        "params": 1_000_000,
        "flops_per_image": 2e9,
        "input_size": "64x64",
        "precision": "fp32",
        "batch": batch,
        "best_batch": 2,
        "median_ms": median_ms,
        "p90_ms": median_ms * 1.1,
        "images_per_s": 1000 * batch / median_ms,
        "skipped": None,
        "device": "a test CPU",
        "device_type": "cpu",
        "torch": torch.__version__,
        "random_weights": True,
    }


def test_report_shows_the_efficiency_chart_under_its_table(params: Params, tmp_path: Path) -> None:
    out = params.evaluate.out_dir
    rows = [_timed_row("DTKD", 1, 5.0), _timed_row("DTKD", 2, 8.0)]
    write_efficiency(rows, out / EFFICIENCY_JSON, out / EFFICIENCY_MD, out / EFFICIENCY_PNG)
    figures = tmp_path / "figures"
    figures.mkdir()
    lines = report._efficiency_lines(params, figures)
    assert lines[0] == (out / EFFICIENCY_MD).read_text().strip()
    assert lines[-1] == "![latency and throughput against batch size](figures/efficiency.png)"
    assert (figures / EFFICIENCY_PNG).read_bytes() == (out / EFFICIENCY_PNG).read_bytes()
    # A table from before the chart existed is shown alone, with no broken picture link.
    (out / EFFICIENCY_PNG).unlink()
    assert report._efficiency_lines(params, tmp_path / "elsewhere") == [lines[0]]
