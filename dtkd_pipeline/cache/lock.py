"""Coordinator lock: at most one process drives the creation or filling of a store.

A `PidLock` (see run_lock.py: released by the kernel when the holder dies) on `<store>/.lock`.
Shard writers (e.g. dask workers each writing distinct shards for the coordinator) do not take
this lock: shard ownership is what keeps them apart, the lock only stops two *runs* from filling
the same store.
"""

from __future__ import annotations

from pathlib import Path

from dtkd_pipeline.run_lock import LockHeldError, PidLock

from .errors import StoreLockedError

LOCK_NAME = ".lock"


class StoreLock(PidLock):
    """Exclusive, non-blocking `flock` on `<store>/.lock`; the file records the holder's PID.

    The file stays after release: it is part of the store, built with its skeleton and renamed
    with it while held (see `TileStore.create`).
    """

    def __init__(self, store_path: Path | str) -> None:
        super().__init__(Path(store_path) / LOCK_NAME)

    def acquire(self) -> StoreLock:
        try:
            return super().acquire()
        except LockHeldError as held:
            raise StoreLockedError(
                f"store {self.path.parent} is in use: PID {held.holder} holds {self.path}. Wait "
                "for that run to finish or stop it; the lock is released when the process exits."
            ) from None
