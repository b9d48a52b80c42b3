"""Progress bar helpers: one that honours TQDM_DISABLE when hidden on request, one for dask."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dask.callbacks import Callback
from tqdm.auto import tqdm


def hidden_unless(shown: bool) -> dict[str, bool]:
    """tqdm keyword arguments that hide a bar unless `shown`.

    tqdm reads TQDM_DISABLE (like every ``TQDM_*`` variable) as the default of its ``disable``
    argument, so an explicit ``disable=False`` would show the bar despite it: a bar that may show
    leaves ``disable`` unset.
    """
    return {} if shown else {"disable": True}


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
