"""Coordinator lock: at most one process drives the creation or filling of a store.

`flock` locks belong to the open file description, so the kernel drops them when the holder exits
or crashes; no stale lock survives a dead process. Shard writers (e.g. dask workers each writing
distinct shards for the coordinator) do not take this lock: shard ownership is what keeps them
apart, the lock only stops two *runs* from filling the same store.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import StoreLockedError

LOCK_NAME = ".lock"


class StoreLock:
    """Exclusive, non-blocking `flock` on `<store>/.lock`; the file records the holder's PID."""

    def __init__(self, store_path: Path | str) -> None:
        self.path = Path(store_path) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"store {self.path.parent} is in use: PID {holder} holds {self.path}. Wait for "
                "that run to finish or stop it; the lock is released when the process exits."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        # The file stays: unlinking a lock file lets a third process lock a fresh inode while a
        # second one still waits on the old one.
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
