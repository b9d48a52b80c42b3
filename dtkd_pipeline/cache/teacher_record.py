"""The provenance fields of a teacher store that follow from params (shared by stages 1 and 2).

Stage one writes these (plus checkpoint hashes and the prepared-store fingerprint); stage two
compares them with its own params before training, so a cache built with another teacher, step
count, seed, RNG mode or precision is refused with the field named.
"""

from __future__ import annotations

from typing import Any

from dtkd_pipeline.config import TeacherParams


def teacher_params_provenance(teacher: TeacherParams) -> dict[str, Any]:
    return {
        "teacher_version": teacher.version,
        "random_weights": teacher.random_weights,
        "steps": teacher.steps,
        "seed": teacher.seed,
        "rng": teacher.rng,
        "precision": teacher.precision,
        "dwt": teacher.dwt,
    }
