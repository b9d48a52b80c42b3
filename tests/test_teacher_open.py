"""Readers of the teacher store refuse a missing one with one message that says how to build it."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from dtkd_pipeline.evaluate.bands import analyze_cache
from stages import distill
from tests.pipeline_helpers import tiny_params


def test_distill_and_band_analysis_name_a_missing_teacher_store_the_same_way(
    tmp_path: Path,
) -> None:
    absent = tmp_path / "absent.zarr"
    params = tiny_params(tmp_path, tmp_path / "hr", [f"teacher.store={absent}"])
    with pytest.raises(FileNotFoundError) as from_distill:
        distill.run(params)
    prepared = tmp_path / "train.zarr"
    prepared.mkdir()  # the band analysis checks the prepared store first
    with pytest.raises(FileNotFoundError) as from_bands:
        analyze_cache(prepared, absent, nn.Identity(), batch_size=1, progress=False)

    message = str(from_distill.value)
    assert str(from_bands.value) == message
    assert str(absent) in message
    assert "run `dtkd-pipeline cache-teacher` first" in message
    assert "teacher.store" in message
