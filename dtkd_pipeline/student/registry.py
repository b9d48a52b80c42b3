"""Named student configurations (timm-style): `build_student("swinir-s-x4")`."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dtkd_pipeline.student.swinir import SwinIR, SwinIRConfig

_LIGHTWEIGHT = SwinIRConfig()

STUDENT_CONFIGS: dict[str, SwinIRConfig] = {
    # SwinIR lightweight ("SwinIR-S"): 4 RSTBs × 6 Swin layers, dim 60, window 8, s64.
    "swinir-s-x2": dataclasses.replace(_LIGHTWEIGHT, upscale=2),
    "swinir-s-x3": dataclasses.replace(_LIGHTWEIGHT, upscale=3),
    "swinir-s-x4": _LIGHTWEIGHT,
    # A few-thousand-parameter model with the same structure, for fast tests.
    "swinir-tiny-x4": dataclasses.replace(
        _LIGHTWEIGHT,
        img_size=16,
        window_size=4,
        embed_dim=12,
        depths=(2, 2),
        num_heads=(2, 2),
    ),
}


def available_students() -> list[str]:
    """Names accepted by `build_student`."""
    return sorted(STUDENT_CONFIGS)


def student_config(name: str = "swinir-s-x4", **overrides: Any) -> SwinIRConfig:
    """The named config with `overrides` (SwinIRConfig field names) applied."""
    if name not in STUDENT_CONFIGS:
        raise ValueError(f"unknown student {name!r}; available: {', '.join(available_students())}")
    fields = {field.name for field in dataclasses.fields(SwinIRConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for student {name!r}; valid fields: {sorted(fields)}"
        )
    for sequence_field in ("depths", "num_heads"):
        if sequence_field in overrides:
            overrides[sequence_field] = tuple(overrides[sequence_field])
    return dataclasses.replace(STUDENT_CONFIGS[name], **overrides)


def build_student(name: str = "swinir-s-x4", **overrides: Any) -> nn.Module:
    """Build a randomly initialised student, e.g. `build_student("swinir-s-x4", upscale=2)`."""
    return SwinIR(student_config(name, **overrides))
