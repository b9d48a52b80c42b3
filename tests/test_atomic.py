"""Stage outputs are replaced whole, only when a stage wrote them; dead writers' temporaries go."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dtkd_pipeline.atomic import (
    OUTPUT_MARKER,
    OutputFolderError,
    mark_output,
    remove_dead_temporaries,
    replacing,
    require_file_target,
    require_folder,
    staged_folder,
    write_together,
)
from dtkd_pipeline.train.checkpoint import CheckpointManager, atomic_torch_save
from tests.pipeline_helpers import pretend_read_only


def test_a_folder_no_stage_wrote_is_refused_before_any_work(tmp_path: Path) -> None:
    mine = tmp_path / "docs"
    mine.mkdir()
    (mine / "notes.md").write_text("keep me")
    refused = pytest.raises(OutputFolderError, match=r"report\.out_dir: .*docs holds files no")
    with refused, staged_folder(mine, "report.out_dir"):
        pytest.fail("the stage must not start")
    assert (mine / "notes.md").read_text() == "keep me"
    assert not (tmp_path / "docs.partial").exists()

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    refused = pytest.raises(OutputFolderError, match=r"evaluate\.out_dir: .*a-file is a file")
    with refused, staged_folder(a_file, "evaluate.out_dir"):
        pytest.fail("the stage must not start")


def test_an_output_folder_under_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    """`--out-dir notes.txt/run` could only fail when the outputs are written, after the work."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"--out-dir: .*notes\.txt is a file"):
        require_folder(tmp_path / "notes.txt" / "run" / "bands", "--out-dir")
    require_folder(tmp_path / "new" / "run", "--out-dir")  # absent folders are fine
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_an_existing_output_this_process_cannot_write_is_refused_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only missing outputs were checked: an existing read-only one failed after the work."""
    out = tmp_path / "out"
    out.mkdir()
    preview = out / "preview.png"
    preview.write_bytes(b"an older preview")
    pretend_read_only(monkeypatch, out)
    fix = f"{out} is not writable; choose another --out-dir or fix the permissions of {out}"
    with pytest.raises(OutputFolderError) as info:
        require_folder(out, "--out-dir")  # written in
    assert str(info.value) == f"--out-dir: {fix}"
    require_folder(out, "--weights-dir", writable=False)  # only read: a shared read-only folder
    with pytest.raises(OutputFolderError) as info:
        require_file_target(preview, "teacher.preview")  # replaced by a rename in `out`
    assert str(info.value).startswith(f"teacher.preview: cannot replace {preview}: {out} is not")
    assert preview.read_bytes() == b"an older preview"


def test_a_folder_replaced_whole_needs_its_parent_and_its_entries_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap came after the stage's work and failed there, naming `<folder>.partial`."""
    parent = tmp_path / "data"
    final = parent / "metrics"
    final.mkdir(parents=True)
    mark_output(final)
    pretend_read_only(monkeypatch, final)
    with (
        pytest.raises(OutputFolderError, match=rf"^evaluate\.metrics_dir: {final} is not writable"),
        staged_folder(final, "evaluate.metrics_dir"),
    ):
        pytest.fail("the stage must not start")
    (final / OUTPUT_MARKER).unlink()  # empty: its parent removes it, so it is replaced
    with staged_folder(final, "evaluate.metrics_dir") as staging:
        (staging / "demo.json").write_text("{}")
    assert (final / "demo.json").is_file()

    pretend_read_only(monkeypatch, parent)
    refused = rf"^evaluate\.metrics_dir: cannot replace {final}: {parent} is not writable"
    with (
        pytest.raises(OutputFolderError, match=refused),
        staged_folder(final, "evaluate.metrics_dir"),
    ):
        pytest.fail("the stage must not start")
    assert sorted(p.name for p in parent.iterdir()) == ["metrics"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_chmod_read_only_output_folder_is_refused_before_the_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mark_output(out)  # a stage's earlier output
    out.chmod(0o555)
    try:
        with pytest.raises(OutputFolderError, match=rf"^--out-dir: {out} is not writable"):
            require_folder(out, "--out-dir")
        with (
            pytest.raises(OutputFolderError, match=rf"^report\.out_dir: {out} is not writable"),
            staged_folder(out, "report.out_dir"),
        ):
            pytest.fail("the stage must not start")
    finally:
        out.chmod(0o755)


def test_a_stage_output_is_replaced_whole_and_marked(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()  # empty: allowed
    for text in ("first", "second"):
        with staged_folder(final, "report.out_dir") as staging:
            (staging / "README.md").write_text(text)
            if text == "first":
                (staging / "stale.txt").write_text("gone on rerun")
    assert sorted(p.name for p in final.iterdir()) == [OUTPUT_MARKER, "README.md"]
    assert (final / "README.md").read_text() == "second"

    with pytest.raises(RuntimeError), staged_folder(final, "report.out_dir") as staging:
        (staging / "README.md").write_text("third")
        raise RuntimeError("stage failed")
    assert (final / "README.md").read_text() == "second"  # the previous result stays


def test_an_old_output_that_cannot_be_fully_deleted_does_not_cost_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting the old output first, as before, stopped halfway on an undeletable file, the
    swap then failed on a non-empty folder and the finished result was thrown away."""
    final = tmp_path / "out"
    with staged_folder(final, "report.out_dir") as staging:
        (staging / "README.md").write_text("old")

    def stuck_rmtree(path: object, ignore_errors: bool = False) -> None:
        if Path(str(path)).exists() and not ignore_errors:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", stuck_rmtree)  # deletes nothing, as if every file stuck
    warned = pytest.warns(UserWarning, match=r"out\.trash-\d+.*delete .* by hand")
    with warned, staged_folder(final, "report.out_dir") as staging:
        (staging / "README.md").write_text("new")
    assert (final / "README.md").read_text() == "new"


def test_a_failed_stage_removes_the_parent_folders_it_made_for_its_output(
    tmp_path: Path,
) -> None:
    final = tmp_path / "data" / "report" / "out"
    with pytest.raises(RuntimeError), staged_folder(final, "report.out_dir"):
        raise RuntimeError("stage failed")  # e.g. report run before evaluate
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("not the stage's")
    with pytest.raises(RuntimeError), staged_folder(final, "report.out_dir"):
        raise RuntimeError("stage failed")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["keep.txt"]
    with staged_folder(final, "report.out_dir") as staging:
        (staging / "README.md").write_text("done")
    assert (final / "README.md").read_text() == "done"


def test_a_checkpoint_temporary_left_by_a_killed_run_is_removed_by_the_next_save(
    tmp_path: Path,
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    leftover = tmp_path / f".student.pt.tmp-{int(dead.stdout)}"
    leftover.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".student.pt.tmp-{os.getppid()}"  # another live writer's: left alone
    alive.write_bytes(b"in progress")

    atomic_torch_save({"weights": torch.ones(2)}, tmp_path / "student.pt")

    assert not leftover.exists() and alive.exists()
    assert torch.load(tmp_path / "student.pt")["weights"].tolist() == [1.0, 1.0]


def test_a_checkpoint_save_removes_every_dead_writers_temporary_whatever_its_name(
    tmp_path: Path,
) -> None:
    """A run killed while saving iter_10, resumed with another checkpoint_every, never writes
    iter_10 again: its temporary must go all the same."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    leftover = tmp_path / f".iter_00000010.pt.tmp-{int(dead.stdout)}"
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / "notes-2024.txt"  # not a temporary: a name ending in -<digits>
    unrelated.write_text("keep")

    CheckpointManager(tmp_path, keep_last=2).save({"weights": torch.ones(1)}, iteration=14)

    assert not leftover.exists() and unrelated.exists()
    assert (tmp_path / "iter_00000014.pt").is_file()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the writer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert target.read_text() == "old"


def test_a_write_error_names_the_target_not_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "student.onnx"
    with pytest.raises(OSError) as info, replacing(target) as tmp:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))  # the disk filled up
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert ".tmp" not in str(info.value)

    (target / "in-the-way").mkdir(parents=True)  # the rename fails: a folder holds the name
    with pytest.raises(OSError) as info, replacing(target) as tmp:
        tmp.write_bytes(b"graph")
    assert info.value.filename == str(target) and info.value.filename2 is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]


