"""The CLI turns user mistakes into one message with exit 1; its reference stays current."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tqdm.auto import tqdm
from typer.testing import CliRunner

from dtkd_pipeline import atomic
from dtkd_pipeline.cli import app
from dtkd_pipeline.images import read_image, write_image
from dtkd_pipeline.student import build_student
from dtkd_pipeline.teacher import build_teacher_networks
from stages import cache_teacher
from tests.pipeline_helpers import (
    REPO_ROOT,
    bars_made,
    image_write_killed_midway,
    pretend_read_only,
)

TINY_TEACHER = REPO_ROOT / "tests" / "data" / "resshift_tiny_t2.yaml"
runner = CliRunner()


def test_invalid_params_exit_1_with_key_named_and_no_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare-data", "-S", "data.lr_tile=100"])
    assert result.exit_code == 1
    assert "data.lr_tile" in result.output and "multiple of 64" in result.output
    assert "Traceback" not in result.output


def test_missing_prepared_store_is_explained(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "cache-teacher",
            "-S",
            f"data.prepared_dir={tmp_path}",
            "-S",
            "teacher.random_weights=true",
        ],
    )
    assert result.exit_code == 1
    assert "run `dtkd-pipeline prepare-data` first" in result.output


@pytest.mark.parametrize(
    "command", [["distill"], ["cache-teacher"], ["evaluate"], ["upscale", "a.png", "b.png"]]
)
def test_an_unknown_device_is_a_usage_error_before_any_work(command: list[str]) -> None:

    def refusal(device: str) -> str:
        result = runner.invoke(app, [*command, "--device", device])
        assert result.exit_code == 2
        return " ".join(result.output.replace("│", " ").split())  # unwrap the boxed message

    assert "unknown device 'tpu': use auto, cpu, cuda or cuda:N" in refusal("tpu")
    if not torch.cuda.is_available():
        assert "CUDA is not available; use cpu" in refusal("cuda")


@pytest.mark.parametrize(
    ("option", "value", "bound"),
    [("--tile", "-1", 0), ("--overlap", "-2", 0), ("--batch-size", "0", 1)],
)
def test_upscale_out_of_range_numbers_are_usage_errors_naming_the_option(
    tmp_path: Path, option: str, value: str, bound: int
) -> None:
    """They were refused only after the model loaded, as `tile`, `overlap` or `batch_size`."""
    image = write_image(tmp_path / "x.png", np.full((16, 16, 3), 0.5))
    result = runner.invoke(app, ["upscale", str(image), str(tmp_path / "out"), option, value])
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # unwrap the boxed message
    assert f"Invalid value for '{option}'" in message
    assert f"greater than or equal to {bound}" in message
    assert not (tmp_path / "out").exists()


def test_upscale_overlap_not_below_the_tile_is_a_usage_error_naming_both_options(
    tmp_path: Path,
) -> None:
    """It was refused only after the model loaded, as `overlap` and `the tile`."""
    image = write_image(tmp_path / "x.png", np.full((16, 16, 3), 0.5))
    argv = ["upscale", str(image), str(tmp_path / "out"), "--tile", "32", "--overlap", "32"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # unwrap the boxed message
    assert "Invalid value for '--overlap': 32 must be smaller than --tile (32)" in message
    assert not (tmp_path / "out").exists()


def test_upscale_without_model_reads_the_student_from_the_params_distill_out_dir(
    tmp_path: Path,
) -> None:
    """It defaulted to data/models/student.pt whatever distill.out_dir said: a run trained
    elsewhere was missed, or an older student in data/models was used in its place."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["distill"]["out_dir"] = str(tmp_path / "models")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    image, _ = _image_and_student(tmp_path / "models")  # writes models/student.pt
    out = tmp_path / "out.png"
    argv = ["upscale", str(image), str(out), "--params", str(params), "--device", "cpu"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert read_image(out).rgb.shape == (64, 64, 3)

    (tmp_path / "models" / "student.pt").unlink()
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert f"model file not found: {tmp_path / 'models' / 'student.pt'}" in result.output

    argv = ["upscale", str(image), str(out), "--params", str(tmp_path / "absent.yaml")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"no --model given and params file {tmp_path / 'absent.yaml'} not found" in message


def test_cache_teacher_flags_set_their_params_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}

    def record(params, **options):  # stands in for the stage: this test is about the wiring
        seen.update(options, teacher=params.teacher)
        return tmp_path

    monkeypatch.setattr(cache_teacher, "run", record)
    weights = tmp_path / "w #1: null"  # a path, not YAML: no comment, mapping or null in it
    flags = ["--steps", "15", "--dwt", "--weights-dir", str(weights), "--overwrite"]
    result = runner.invoke(app, ["cache-teacher", *flags, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    teacher = seen["teacher"]
    assert (teacher.steps, teacher.dwt, teacher.weights_dir) == (15, True, weights)
    assert seen["overwrite"] is True and seen["device"] == "cpu"
    assert runner.invoke(app, ["cache-teacher", "--no-dwt"]).exit_code == 0
    assert seen["teacher"].dwt is False


def test_an_empty_scheduler_address_is_refused_not_run_locally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--scheduler "$ADDR"` with ADDR unset ran the whole cache on this machine instead."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the stage ran")

    monkeypatch.setattr(cache_teacher, "run", forbidden)
    result = runner.invoke(app, ["cache-teacher", "--scheduler", " "])
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # unwrap the boxed message
    assert "Invalid value for '--scheduler': empty address" in message


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["prepare-data", "--params", ""], "'--params'"),
        (["benchmark", "--out-dir", ""], "'--out-dir'"),
        (["upscale", "", "out"], "'inputs'"),
        (["weights", "--weights-dir", " "], "'--weights-dir'"),
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(
    argv: list[str], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out-dir "$DIR"` with DIR unset wrote into the current folder ('' is Path('.'))."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # unwrap the boxed message
    assert "Invalid value for" in message and name in message and "empty path" in message
    assert list(tmp_path.iterdir()) == []


def test_cache_teacher_refuses_a_step_count_the_checkpoint_was_not_trained_for(
    tmp_path: Path,
) -> None:
    store = tmp_path / "teacher.zarr"
    result = runner.invoke(app, ["cache-teacher", "--steps", "4", "-S", f"teacher.store={store}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "teacher.steps 4 is not the step count of teacher.version v1" in message
    assert "set teacher.steps (cache-teacher --steps) to 15" in message
    assert not store.exists()


def test_teacher_sr_writes_x4_png_per_image(tmp_path: Path) -> None:
    unet, vq = build_teacher_networks(TINY_TEACHER)
    torch.save(unet.state_dict(), tmp_path / "unet.pth")
    torch.save({"state_dict": vq.state_dict()}, tmp_path / "vq.pth")
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    write_image(inputs / "a.png", rng.random((40, 48, 3)), rng.random((40, 48)))  # RGBA
    write_image(inputs / "b.png", rng.random((64, 64)))  # gray input becomes RGB
    result_args = [
        str(inputs), str(tmp_path / "out"),
        "--version", str(TINY_TEACHER),
        "--unet", str(tmp_path / "unet.pth"),
        "--autoencoder", str(tmp_path / "vq.pth"),
        "--device", "cpu",
    ]  # fmt: skip
    result = runner.invoke(app, ["teacher-sr", *result_args])
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out" / "a.png").rgb.shape == (160, 192, 3)
    assert read_image(tmp_path / "out" / "b.png").rgb.shape == (256, 256, 3)
    assert "1 image(s) have alpha or 16-bit samples" in result.output and "a.png" in result.output
    assert f"2 image(s) -> {tmp_path / 'out'}" in result.output

    # Like upscale: one image in and an image name out writes that file.
    single = [str(inputs / "b.png"), str(tmp_path / "b_x4.jpg"), *result_args[2:]]
    result = runner.invoke(app, ["teacher-sr", *single])
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "b_x4.jpg").rgb.shape == (256, 256, 3)


def _tiny_teacher_options(folder: Path) -> list[str]:
    """teacher-sr options for the tiny test teacher, its random weights saved in ``folder``."""
    unet, vq = build_teacher_networks(TINY_TEACHER)
    torch.save(unet.state_dict(), folder / "unet.pth")
    torch.save({"state_dict": vq.state_dict()}, folder / "vq.pth")
    return [
        "--version", str(TINY_TEACHER),
        "--unet", str(folder / "unet.pth"), "--autoencoder", str(folder / "vq.pth"),
        "--device", "cpu",
    ]  # fmt: skip


def test_teacher_sr_stopped_midway_says_how_many_images_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline.teacher import folder

    inputs = tmp_path / "in"
    for name in ("a", "b", "c"):
        write_image(inputs / f"{name}.png", np.zeros((64, 64, 3)))
    calls: list[Path] = []

    def second_image_interrupted(teacher: object, path: Path, output: Path, **kw: object) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second image
        return output

    monkeypatch.setattr(folder, "_super_resolve_file", second_image_interrupted)
    args = [str(inputs), str(tmp_path / "out"), *_tiny_teacher_options(tmp_path)]
    result = runner.invoke(app, ["teacher-sr", *args])
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.output.rstrip().endswith(
        f"interrupted (Ctrl-C): 1 of 3 image(s) were written to {tmp_path / 'out'}, each "
        "complete; run the same command with --skip-existing to write only the rest"
    )


def test_teacher_sr_skip_existing_runs_only_the_missing_images_and_counts_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline.teacher import folder

    inputs, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_image(inputs / f"{name}.png", np.zeros((40, 40, 3)))
    write_image(out / "b.png", np.zeros((160, 160, 3)))  # an interrupted run's
    calls: list[str] = []
    totals: list[int] = []

    def record(teacher: object, path: Path, output: Path, **kwargs: object) -> Path:
        calls.append(path.name)
        return output

    class CountingBar(tqdm):
        def __init__(self, iterable: list[object], **kwargs: object) -> None:
            totals.append(len(iterable))
            super().__init__(iterable, **kwargs)

    monkeypatch.setattr(folder, "_super_resolve_file", record)
    monkeypatch.setattr(folder, "tqdm", CountingBar)
    args = [str(inputs), str(out), *_tiny_teacher_options(tmp_path), "--skip-existing"]
    result = runner.invoke(app, ["teacher-sr", *args])
    assert result.exit_code == 0, result.output
    assert calls == ["a.png", "c.png"] and totals == [2]
    assert f"2 image(s) -> {out}; 1 skipped, already present" in result.output


@pytest.mark.parametrize("images", [1, 2])
def test_teacher_sr_shows_an_image_bar_only_for_several_images(
    images: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline.teacher import folder

    inputs = tmp_path / "in"
    for index in range(images):
        write_image(inputs / f"{index}.png", np.zeros((40, 40, 3)))
    monkeypatch.setattr(folder, "_super_resolve_file", lambda *args, **kwargs: args[2])
    bars = bars_made(monkeypatch, folder)
    args = [str(inputs), str(tmp_path / "out"), *_tiny_teacher_options(tmp_path)]
    assert runner.invoke(app, ["teacher-sr", *args]).exit_code == 0
    (bar,) = [bar for bar in bars if bar.desc == "teacher-sr"]
    assert bar.total == images and bar.shown == (images >= 2)


def test_teacher_sr_skip_existing_with_every_output_there_resolves_no_weights(
    tmp_path: Path,
) -> None:
    source = write_image(tmp_path / "x.png", np.zeros((40, 40, 3)))  # one file in
    write_image(tmp_path / "x_x4.png", np.zeros((160, 160, 3)))
    absent = ["--unet", str(tmp_path / "absent-unet.pth")]  # never reached: nothing to do
    args = [str(source), str(tmp_path / "x_x4.png"), *absent, "--skip-existing"]
    result = runner.invoke(app, ["teacher-sr", *args])
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"all 1 output image(s) are already in {tmp_path / 'x_x4.png'}; nothing to do (leave "
        "out --skip-existing to write them again)\n"
    )


def test_teacher_sr_removes_a_killed_writers_temporary_and_keeps_a_live_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline.teacher import folder

    write_image(tmp_path / "in" / "x.png", np.zeros((40, 40, 3)))
    out = tmp_path / "out"
    image_write_killed_midway(out / "x.png")
    live = out / f".x.png.0123abcd.tmp-{os.getppid()}"  # another run, still writing
    live.write_bytes(b"in progress")
    monkeypatch.setattr(folder, "_super_resolve_file", lambda *args, **kwargs: args[2])
    args = [str(tmp_path / "in"), str(out), *_tiny_teacher_options(tmp_path)]
    result = runner.invoke(app, ["teacher-sr", *args])
    assert result.exit_code == 0, result.output
    assert [path.name for path in out.iterdir()] == [live.name]


def test_teacher_sr_refuses_other_step_count(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    write_image(image, np.zeros((64, 64, 3)))
    result = runner.invoke(app, ["teacher-sr", str(image), str(tmp_path / "o"), "--steps", "4"])
    assert result.exit_code == 1
    assert "trained for 15 steps" in result.output


@pytest.mark.parametrize(
    ("output", "options", "expected"),
    [
        (".", [], "would overwrite the input"),  # x.png -> ./x.png
        ("out", ["--chop-size", "16"], "chop_size=16"),
        ("out", ["--precision", "fp64"], "precision must be one of"),
        ("x.png", [], "would overwrite the input"),  # one image in, an image file out
        ("x.png/sub", [], "output: x.png is a file, not a folder"),
    ],
)
def test_teacher_sr_refuses_before_loading_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, options: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "x.png", np.full((64, 64, 3), 0.5))
    before = (tmp_path / "x.png").read_bytes()
    missing = ["--unet", "absent-unet.pth"]  # never reached: the refusal comes first
    result = runner.invoke(app, ["teacher-sr", "x.png", output, *missing, *options])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert expected in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    assert (tmp_path / "x.png").read_bytes() == before


def test_teacher_sr_names_every_bad_image_before_resolving_weights(tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    write_image(images / "too-small.png", np.full((20, 30, 3), 0.5))  # sides of 33 px or more
    write_image(images / "fine.png", np.full((40, 40, 3), 0.5))
    result = runner.invoke(
        app, ["teacher-sr", str(images), str(tmp_path / "o"),
              "--unet", str(tmp_path / "absent-unet.pth")],
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 image(s) cannot be super-resolved; nothing was written" in result.output
    assert "broken.png" in result.output and "too-small.png" in result.output
    assert "; replace or remove the file" in result.output  # what to do about broken.png
    assert "fine.png" not in result.output and "absent-unet.pth" not in result.output
    assert not (tmp_path / "o").exists()


def test_teacher_sr_names_the_weight_option_the_user_typed_not_a_params_key(
    tmp_path: Path,
) -> None:
    """A bad --unet / --autoencoder file was reported as teacher.unet_weights, a params key
    teacher-sr does not read."""
    unet = tmp_path / "unet.pth"
    torch.save(build_teacher_networks(TINY_TEACHER)[0].state_dict(), unet)
    page = tmp_path / "page.pth"  # an error page saved as a checkpoint
    page.write_text("<html>rate limited</html>")
    absent = tmp_path / "absent.pth"
    write_image(tmp_path / "x.png", np.full((40, 40, 3), 0.5))
    common = ["teacher-sr", str(tmp_path / "x.png"), str(tmp_path / "o"),
              "--version", str(TINY_TEACHER), "--device", "cpu"]  # fmt: skip
    cases = {
        "--unet: ": ["--unet", str(page), "--autoencoder", str(unet)],  # corrupt
        "--autoencoder: ": ["--unet", str(unet), "--autoencoder", str(unet)],  # wrong network
        f"--unet {absent}: ": ["--unet", str(absent)],  # missing
    }
    for named, options in cases.items():
        result = runner.invoke(app, [*common, *options])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.startswith(f"error: {named}"), result.output
        assert "teacher.unet_weights" not in result.output
        assert "teacher.autoencoder_weights" not in result.output
        if options[1] == str(page):
            assert "point --unet at the official ResShift .pth file" in result.output
    assert not (tmp_path / "o").exists()


def test_teacher_sr_offline_without_weights_says_the_options_take_local_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTKD_MIRROR", "http://127.0.0.1:9/mirror")  # refused: offline
    write_image(tmp_path / "x.png", np.full((40, 40, 3), 0.5))
    base = ["teacher-sr", str(tmp_path / "x.png"), str(tmp_path / "o"), "--device", "cpu"]
    result = runner.invoke(app, [*base, "--weights-dir", str(tmp_path / "w")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not download resshift-realsr-v1" in result.output
    assert "Or pass a local copy with --unet FILE." in result.output
    unet = tmp_path / "unet.pth"
    unet.write_bytes(b"")  # only its existence matters: the autoencoder is resolved next
    result = runner.invoke(app, [*base, "--weights-dir", str(tmp_path / "w"), "--unet", str(unet)])
    assert "could not download resshift-vq-f4" in result.output
    assert "Or pass a local copy with --autoencoder FILE." in result.output
    assert not (tmp_path / "o").exists()


def test_upscale_offline_with_a_release_name_says_model_takes_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download error listed --weights-dir and mirrors, but not the plain way round: a file."""
    monkeypatch.setenv("DTKD_MIRROR", "http://127.0.0.1:9/mirror")  # refused: offline
    write_image(tmp_path / "x.png", np.full((16, 16, 3), 0.5))
    result = runner.invoke(
        app,
        [
            "upscale",
            str(tmp_path / "x.png"),
            str(tmp_path / "o"),
            "--model",
            "swinir-s-x4",
            "--weights-dir",
            str(tmp_path / "w"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not download swinir-s-x4" in result.output
    assert result.output.rstrip().endswith("Or pass a local copy with --model FILE.")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_location_is_named_without_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(
        app, ["weights", "--download", "resshift-vq-f4", "--weights-dir", str(blocker / "w")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--weights-dir: {blocker} is a file, not a folder" in result.output


@pytest.mark.parametrize("command", ["benchmark", "analyze-bands"])
def test_an_out_dir_that_is_a_file_is_named_before_any_measurement(
    tmp_path: Path, command: str
) -> None:
    taken = tmp_path / "results"
    taken.write_text("a file")
    result = runner.invoke(app, [command, "--out-dir", str(taken)])
    assert result.exit_code == 1
    assert "--out-dir:" in result.output and "is a file, not a folder" in result.output


def test_benchmark_and_analyze_bands_leave_evaluate_free_to_replace_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their default folders are evaluate's outputs: written there, they must stay replaceable
    (marked) so the next `evaluate` does not refuse them as a user's folders."""
    from stages import evaluate as stage

    out, plots, mine = tmp_path / "evaluation", tmp_path / "plots", tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own")

    def efficiency(params: object, device: object, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        (target / "efficiency.md").write_text("table")

    def bands(params: object, device: object, json_dir: Path, png_dir: Path, *_: object) -> dict:
        for folder, name in ((json_dir, "bands.json"), (png_dir, "bands.png")):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("x")
        return {"json": json_dir / "bands.json", "png": png_dir / "bands.png"}

    monkeypatch.setattr(stage, "run_efficiency", efficiency)
    monkeypatch.setattr(stage, "run_bands", bands)
    folders = ["-S", f"evaluate.out_dir={out}", "-S", f"evaluate.plots_dir={plots}"]
    assert runner.invoke(app, ["benchmark", "--device", "cpu", *folders]).exit_code == 0
    assert runner.invoke(app, ["analyze-bands", "--device", "cpu", *folders]).exit_code == 0
    for folder, key in ((out, "evaluate.out_dir"), (plots, "evaluate.plots_dir")):
        atomic.check_replaceable(folder, key)
    # A folder that already held someone else's files is written to, but never marked.
    mine_plots = ["-S", f"evaluate.out_dir={out}", "-S", f"evaluate.plots_dir={mine}"]
    assert runner.invoke(app, ["analyze-bands", "--device", "cpu", *mine_plots]).exit_code == 0
    assert not (mine / atomic.OUTPUT_MARKER).exists()


def _image_and_student(folder: Path) -> tuple[Path, Path]:
    """A small image and a tiny student checkpoint for the commands that upscale."""
    image = write_image(folder / "x.png", np.full((16, 16, 3), 0.5))
    model = folder / "student.pt"
    state = build_student("swinir-tiny-x4").state_dict()
    torch.save({"model": state, "ema": state, "arch": "swinir-tiny-x4", "iteration": 0}, model)
    return image, model


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["prepare-data", "-S", "data.prepared_dir={ro}/prepared"], "data.prepared_dir"),
        (["benchmark", "--device", "cpu", "--out-dir", "{ro}/bench"], "--out-dir"),
        (["upscale", "{image}", "{ro}/out", "--model", "{model}", "--device", "cpu"], "output"),
        (["upscale", "{image}", "{tmp}/out", "--export-onnx", "{ro}/s.onnx"], "ONNX output"),
    ],
    ids=["prepare-data", "benchmark", "upscale", "upscale-onnx"],
)
def test_an_output_in_an_unwritable_folder_is_refused_by_its_key_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], key: str
) -> None:
    """The failure came at the end (after the timing, or the images), naming a lock file or a
    temporary folder instead of the option or key."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    pretend_read_only(monkeypatch, read_only)
    image, model = _image_and_student(tmp_path / "inputs")
    filled = [a.format(ro=read_only, tmp=tmp_path, image=image, model=model) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{key}: cannot create {read_only}/" in result.output
    assert f"{read_only} is not writable; choose another {key}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "read-only"]
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "key", "refused"),
    [
        (["prepare-data", "-S", "data.prepared_dir={ro}"], "data.prepared_dir", "{ro}"),
        (["cache-teacher", "-S", "teacher.store={ro}"], "teacher.store", "{ro}"),
        (["benchmark", "--device", "cpu", "--out-dir", "{ro}"], "--out-dir", "{ro}"),
        (["upscale", "{image}", "{ro}", "--model", "{model}", "--device", "cpu"], "output", "{ro}"),
        (
            ["upscale", "{image}", "{tmp}/out", "--export-onnx", "{ro}/s.onnx"],
            "ONNX output",
            "cannot replace {ro}/s.onnx: {ro}",
        ),
    ],
    ids=["prepare-data", "cache-teacher", "benchmark", "upscale", "upscale-onnx"],
)
def test_an_existing_output_this_process_cannot_write_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], key: str, refused: str
) -> None:
    """Only outputs still to be created were checked; an existing read-only one failed at the
    end, after the work, naming a temporary or `.partial` folder instead of the key."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    (read_only / "s.onnx").write_bytes(b"an earlier export")
    (read_only / atomic.OUTPUT_MARKER).write_text("")  # an earlier run's output
    pretend_read_only(monkeypatch, read_only)
    image, model = _image_and_student(tmp_path / "inputs")
    filled = [a.format(ro=read_only, tmp=tmp_path, image=image, model=model) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    named = refused.format(ro=read_only)
    assert f"error: {key}: {named} is not writable; choose another {key}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "read-only"]
    assert sorted(p.name for p in read_only.iterdir()) == [atomic.OUTPUT_MARKER, "s.onnx"]


def test_analyze_bands_wants_a_checkpoint_file_not_a_release_name() -> None:
    result = runner.invoke(app, ["analyze-bands", "--model", "swinir-s-x4"])
    assert result.exit_code == 1
    assert "model file not found: swinir-s-x4" in result.output
    assert "official release" not in result.output  # upscale's offer, not this command's


def test_weights_download_refuses_a_path_or_unknown_name_before_downloading(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"weights")
    result = runner.invoke(
        app,
        [
            "weights",
            "--download",
            "resshift-vq-f4",
            "--download",
            str(checkpoint),
            "--weights-dir",
            str(tmp_path / "w"),
        ],
    )
    assert result.exit_code == 1
    assert f"unknown weights name {str(checkpoint)!r}" in result.output
    assert "known names: " in result.output and "resshift-vq-f4" in result.output
    assert not (tmp_path / "w").exists()  # refused before the first download started


def test_weights_listing_names_each_checkpoint_its_location_and_licence(tmp_path: Path) -> None:
    result = runner.invoke(app, ["weights", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"absent   {tmp_path / 'resshift_realsrx4_s15_v1.pth'}" in result.output
    assert "licence: NTU S-Lab License 1.0 (non-commercial" in result.output
    assert "licence: Apache-2.0" in result.output


def test_weights_listing_shows_the_mirror_it_would_use_and_refuses_a_file_as_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTKD_MIRROR", "http://127.0.0.1:9/mirror")
    result = runner.invoke(app, ["weights", "--weights-dir", str(tmp_path)])
    assert "<- http://127.0.0.1:9/mirror/resshift_realsrx4_s15_v1.pth" in result.output
    a_file = tmp_path / "weights.png"
    a_file.write_bytes(b"")
    result = runner.invoke(app, ["weights", "--weights-dir", str(a_file)])
    assert result.exit_code == 1 and "--weights-dir" in result.output
    assert "is a file, not a folder" in result.output


def test_weights_lists_a_read_only_folder_but_refuses_to_download_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared read-only weights folder is read, never written: only a download needs writing."""
    monkeypatch.setenv("DTKD_MIRROR", "http://127.0.0.1:9/mirror")  # never reached
    pretend_read_only(monkeypatch, tmp_path)
    listed = runner.invoke(app, ["weights", "--weights-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "resshift-vq-f4" in listed.output
    download = ["weights", "--weights-dir", str(tmp_path), "--download", "resshift-vq-f4"]
    result = runner.invoke(app, download)
    assert result.exit_code == 1
    assert f"--weights-dir: {tmp_path} is not writable; choose another" in result.output
    assert "127.0.0.1" not in result.output


def test_cli_reference_matches_the_app(tmp_path: Path) -> None:
    generated = tmp_path / "cli.md"
    typer_bin = Path(sys.executable).parent / "typer"
    subprocess.run(
        [str(typer_bin), "dtkd_pipeline.cli", "utils", "docs", "--name", "dtkd-pipeline",
         "--output", str(generated)],
        check=True, capture_output=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert generated.read_text() == (REPO_ROOT / "docs" / "cli.md").read_text(), (
        "docs/cli.md is stale: regenerate it with "
        "`typer dtkd_pipeline.cli utils docs --name dtkd-pipeline --output docs/cli.md`"
    )


def test_only_the_cli_front_end_imports_the_stages() -> None:
    """DESIGN's layering: the library is reusable without the stages; cli.py wires them up."""
    importers = set()
    for path in (REPO_ROOT / "dtkd_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name == "stages" or name.startswith("stages.") for name in names):
                importers.add(path.relative_to(REPO_ROOT).as_posix())
    assert importers == {"dtkd_pipeline/cli.py"}


def test_verify_cache_on_a_missing_store_says_which_stage_builds_it(tmp_path: Path) -> None:
    for target in (tmp_path / "absent.zarr", tmp_path):
        result = runner.invoke(app, ["verify-cache", str(target)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert str(target) in result.output
        assert "`dtkd-pipeline cache-teacher` writes (teacher.store" in result.output


def test_verify_cache_on_a_missing_prepared_store_says_to_run_prepare_data(
    tmp_path: Path,
) -> None:
    """It pointed at cache-teacher's store even when given the prepared store's own path."""
    prepared = tmp_path / "prepared"
    target = prepared / "train.zarr"
    result = runner.invoke(
        app, ["verify-cache", str(target), "-S", f"data.prepared_dir={prepared}"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{target} " in result.output
    assert "the prepared store data.prepared_dir/train.zarr" in result.output
    assert "run `dtkd-pipeline prepare-data` first" in result.output  # as every stage says it
