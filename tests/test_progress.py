"""Progress bars over dask work count the requested tasks, not their graphs' inner keys."""

from __future__ import annotations

import io

import dask
import pytest
from tqdm.auto import tqdm

from dtkd_pipeline.progress import DaskTqdm


def _double(x: int) -> int:
    return 2 * x


def _increment(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_bar_advances_once_per_task_of_a_nested_graph(scheduler: str) -> None:
    tasks = [dask.delayed(_increment)(dask.delayed(_double)(x)) for x in range(3)]
    with tqdm(total=len(tasks), file=io.StringIO()) as bar, DaskTqdm(bar, tasks):
        results = dask.compute(*tasks, scheduler=scheduler)
    assert results == (1, 3, 5)
    assert bar.n == 3  # six keys ran; only the three requested tasks count
