"""ResShift teacher (zsyOAOA/ResShift, real-world x4 SR): a from-spec PyTorch port that loads the
official v1/v2/v3 checkpoints and matches the official sampler bit for bit on CPU in float32.

Public API:
* `build_teacher_networks(config) -> (unet, autoencoder)`: random-init networks for a preset / YAML.
* `load_teacher(config, unet=PATH, autoencoder=PATH, device=..., precision=...) -> Teacher`.
* `random_teacher(config, seed=...)`: random weights, for tests and benchmarks only.
* `Teacher.sample(lr, seed=..., rng="official" | "per-sample", ...)`:
  B×3×h×w in [0, 1] -> B×3×4h×4w in [0, 1].
"""

from dtkd_pipeline.teacher.checkpoint import TeacherCheckpointError
from dtkd_pipeline.teacher.config import (
    PRESETS,
    TeacherConfig,
    TeacherConfigError,
    load_config_file,
    resolve_config,
)
from dtkd_pipeline.teacher.factory import build_teacher_networks, load_teacher, random_teacher
from dtkd_pipeline.teacher.noise import OfficialNoise, per_sample_seed
from dtkd_pipeline.teacher.sampler import MIN_LR_SIDE, Teacher, teacher_name

__all__ = [
    "MIN_LR_SIDE",
    "PRESETS",
    "OfficialNoise",
    "Teacher",
    "TeacherCheckpointError",
    "TeacherConfig",
    "TeacherConfigError",
    "build_teacher_networks",
    "load_config_file",
    "load_teacher",
    "per_sample_seed",
    "random_teacher",
    "resolve_config",
    "teacher_name",
]
