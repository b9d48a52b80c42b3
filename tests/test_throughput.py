"""Training throughput figures: samples/s and the loader-wait share, warm-up step excluded."""

from __future__ import annotations

import pytest

from dtkd_pipeline.train import throughput as throughput_module
from dtkd_pipeline.train.throughput import Throughput


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_warm_up_step_is_excluded_and_wait_share_is_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(throughput_module.time, "perf_counter", clock)
    meter = Throughput()
    clock.now += 30.0  # first step: compile and autotuning, must not count
    meter.waited(5.0)
    meter.stepped(64)
    assert meter.window() == {}  # nothing timed yet
    for _ in range(4):  # 4 steps of 0.5 s, 0.1 s of each waiting for data
        clock.now += 0.5
        meter.waited(0.1)
        meter.stepped(64)
    window = meter.window()
    assert window["perf/samples_per_s"] == pytest.approx(4 * 64 / 2.0)
    assert window["perf/loader_wait"] == pytest.approx(0.2)
    clock.now += 1.0  # two slower steps, no waiting
    meter.stepped(64)
    meter.stepped(64)
    clock.now += 9.0  # a final validation after the last step is not training time
    totals = meter.totals()
    assert totals["samples_per_s"] == pytest.approx(6 * 64 / 3.0)
    assert totals["loader_wait"] == pytest.approx(0.4 / 3.0)
    assert totals["timed_steps"] == 6
