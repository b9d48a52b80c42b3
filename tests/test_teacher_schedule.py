"""ResShift eta schedule and sampler coefficients (reference §2.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dtkd_pipeline.teacher import resolve_config
from dtkd_pipeline.teacher.diffusion import StepCoefficients, build_schedule


def test_sqrt_etas_equal_fixture_exactly(resshift_parity_dir: Path) -> None:
    meta = torch.load(resshift_parity_dir / "basic.pt", weights_only=False)["meta"]
    schedule = build_schedule(resolve_config(resshift_parity_dir / "config.yaml").diffusion)
    assert torch.equal(torch.from_numpy(schedule.sqrt_etas), meta["sqrt_etas"])
    assert schedule.sqrt_etas[-1] == 0.9899999999999998  # float64 value upstream produces


def test_v1_and_v2_share_the_15_step_schedule() -> None:
    v1 = build_schedule(resolve_config("v1").diffusion)
    v2 = build_schedule(resolve_config("v2").diffusion)
    assert v1.steps == 15
    assert np.array_equal(v1.sqrt_etas, v2.sqrt_etas)
    assert v1.sqrt_etas[0] == pytest.approx(0.02, abs=1e-15)


def test_v3_journal_schedule() -> None:
    schedule = build_schedule(resolve_config("v3").diffusion)
    expected = [0.1, 0.5200963722, 0.7613819906, 0.99]
    np.testing.assert_allclose(schedule.sqrt_etas, expected, rtol=0, atol=1e-9)


def test_float32_coefficients_match_reference_table() -> None:
    coeff = StepCoefficients.from_schedule(build_schedule(resolve_config("v1").diffusion), "cpu")
    table = {  # i: (input std, c1, c2, noise std), reference §2.1
        0: (1.00079978, 0.0, 1.0, 0.03941293),
        1: (1.02708840, 0.0291382582, 0.9708617418, 0.03941293),
        2: (1.06034577, 0.4416409514, 0.5583590486, 0.17509952),
        7: (1.38049352, 0.7509148302, 0.2490851698, 0.41160098),
        14: (2.21819735, 0.8423278930, 0.1576721070, 0.72157788),
    }
    for i, (input_std, c1, c2, noise_std) in table.items():
        assert coeff.input_std[i].item() == pytest.approx(input_std, abs=1e-8)
        assert coeff.coef1[i].item() == pytest.approx(c1, abs=1e-7)
        assert coeff.coef2[i].item() == pytest.approx(c2, abs=1e-7)
        assert coeff.noise_std[i].item() == pytest.approx(noise_std, abs=1e-8)
    assert coeff.prior_std.item() == 1.9800000190734863  # float32(κ·sqrt_eta_T)
    assert all(c.dtype == torch.float32 for c in (coeff.coef1, coeff.coef2, coeff.noise_std))
    assert coeff.timesteps.tolist() == list(range(15))
