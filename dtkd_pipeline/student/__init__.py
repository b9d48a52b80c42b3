"""The SwinIR-small student: named builds and weight loading.

`build_student("swinir-s-x4")` gives SwinIR lightweight x4 (929,628 parameters, official key set);
`load_student_weights(model, path)` loads official release files and this project's checkpoints.
"""

from dtkd_pipeline.student.registry import (
    STUDENT_CONFIGS,
    available_students,
    build_student,
    student_config,
)
from dtkd_pipeline.student.swinir import SwinIR, SwinIRConfig
from dtkd_pipeline.student.weights import StudentWeightsError, load_student_weights

__all__ = [
    "STUDENT_CONFIGS",
    "StudentWeightsError",
    "SwinIR",
    "SwinIRConfig",
    "available_students",
    "build_student",
    "load_student_weights",
    "student_config",
]
