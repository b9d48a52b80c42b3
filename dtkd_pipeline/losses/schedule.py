"""Progressive knowledge-distillation weight λ(t).

`linear` (the DTKD default) ramps from 0 at t=0 to λ_final at t=T, so the student first fits the
ground truth and leans on the teacher more as training goes on; `constant` keeps λ_final throughout.
`t` counts completed optimiser steps: 0 <= t <= T.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

KdWeightMode = Literal["linear", "constant"]
KD_WEIGHT_MODES: tuple[str, ...] = get_args(KdWeightMode)


def kd_weight(
    iteration: int, total_iterations: int, final_weight: float, mode: str = "linear"
) -> float:
    """λ(t) = λ_final·t/T (linear) or λ_final (constant). Raises ValueError on invalid inputs."""
    if mode not in KD_WEIGHT_MODES:
        raise ValueError(f"unknown KD weight mode {mode!r}; choose one of {KD_WEIGHT_MODES}")
    if not _is_int(total_iterations) or total_iterations < 1:
        raise ValueError(f"total_iterations must be a positive integer, got {total_iterations!r}")
    if not _is_int(iteration) or not 0 <= iteration <= total_iterations:
        raise ValueError(
            f"iteration must be an integer in [0, {total_iterations}], got {iteration!r}"
        )
    if isinstance(final_weight, bool) or not isinstance(final_weight, int | float):
        raise ValueError(f"final_weight must be a number, got {final_weight!r}")
    if not (math.isfinite(final_weight) and final_weight >= 0.0):
        raise ValueError(f"final_weight must be finite and non-negative, got {final_weight!r}")
    if mode == "constant":
        return float(final_weight)
    return float(final_weight) * iteration / total_iterations


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
