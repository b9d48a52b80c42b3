"""A disk that fills up (or fails) partway through a command: one line that names the location
and says to free space or choose another, exit code 1, nothing half-written where a later run or
a reader would take it as complete, and a rerun after space is freed that succeeds (resuming
where the design resumes).

A full disk is simulated at the lowest write each command uses. The operating system reports a
failed write, flush or close as ENOSPC *without a file name* (so do the simulations here): the
code that knows what it was writing must name it.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import zarr.storage._local as zarr_local
from typer.testing import CliRunner

from dtkd_pipeline import atomic
from dtkd_pipeline.cache import TileStore
from dtkd_pipeline.cli import app
from dtkd_pipeline.config import load_params
from dtkd_pipeline.student import build_student
from dtkd_pipeline.train.checkpoint import save_raising_write_errors
from dtkd_pipeline.train.curves import truncate_curves
from stages import cache_teacher, distill, prepare_data
from tests.pipeline_helpers import make_hr_images, tiny_project_params

runner = CliRunner()
NO_SPACE = os.strerror(errno.ENOSPC)
FREE_SPACE = "free space on that disk or choose another location"


def disk_full() -> OSError:
    """What a write, flush or close on a full disk raises: an errno, no file name."""
    return OSError(errno.ENOSPC, NO_SPACE)


def fill_disk_after(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, room: int
) -> list[object]:
    """Let ``owner.name`` (a write) succeed ``room`` times, then fail as on a full disk.
    Returns the first argument of each call (the calls that failed too)."""
    real: Callable[..., Any] = getattr(owner, name)
    calls: list[object] = []

    def write(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        if len(calls) > room:
            raise disk_full()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, write)
    return calls


def one_error_line(output: str) -> str:
    """The command's one error line, its last, after checking it printed no traceback.
    (A progress bar the runner mixes in may precede it on the same line.)"""
    assert "Traceback" not in output and "────" not in output, output
    text = output.strip()
    assert text.count("error: ") == 1, output
    line = text[text.index("error: ") :]
    assert "\n" not in line, output
    return line


def leftovers(folder: Path) -> list[str]:
    """Temporaries and staging folders a failed write must not leave beside its outputs."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if any(mark in path.name for mark in (".tmp", ".partial", ".trash"))
    )


# ---------------------------------------------------------------------------- atomic writes


def test_a_write_that_fails_without_a_file_name_is_reported_for_the_file_it_replaces(
    tmp_path: Path,
) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("the previous result")
    with pytest.raises(OSError) as info, atomic.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise disk_full()
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_text() == "the previous result"
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_in_a_staged_folder_is_reported_for_the_folder_the_user_chose(
    tmp_path: Path,
) -> None:
    final = tmp_path / "report"
    (final / "figures").mkdir(parents=True)
    atomic.mark_output(final)
    for failure in (
        disk_full(),  # a write into the staging folder
        # a copy into it (shutil names source and destination)
        OSError(errno.ENOSPC, NO_SPACE, "plots/a.png", None, str(tmp_path / "report.partial/a")),
    ):
        with pytest.raises(OSError) as info, atomic.staged_folder(final, "report.out_dir"):
            raise failure
        assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(final))
        assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]
        assert (final / "figures").is_dir()  # the previous result, untouched


def test_a_full_disk_while_a_store_is_created_names_its_lock_and_leaves_no_skeleton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's PID is the first byte a new store writes."""
    from dtkd_pipeline.cache.layout import ArraySpec, Compression, StoreLayout

    layout = StoreLayout(
        kind="prepared",
        n_tiles=2,
        shard_size=1,
        arrays=(ArraySpec("lr", (3, 8, 8), "uint8"),),
        compression=Compression("zstd", 3),
    )
    fill_disk_after(monkeypatch, os, "pwrite", room=0)
    path = tmp_path / "train.zarr"
    with pytest.raises(OSError) as info:
        TileStore.create(path, layout, {})
    assert info.value.errno == errno.ENOSPC
    assert Path(info.value.filename).name == ".lock"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- torch files


class FullDisk(io.RawIOBase):
    """A file with ``room`` bytes of space left."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise disk_full()
        self.room -= size
        return size


@pytest.mark.parametrize("room", [0, 1000, 50_000])
def test_a_checkpoint_written_to_a_full_disk_raises_the_disk_error_not_torchs(room: int) -> None:
    """torch's zip writer raises "unexpected pos 768 vs 662" over the failed write."""
    state = {"a": torch.zeros(10_000), "b": torch.ones(5_000)}
    with pytest.raises(OSError) as info:
        save_raising_write_errors(state, FullDisk(room))
    assert info.value.errno == errno.ENOSPC


