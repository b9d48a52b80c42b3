"""A tqdm bar for dask's local schedulers, so dask work shows the same bars as everything else."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask.callbacks import Callback
from tqdm.auto import tqdm


class DaskTqdm(Callback):
    """Advance `bar` by one as each of `tasks` (dask.delayed objects) finishes.

    Only the given tasks count, not the intermediate keys of their graphs. The callback runs in
    the scheduling process, also for the "processes" scheduler.
    """

    def __init__(self, bar: tqdm, tasks: Iterable[Any]) -> None:
        super().__init__()
        self._bar = bar
        self._keys = {task.key for task in tasks}

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._keys:
            self._bar.update(1)
