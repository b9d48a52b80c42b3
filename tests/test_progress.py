"""Progress bars over dask work count the requested tasks, not their graphs' inner keys; importing
the helpers does not import dask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_importing_weights_or_the_progress_helpers_does_not_import_dask() -> None:
    """dask costs ~0.16 s to import; code that never runs it (weights) must not pay for it."""
    check = (
        "import sys, dtkd_pipeline.weights, dtkd_pipeline.progress; "
        "print(sorted(m for m in sys.modules if m == 'dask' or m.startswith('dask.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"
