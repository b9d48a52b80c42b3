"""KD weight schedule λ(t)."""

from __future__ import annotations

import pytest

from dtkd_pipeline.losses import kd_weight


@pytest.mark.parametrize(
    ("iteration", "linear", "constant"), [(0, 0.0, 0.5), (500, 0.25, 0.5), (1000, 0.5, 0.5)]
)
def test_kd_weight_grows_linearly_to_its_final_value_or_stays_constant(
    iteration: int, linear: float, constant: float
) -> None:
    assert kd_weight(iteration, 1000, 0.5) == pytest.approx(linear)
    assert kd_weight(iteration, 1000, 0.5, mode="linear") == pytest.approx(linear)
    assert kd_weight(iteration, 1000, 0.5, mode="constant") == constant


@pytest.mark.parametrize(
    ("args", "mode", "match"),
    [
        ((-1, 10, 1.0), "linear", "iteration"),
        ((11, 10, 1.0), "linear", "iteration"),
        ((1.5, 10, 1.0), "linear", "iteration"),
        ((0, 0, 1.0), "linear", "total_iterations"),
        ((0, True, 1.0), "linear", "total_iterations"),
        ((0, 10, -1.0), "linear", "final_weight"),
        ((0, 10, float("nan")), "linear", "final_weight"),
        ((0, 10, "1"), "linear", "final_weight"),
        ((0, 10, 1.0), "cosine", "mode"),
    ],
)
def test_invalid_arguments_raise(args: tuple, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kd_weight(*args, mode=mode)
