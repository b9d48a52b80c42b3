"""Run locks: a second run on something a run is writing is refused at once, not queued.

`flock` locks belong to the open file description, so the kernel drops them when the holder exits
or crashes; no stale lock survives a dead process. The lock file records the holder's PID so the
refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self


class LockHeldError(Exception):
    """Another process holds the lock; ``holder`` is the PID it recorded ("unknown" if none yet)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"PID {holder} holds {path}")
        self.path = path
        self.holder = holder


class PidLock:
    """Exclusive, non-blocking `flock` on the file at ``path``, which records the holder's PID."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> Self:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeldError(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
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
