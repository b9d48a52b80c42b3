"""Progress bars over dask work count the requested tasks, not their graphs' inner keys."""

from __future__ import annotations

import dask
import pytest

from dtkd_pipeline.progress import DaskTqdm


class _CountingBar:
    """Counts `update` calls like tqdm's `n`, whatever TQDM_DISABLE says (CI sets it)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, count: int = 1) -> None:
        self.n += count


def _double(x: int) -> int:
    return 2 * x


def _increment(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_bar_advances_once_per_task_of_a_nested_graph(scheduler: str) -> None:
    tasks = [dask.delayed(_increment)(dask.delayed(_double)(x)) for x in range(3)]
    bar = _CountingBar()
    with DaskTqdm(bar, tasks):  # type: ignore[arg-type]
        results = dask.compute(*tasks, scheduler=scheduler)
    assert results == (1, 3, 5)
    assert bar.n == 3  # six keys ran; only the three requested tasks count
