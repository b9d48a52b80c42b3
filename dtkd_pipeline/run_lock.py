"""Run locks: a second run on something a run is writing is refused at once, not queued (the
stores' and output folders' locks); a `PidLock` with ``wait`` queues instead (weight downloads).

`flock` locks belong to the open file description, so the kernel drops them when the holder exits
or crashes; no stale lock survives a dead process. The lock file records the holder's PID so the
refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from dtkd_pipeline.atomic import (
    OutputFolderError,
    make_folders,
    naming_write_errors,
    remove_empty_folders,
    require_parent_folders,
    require_writable_in,
)

# Ends the name of an output folder's lock file; listed in .gitignore and .dvcignore.
OUTPUT_LOCK_SUFFIX = ".dtkd-lock"
# How often a run makes its lock's folder again when failed runs keep removing it meanwhile.
_LOCK_FOLDER_ATTEMPTS = 3


class LockHeldError(Exception):
    """Another process holds the lock; ``holder`` is the PID it recorded ("unknown" if none yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"PID {holder} holds {path}")
        self.path = path
        self.holder = holder


class OutputInUseError(OutputFolderError):
    """Another run holds the lock of an output folder (see :func:`exclusive_output`)."""


class PidLock:
    """Exclusive `flock` on the file at ``path``, which records the holder's PID.

    Non-blocking by default (a second run is refused with `LockHeldError`); with ``wait`` it
    blocks until the holder is done instead. With ``remove_when_released`` the holder deletes the
    file, while still holding it, so no lock file is left behind. A process that opened the file
    just before could then lock an inode no newcomer can open; `acquire` therefore keeps a lock
    only on the file now at ``path``.
    """

    def __init__(
        self, path: Path | str, *, remove_when_released: bool = False, wait: bool = False
    ) -> None:
        self.path = Path(path)
        self.remove_when_released = remove_when_released
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> Self:
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._lock_file_at_path(fd):
                    with naming_write_errors(self.path):  # a full disk fails the PID's write
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                    self._fd = fd
                    return self
            except BaseException:  # refused, Ctrl-C while waiting, no flock on this file system
                os.close(fd)
                raise
            os.close(fd)  # its holder removed it after we opened it: lock the one there now

    def _lock_file_at_path(self, fd: int) -> bool:
        """Lock the open ``fd``; whether it is still the file at ``path``."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeldError(self.path, holder) from None
        return _is_file_at(fd, self.path)

    def release(self) -> None:
        if self._fd is not None:
            if self.remove_when_released and _is_file_at(self._fd, self.path):
                with contextlib.suppress(OSError):  # a folder we may not delete in keeps it
                    self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is the file now at ``path`` (not one removed meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def output_lock_path(folder: Path) -> Path:
    """``<parent>/.<name>.dtkd-lock``: beside the folder, so it stays while the folder is
    replaced whole (a lock file inside would be swapped out with it). The parent is resolved, so
    runs that name it through a symlink and by its real path meet at one lock."""
    absolute = Path(os.path.abspath(folder))  # normalised: `.` has no name, `x/..` is `..`
    parent = Path(os.path.realpath(absolute.parent))
    return parent / f".{absolute.name}{OUTPUT_LOCK_SUFFIX}"


@contextlib.contextmanager
def exclusive_output(folder: Path, key: str) -> Iterator[None]:
    """Hold the lock of output ``folder`` for the block, so one run at a time writes it.

    A second run is refused at once with `OutputInUseError` (naming ``key``, the folder and the
    holder's PID) before it writes or deletes anything. The lock file (:func:`output_lock_path`)
    is removed when the block ends. ``key`` names the params key of ``folder`` in errors.

    The lock file's place depends on the folder's name alone, so every run meets at it: its
    parent folder is made if missing (locking in the nearest existing folder instead would let
    a run that comes after the parent appears lock another file). A run that fails removes the
    folders it made, where they are still empty.
    """
    require_parent_folders(folder, key)  # the lock goes beside it: refuse `notes.txt/out` first
    lock_path = output_lock_path(folder)
    if folder.exists():  # (a missing folder's parent was checked above)
        require_writable_in(lock_path.parent, key, f"cannot lock {folder}")
    lock = PidLock(lock_path, remove_when_released=True)
    made: list[Path] = []
    try:
        _acquire_making_folders(lock, key, folder, made)
        try:
            yield
        finally:
            lock.release()
    except BaseException:
        remove_empty_folders(made)
        raise


def _acquire_making_folders(lock: PidLock, key: str, folder: Path, made: list[Path]) -> None:
    """Take ``lock``, first making its missing parent folders (appended to ``made``)."""
    for attempt in range(_LOCK_FOLDER_ATTEMPTS):
        made.extend(make_folders(lock.path.parent))
        try:
            lock.acquire()
            return
        except FileNotFoundError:
            # A failed run removed the folder it had made, after this run found it: make it
            # again (a few times; something else is wrong if it keeps vanishing).
            if attempt == _LOCK_FOLDER_ATTEMPTS - 1:
                raise
        except LockHeldError as held:
            raise OutputInUseError(
                f"{key}: {folder} is being written by another run (PID {held.holder} holds "
                f"{held.path}); wait for that run to finish or stop it, then run again. The lock "
                "is released when that process exits."
            ) from None
