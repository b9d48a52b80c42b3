"""ResShift's exponential eta schedule and the float32 coefficients of its sampler (reference §2.1).

Upstream keeps every schedule array in float64 numpy and casts an entry to float32 only after
indexing it (`_extract_into_tensor(...).float()`); `StepCoefficients` precomputes exactly those
float32 values once, so the sampling loop does no per-step schedule work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dtkd_pipeline.teacher.config import DiffusionConfig


@dataclass(frozen=True)
class EtaSchedule:
    """float64 schedule arrays, index i = 0..T-1 (paper step t = i + 1)."""

    kappa: float
    sqrt_etas: np.ndarray
    etas: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    posterior_log_variance_clipped: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.sqrt_etas)


def exponential_sqrt_etas(
    steps: int, min_noise_level: float, etas_end: float, kappa: float, power: float
) -> np.ndarray:
    """sqrt_eta_i = s1 · b^β_i with s1 = min(mnl/κ, mnl), b = exp(ln(etas_end/s1)/(T-1)),
    β_i = linspace(0, 1, T)^p · (T-1). `etas_end` is the last sqrt(eta), not eta (journal s1)."""
    if steps < 2:
        raise ValueError(f"the exponential schedule needs at least 2 steps, got {steps}")
    start = min(min_noise_level / kappa, min_noise_level)
    increaser = math.exp(1 / (steps - 1) * math.log(etas_end / start))
    # Upstream's np.power rounds differently (by 1 ulp) on CPUs where numpy dispatches to its
    # AVX-512 kernels; libm's pow, which numpy uses elsewhere, gives the same schedule everywhere.
    exponents = np.array([x**power for x in np.linspace(0, 1, steps, endpoint=True)])
    exponents *= steps - 1
    return np.array([math.pow(increaser, e) for e in exponents]) * start


def build_schedule(config: DiffusionConfig) -> EtaSchedule:
    sqrt_etas = exponential_sqrt_etas(
        config.steps, config.min_noise_level, config.etas_end, config.kappa, config.power
    )
    etas = sqrt_etas**2
    etas_prev = np.append(0.0, etas[:-1])
    alpha = etas - etas_prev
    posterior_variance = config.kappa**2 * etas_prev / etas * alpha
    # Step 0 has zero variance; upstream clips its log by reusing step 1's variance.
    clipped = np.append(posterior_variance[1], posterior_variance[1:])
    return EtaSchedule(
        kappa=config.kappa,
        sqrt_etas=sqrt_etas,
        etas=etas,
        posterior_mean_coef1=etas_prev / etas,
        posterior_mean_coef2=alpha / etas,
        posterior_log_variance_clipped=np.array([math.log(v) for v in clipped]),  # libm, as above
    )


def _f32(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).float()


@dataclass(frozen=True)
class StepCoefficients:
    """Per-step float32 scalars, computed once per device with upstream's float32 op sequence."""

    input_std: torch.Tensor  # sqrt(f32(eta)·κ² + 1): the UNet input is z / input_std
    coef1: torch.Tensor  # f32(eta_prev / eta)
    coef2: torch.Tensor  # f32(alpha / eta)
    noise_std: torch.Tensor  # exp(0.5 · f32(log var_clipped)), not sqrt(var)
    prior_std: torch.Tensor  # f32(κ · sqrt_eta[T-1]), the product taken in float64
    timesteps: torch.Tensor  # int64 step index i, as the UNet receives it (no rescaling)

    @classmethod
    def from_schedule(cls, schedule: EtaSchedule, device: torch.device | str) -> StepCoefficients:
        steps = schedule.steps

        # Upstream evaluates sqrt/exp on full latent-shaped tensors; evaluating them on 64 copies
        # keeps the vectorised CPU kernels in use (their scalar tails may round differently).
        def elementwise(
            values: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
        ) -> torch.Tensor:
            return torch.stack([fn(v.expand(64).clone())[0] for v in values])

        input_std = elementwise(
            _f32(schedule.etas), lambda e: torch.sqrt(e * schedule.kappa**2 + 1)
        )
        noise_std = elementwise(
            _f32(schedule.posterior_log_variance_clipped), lambda lv: torch.exp(0.5 * lv)
        )
        return cls(
            input_std=input_std.to(device),
            coef1=_f32(schedule.posterior_mean_coef1).to(device),
            coef2=_f32(schedule.posterior_mean_coef2).to(device),
            noise_std=noise_std.to(device),
            prior_std=_f32(schedule.kappa * schedule.sqrt_etas[-1:]).to(device)[0],
            timesteps=torch.arange(steps, dtype=torch.int64, device=device),
        )