# ---------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training tiles, one validation image, a teacher cache and a student, tiny profile."""
    root = tmp_path_factory.mktemp("disk_full")
    params_file = tiny_project_params(
        root,
        3,
        [
            "distill.iterations=2",
            "distill.milestones=[1]",
            f"evaluate.sets=[{{name: demo, layout: paired, path: '{root / 'prepared' / 'val'}'}}]",
            f"evaluate.models.students={{DTKD: ['{root / 'models' / 'student.pt'}']}}",
            "evaluate.models.teacher=false",
            "evaluate.metrics=[psnr, ssim]",
            "evaluate.efficiency.enabled=false",
            "evaluate.bands.enabled=false",
            f"evaluate.metrics_dir={root / 'metrics'}",
            f"evaluate.plots_dir={root / 'plots'}",
            f"evaluate.out_dir={root / 'evaluation'}",
            f"report.out_dir={root / 'report'}",
        ],
    )
    params = load_params(params_file)
    prepare_data.run(params)
    cache_teacher.run(params, device="cpu")
    distill.run(params, device="cpu")
    return root


def _args(command: str, project: Path, *overrides: str) -> list[str]:
    sets = [item for override in overrides for item in ("-S", override)]
    device = ["--device", "cpu"] if command in ("cache-teacher", "distill", "evaluate") else []
    return [command, "-p", str(project / "params.yaml"), *device, *sets]


