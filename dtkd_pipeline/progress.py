"""Progress bar helpers: one that honours TQDM_DISABLE when hidden on request, one for dask."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm


def hidden_unless(shown: bool) -> dict[str, bool]:
    """tqdm keyword arguments that hide a bar unless `shown`.

    tqdm reads TQDM_DISABLE (like every ``TQDM_*`` variable) as the default of its ``disable``
    argument, so an explicit ``disable=False`` would show the bar despite it: a bar that may show
    leaves ``disable`` unset.
    """
    return {} if shown else {"disable": True}


class DaskTqdm:
    """While entered, advance `bar` as each of `tasks` (dask.delayed objects) finishes: by one, or
    by its entry in `sizes` (the tiles or images a task covers, so the bar counts those).

    Only the given tasks count, not the intermediate keys of their graphs. The callback runs in
    the scheduling process, also for the "processes" scheduler.
    """

    def __init__(self, bar: tqdm, tasks: Sequence[Any], sizes: Sequence[int] | None = None) -> None:
        self._bar = bar
        self._sizes = dict(
            zip((task.key for task in tasks), sizes or [1] * len(tasks), strict=True)
        )
        self._callback: Any = None

    def __enter__(self) -> DaskTqdm:
        # dask is imported on entry, not with this module: modules that never run dask import
        # hidden_unless from here (weights, the training loop), and dask takes ~0.16 s to import.
        from dask.callbacks import Callback

        self._callback = Callback(posttask=self._posttask)
        self._callback.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._callback.__exit__(exc_type, exc, tb)
        self._callback = None

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._sizes:
            self._bar.update(self._sizes[key])
