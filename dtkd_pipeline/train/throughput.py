"""Training throughput and loader stalls, measured on the host clock.

The host waits in `next(batches)` while the GPU may still run the previous step's backward pass,
so the waiting share is an upper bound on how long the loader kept the GPU idle: near 0 % means
the loader never made it wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Throughput:
    """Samples/s and loader-wait share per logging window and over the run.

    The first step (cuDNN autotuning, torch.compile, worker start-up) is left out of the totals.
    """

    _window_start: float = field(default_factory=time.perf_counter)
    _window_samples: int = 0
    _window_wait: float = 0.0
    _total_seconds: float = 0.0
    _total_samples: int = 0
    _total_wait: float = 0.0
    _steps: int = 0
    _last_step: float = 0.0

    def waited(self, seconds: float) -> None:
        self._window_wait += seconds

    def stepped(self, samples: int) -> None:
        self._steps += 1
        self._window_samples += samples
        self._last_step = time.perf_counter()
        if self._steps == 1:  # warm-up step: start all clocks after it
            self._window_start, self._window_samples, self._window_wait = time.perf_counter(), 0, 0

    def window(self, now: float | None = None) -> dict[str, float]:
        """Figures since the last call (or the end of the warm-up step), then a new window;
        empty while no timed step has run."""
        now = time.perf_counter() if now is None else now
        seconds = max(now - self._window_start, 1e-9)
        figures = {
            "perf/samples_per_s": self._window_samples / seconds,
            "perf/loader_wait": self._window_wait / seconds,
        }
        if not self._window_samples:
            figures = {}
        self._total_seconds += seconds
        self._total_samples += self._window_samples
        self._total_wait += self._window_wait
        self._window_start, self._window_samples, self._window_wait = now, 0, 0.0
        return figures

    def totals(self) -> dict[str, float]:
        """Run-long figures up to the last step (what follows it, e.g. a final validation, is
        not training time)."""
        self.window(now=max(self._last_step, self._window_start))
        seconds = max(self._total_seconds, 1e-9)
        return {
            "samples_per_s": self._total_samples / seconds,
            "loader_wait": self._total_wait / seconds,
            "timed_steps": max(self._steps - 1, 0),
        }
