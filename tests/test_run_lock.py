"""Run locks refuse a second holder at once, name the holder, and clean up after themselves."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from dtkd_pipeline.atomic import OutputFolderError
from dtkd_pipeline.run_lock import (
    LockHeldError,
    OutputInUseError,
    PidLock,
    exclusive_output,
    output_lock_path,
)
from tests.lock_helpers import output_locked_by_child
from tests.pipeline_helpers import pretend_read_only


def test_a_second_holder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with PidLock(path):
        with pytest.raises(LockHeldError) as caught:
            PidLock(path).acquire()  # flock is per open file, so this process too
        assert caught.value.holder == str(os.getpid()) and caught.value.path == path
    PidLock(path).acquire().release()


def test_a_removing_lock_leaves_no_file_and_a_plain_one_keeps_it(tmp_path: Path) -> None:
    removing, plain = tmp_path / "removing.lock", tmp_path / "plain.lock"
    with PidLock(removing, remove_when_released=True):
        assert removing.read_text() == f"{os.getpid()}\n"
    with PidLock(plain):
        pass
    assert not removing.exists() and plain.is_file()


def test_a_lock_on_a_file_its_holder_removed_meanwhile_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter that opened the file before its holder removed it must not count as holding
    the lock while a newcomer holds the file now at the path."""
    path = tmp_path / "x.lock"
    holder = PidLock(path, remove_when_released=True).acquire()
    newcomer = PidLock(path)
    real_flock = fcntl.flock
    calls = []

    def holder_leaves_and_newcomer_locks_first(fd: int, operation: int) -> None:
        if not calls:  # the waiter has opened the old file and is about to lock it
            calls.append(fd)
            holder.release()  # removes the file, then unlocks it
            newcomer.acquire()  # creates and locks a new file at the path
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_leaves_and_newcomer_locks_first)
    with pytest.raises(LockHeldError):
        PidLock(path).acquire()
    monkeypatch.undo()
    newcomer.release()
    assert calls


def test_a_lock_attempt_that_fails_otherwise_closes_the_file_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while waiting for the holder, or a file system without flock (ENOLCK), must not
    leave the lock file open."""
    path = tmp_path / "x.lock"

    def open_descriptors() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    def interrupted(fd: int, operation: int) -> None:
        raise KeyboardInterrupt

    def unsupported(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    before = open_descriptors()
    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        PidLock(path, wait=True).acquire()
    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.raises(OSError, match="No locks available"):
        PidLock(path).acquire()
    monkeypatch.undo()
    assert open_descriptors() == before
    PidLock(path).acquire().release()


def test_a_held_output_folder_is_refused_naming_key_folder_and_holder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with output_locked_by_child(folder, "data.prepared_dir") as holder_pid:
        with (
            pytest.raises(OutputInUseError) as caught,
            exclusive_output(folder, "data.prepared_dir"),
        ):
            pytest.fail("entered a folder another process holds")
        assert isinstance(caught.value, OutputFolderError)  # the CLI's one-line error, exit 1
        message = str(caught.value)
        assert f"data.prepared_dir: {folder} is being written by another run" in message
        assert f"PID {holder_pid} holds {output_lock_path(folder)}" in message
        assert "wait for that run to finish or stop it" in message
        assert output_lock_path(folder).is_file()  # the refused run left the holder's file be
    assert list(tmp_path.iterdir()) == []  # the holder removed its lock file


def test_runs_naming_a_folder_through_a_symlinked_parent_meet_at_one_lock(
    tmp_path: Path,
) -> None:
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "data").symlink_to(real)
    through_link = tmp_path / "data" / "prepared"
    assert output_lock_path(through_link) == real / ".prepared.dtkd-lock"
    with (
        exclusive_output(real / "prepared", "data.prepared_dir"),
        pytest.raises(OutputInUseError),
        exclusive_output(through_link, "data.prepared_dir"),
    ):
        pytest.fail("two runs wrote one folder under two names")
    assert list(real.iterdir()) == []


def test_an_output_lock_lives_beside_the_folder_and_survives_its_replacement(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "out"
    assert output_lock_path(folder) == tmp_path / ".out.dtkd-lock"
    assert output_lock_path(folder / "..") == tmp_path.with_name(f".{tmp_path.name}.dtkd-lock")
    with exclusive_output(folder, "data.prepared_dir"):
        folder.mkdir()
        folder.rename(tmp_path / "old")  # what replacing the folder whole does
        with pytest.raises(OutputInUseError), exclusive_output(folder, "data.prepared_dir"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_an_output_lock_is_released_when_the_block_fails(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError), exclusive_output(folder, "data.prepared_dir"):
        raise RuntimeError("the stage failed")
    assert list(tmp_path.iterdir()) == []
    with exclusive_output(folder, "data.prepared_dir"):
        pass


def test_a_failed_run_removes_the_lock_folders_it_made_and_only_those(tmp_path: Path) -> None:
    made = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError), exclusive_output(made / "out", "data.prepared_dir"):
        assert output_lock_path(made / "out").is_file()
        raise RuntimeError("the stage failed before writing anything")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "mine").mkdir()  # there before the run: never the run's to remove
    with pytest.raises(RuntimeError), exclusive_output(tmp_path / "mine" / "out", "key"):
        raise RuntimeError("the stage failed")
    with pytest.raises(RuntimeError), exclusive_output(made / "out", "data.prepared_dir"):
        (made / "notes.txt").write_text("written before the failure")
        raise RuntimeError("the stage failed")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "mine", "new", "new/deeper", "new/deeper/notes.txt"
    ]  # fmt: skip

    with exclusive_output(tmp_path / "kept" / "out", "data.prepared_dir"):
        pass  # a run that succeeds keeps its output's parent
    assert (tmp_path / "kept").is_dir()


def test_a_lock_folder_a_failed_run_removed_meanwhile_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "new" / "out"
    real_open = os.open
    removed: list[Path] = []

    def open_after_another_run_removed_the_folder(path: Any, *args: Any) -> int:
        if Path(path) == output_lock_path(folder) and not removed:
            removed.append(folder.parent)
            folder.parent.rmdir()  # the failed run that made it cleans up
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", open_after_another_run_removed_the_folder)
    with exclusive_output(folder, "data.prepared_dir"):
        assert removed and output_lock_path(folder).is_file()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new"]


def test_an_output_folder_under_a_file_is_refused_before_locking(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    refused = pytest.raises(OutputFolderError, match=r"data\.prepared_dir: .*notes\.txt is a file")
    with refused, exclusive_output(tmp_path / "notes.txt" / "out", "data.prepared_dir"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_existing_output_in_a_read_only_folder_is_refused_by_its_key_not_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock beside it could not be made: a PermissionError named the hidden lock file."""
    parent = tmp_path / "shared"
    (parent / "prepared").mkdir(parents=True)
    pretend_read_only(monkeypatch, parent)
    refused = pytest.raises(
        OutputFolderError,
        match=rf"^data\.prepared_dir: cannot lock {parent / 'prepared'}: {parent} is not writable",
    )
    with refused, exclusive_output(parent / "prepared", "data.prepared_dir"):
        pass
    assert [p.name for p in parent.iterdir()] == ["prepared"]