def test_prepare_data_disk_full_names_the_prepared_folder_and_leaves_nothing_half_written(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = tmp_path / "prepared"
    args = _args("prepare-data", project, f"data.prepared_dir={prepared}")
    writes = fill_disk_after(monkeypatch, zarr_local, "_put", room=3)  # zarr's chunk writes
    failed = runner.invoke(app, args)
    assert len(writes) > 3  # it did fill up partway
    assert failed.exit_code == 1
    assert one_error_line(failed.output) == f"error: {prepared}: {NO_SPACE}; {FREE_SPACE}"
    assert list(tmp_path.iterdir()) == []  # no half-built store, no staging folder

    monkeypatch.undo()  # space freed
    assert runner.invoke(app, args).exit_code == 0
    with TileStore.open(prepared / "train.zarr") as store:
        assert store.verify().ok


@pytest.mark.slow
def test_cache_teacher_disk_full_keeps_finished_shards_and_resumes(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "teacher.zarr"
    args = _args(
        "cache-teacher", project, f"teacher.store={store}", f"teacher.preview={tmp_path / 'p.png'}"
    )
    real_put = zarr_local._put

    def full_after_first_shard(path: Path, *args: Any, **kwargs: Any) -> int:
        if "/c/1/" in Path(path).as_posix():  # the second shard's data
            raise disk_full()
        return real_put(path, *args, **kwargs)

    monkeypatch.setattr(zarr_local, "_put", full_after_first_shard)
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1
    second_shard = store / "teacher" / "c" / "1" / "0" / "0" / "0"
    assert one_error_line(failed.output) == f"error: {second_shard}: {NO_SPACE}; {FREE_SPACE}"
    with TileStore.open(store) as kept:
        assert kept.completed_shards() == [0] and kept.verify([0]).ok
    assert leftovers(tmp_path) == []

    monkeypatch.undo()
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "computed 1 tiles" in resumed.output  # only the shard the full disk stopped
    with TileStore.open(store) as finished:
        assert finished.verify().ok


@pytest.mark.slow
def test_distill_disk_full_at_a_checkpoint_names_it_and_resumes_from_the_last_one(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second checkpoint meets a full disk; closing the curves then fails too, leaving
    dvclive's summary empty, as its in-place rewrite does on a full disk."""
    import dvclive.live

    out_dir = tmp_path / "models"
    args = _args(
        "distill", project, f"distill.out_dir={out_dir}", "distill.iterations=4",
        "distill.milestones=[3]", "distill.checkpoint_every=2", "distill.val_every=2",
    )  # fmt: skip
    real_save, real_dump = torch.save, dvclive.live.dump_json
    saved: list[object] = []
    full = False

    def save(obj: object, handle: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal full
        saved.append(obj)
        full = full or len(saved) == 3  # iter_2, best, then iter_4
        real_save(obj, FullDisk(100) if full else handle, *args, **kwargs)

    def dump_json(content: object, output_file: str, **kwargs: Any) -> None:
        if not full:
            return real_dump(content, output_file, **kwargs)
        Path(output_file).write_text("")  # opened for writing, then nothing fits
        raise disk_full()

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(dvclive.live, "dump_json", dump_json)
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1
    checkpoint = out_dir / "checkpoints" / "iter_00000004.pt"
    assert one_error_line(failed.output) == f"error: {checkpoint}: {NO_SPACE}; {FREE_SPACE}"
    assert sorted(path.name for path in (out_dir / "checkpoints").iterdir()) == [
        "best.pt",
        "iter_00000002.pt",
    ]
    assert leftovers(out_dir) == [] and not (out_dir / "student.pt").exists()
    assert (out_dir / "dvclive" / "metrics.json").read_text() == ""

    monkeypatch.undo()
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.output and "iter_00000002.pt at iteration 2" in resumed.output
    assert "metrics.json was cut short" in resumed.output
    assert (out_dir / "student.pt").is_file()
    assert json.loads((out_dir / "dvclive" / "metrics.json").read_text())["step"] == 4


def test_a_curve_row_a_full_disk_cut_short_is_dropped_when_training_resumes(
    tmp_path: Path,
) -> None:
    curve = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tloss\n1\t0.5\n2\t0.25\n1")  # "12\t0.125" cut short after "1"
    assert truncate_curves(tmp_path, last_step=2) == 1
    assert curve.read_text() == "step\tloss\n1\t0.5\n2\t0.25\n"


def test_evaluate_disk_full_names_an_output_folder_and_keeps_the_previous_results(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = {key: tmp_path / key for key in ("metrics_dir", "plots_dir", "out_dir")}
    args = _args("evaluate", project, *(f"evaluate.{k}={v}" for k, v in folders.items()))
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    fill_disk_after(monkeypatch, Path, "write_bytes", room=1)  # one result file fits
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1
    line = one_error_line(failed.output)
    assert line.endswith(f": {NO_SPACE}; {FREE_SPACE}")
    assert line.removeprefix("error: ").split(":")[0] in {str(f) for f in folders.values()}
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before  # the previous results, whole; no staging folder left

    monkeypatch.undo()
    assert runner.invoke(app, args).exit_code == 0


def test_report_disk_full_names_the_report_folder_and_a_rerun_writes_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated = runner.invoke(app, _args("evaluate", project))
    assert evaluated.exit_code == 0, evaluated.output
    report = tmp_path / "report"
    args = _args("report", project, f"report.out_dir={report}")
    fill_disk_after(monkeypatch, Path, "write_text", room=1)  # the output marker fits
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1
    assert one_error_line(failed.output) == f"error: {report}: {NO_SPACE}; {FREE_SPACE}"
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    assert runner.invoke(app, args).exit_code == 0
    assert (report / "README.md").is_file()


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, FREE_SPACE),
        (errno.EDQUOT, "free space within your disk quota or choose another location"),
        (errno.EIO, "the disk reported an input/output error; check it or choose another location"),
    ],
)
def test_upscale_write_failure_names_the_image_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:
    images = make_hr_images(tmp_path / "in", [(24, 24), (24, 32)])
    model = build_student("swinir-tiny-x4")
    checkpoint = tmp_path / "student.pt"
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "arch": "swinir-tiny-x4"}, checkpoint)
    output = tmp_path / "out"
    args = ["upscale", str(tmp_path / "in"), str(output), "--model", str(checkpoint)]
    real_write = Path.write_bytes

    def failing(self: Path, data: Any) -> int:
        if self.parent == output and images[1].stem in self.name:  # its temporary
            raise OSError(code, os.strerror(code))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    failed = runner.invoke(app, [*args, "--device", "cpu"])
    assert failed.exit_code == 1
    line = one_error_line(failed.output)
    assert line == f"error: {output / images[1].name}: {os.strerror(code)}; {advice}"
    assert sorted(path.name for path in output.iterdir()) == [images[0].name]  # whole, or absent

    monkeypatch.undo()
    assert runner.invoke(app, [*args, "--device", "cpu"]).exit_code == 0
    assert sorted(path.name for path in output.iterdir()) == sorted(p.name for p in images)