def test_files_written_together_keep_their_old_contents_when_one_write_fails(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "table.json", tmp_path / "table.md"
    first.write_text("old json")
    second.write_text("old md")
    (tmp_path / "in-the-way").mkdir()
    blocked = tmp_path / "in-the-way" / "table.csv"
    blocked.mkdir()  # its temporary can be written, its rename cannot: it fails last
    with pytest.raises(OSError) as info:
        write_together({first: b"new json", second: b"new md", blocked: b"new csv"})
    assert info.value.filename == str(blocked)
    assert first.read_text() == "old json" and second.read_text() == "old md"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-the-way", "table.json", "table.md"]
    assert [p.name for p in (tmp_path / "in-the-way").iterdir()] == ["table.csv"]

    write_together({first: b"new json", second: b"new md"})
    assert first.read_text() == "new json" and second.read_text() == "new md"


def test_files_written_together_remove_a_killed_writers_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    leftover = tmp_path / f".table.md.0123abcd.tmp-{_dead_pid()}"
    leftover.write_text("half a table")
    write_together({target: b"table"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_a_durable_write_syncs_the_file_before_its_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline import atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        atomic.os,
        "fsync",
        lambda fd: events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}") or real_fsync(fd),
    )
    monkeypatch.setattr(
        atomic.os,
        "replace",
        lambda src, dst: events.append(f"rename {src} {dst}") or real_replace(src, dst),
    )
    target = tmp_path / "record.json"
    with replacing(target, durable=True) as tmp:
        tmp.write_text("{}")
    assert events == [f"fsync {tmp}", f"rename {tmp} {target}", f"fsync {tmp_path}"]
    assert target.read_text() == "{}"


def _dead_pid() -> int:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    return int(dead.stdout)


def test_a_dead_runs_leftover_that_cannot_be_deleted_warns_once_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to stay forever without a word: the user never learnt it was there."""
    pid = _dead_pid()
    stuck = tmp_path / f"s.zarr.trash-{pid}"
    for part in ("lr", "hr"):
        (stuck / part).mkdir(parents=True)
        (stuck / part / "c0").write_bytes(b"chunk")
    freed = tmp_path / f"s.zarr.tmp-{pid}"
    (freed / "lr").mkdir(parents=True)
    real_rmtree = shutil.rmtree

    def rmtree(path: object, ignore_errors: bool = False, **kwargs: object) -> None:
        if Path(str(path)) != stuck:
            real_rmtree(path, ignore_errors=ignore_errors, **kwargs)  # type: ignore[arg-type]
        elif not ignore_errors:  # a busy or read-only filesystem: nothing inside goes either
            raise PermissionError(errno.EACCES, "Permission denied", str(stuck / "lr" / "c0"))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.warns(UserWarning) as caught:
        remove_dead_temporaries(tmp_path)
    assert [str(warning.message) for warning in caught] == [
        f"{stuck}: a dead run's leftover could not be deleted (Permission denied); "
        f"no running process uses it, so delete {stuck} by hand"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [stuck.name]


def test_a_dead_runs_leftover_another_process_deleted_meanwhile_does_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting together both clean the same folder: the loser finds it gone."""
    leftover = tmp_path / f"student.pt.tmp-{_dead_pid()}"
    leftover.mkdir()
    real_rmtree = shutil.rmtree

    def rmtree_raced(path: object, ignore_errors: bool = False, **kwargs: object) -> None:
        real_rmtree(path, ignore_errors=True)  # type: ignore[arg-type]
        if not ignore_errors:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(shutil, "rmtree", rmtree_raced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_dead_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []
