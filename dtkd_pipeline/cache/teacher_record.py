"""The teacher that params.yaml's ``teacher`` section names, and what a store records about it.

Shared by stages 1 and 2 and evaluate. Stage one writes the params fields below, the checkpoint
hashes and the prepared-store fingerprint; stage two compares them with its own params (and the
checkpoint files, where this machine has them) before training, so a cache built with another
teacher, checkpoint, step count, seed, RNG mode or precision is refused with the field named.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from dtkd_pipeline.config import TeacherParams
from dtkd_pipeline.devices import require_cuda_for
from dtkd_pipeline.teacher import Teacher, load_teacher, random_teacher
from dtkd_pipeline.teacher.config import PRESETS, TeacherConfigError
from dtkd_pipeline.weights import (
    WeightsError,
    file_sha256,
    resolve_hashed_weights,
    resolve_weights,
)

CHECKPOINT_SHA256 = "checkpoint_sha256"
_Resolved = TypeVar("_Resolved")
# How to fix a teacher cache that does not fit the params, for stage two (which only reads it).
REBUILD_ADVICE = (
    "Rebuild it with `dtkd-pipeline cache-teacher --overwrite` (`dvc repro` rebuilds it by "
    "itself), or point teacher.store at a cache built with these settings"
)


def teacher_params_provenance(teacher: TeacherParams) -> dict[str, Any]:
    return {
        "teacher_version": teacher_version_identity(teacher.version),
        "random_weights": teacher.random_weights,
        "steps": teacher.steps,
        "seed": teacher.seed,
        "rng": teacher.rng,
        "precision": teacher.precision,
        "dwt": teacher.dwt,
    }


def teacher_version_identity(version: str) -> str:
    """A preset's name, or a config file's content hash: one YAML named by a relative and by an
    absolute path (or renamed) is one teacher, and an edited YAML (kappa, steps) is another."""
    if version in PRESETS:
        return version
    path = Path(version).expanduser()
    if not path.is_file():
        raise TeacherConfigError(
            f"teacher.version {version}: no such config file; name a preset "
            f"({', '.join(PRESETS)}) or an official-format ResShift YAML"
        )
    return f"config file sha256 {file_sha256(path)[:16]}"


def checkpoint_files(teacher: TeacherParams, *, download: bool = True) -> dict[str, Path]:
    """The verified UNet and autoencoder checkpoint files, by role.

    `download=True` fetches a missing registered file (and raises when it cannot); `download=False`
    returns only the files this machine already has, for checks that must not need the weights.
    """
    return _per_role(teacher, download, resolve_weights)


def checkpoint_sha256(teacher: TeacherParams, *, download: bool = True) -> dict[str, str]:
    """The sha256 of each checkpoint file by role (`download` as in `checkpoint_files`)."""
    hashed = _per_role(teacher, download, resolve_hashed_weights)
    return {role: sha256 for role, (_, sha256) in hashed.items()}


def _per_role(
    teacher: TeacherParams, download: bool, resolve: Callable[..., _Resolved]
) -> dict[str, _Resolved]:
    names = {"unet": teacher.unet_weights, "autoencoder": teacher.autoencoder_weights}
    folder = teacher.weights_dir
    if folder is not None and folder.exists() and not folder.is_dir():
        raise WeightsError(f"teacher.weights_dir: {folder} is a file; point it at a folder")
    found: dict[str, _Resolved] = {}
    for role, name in names.items():
        try:
            found[role] = resolve(name, weights_dir=teacher.weights_dir, download=download)
        except WeightsError as error:
            if download:
                raise WeightsError(f"teacher.{role}_weights={name}: {error}") from error
    return found


def resolve_keyed_checkpoint(key: str, name: str, teacher: TeacherParams) -> Path:
    """The checkpoint file that params ``key`` names (a registered name or a path), looked up
    like the teacher's own files (in teacher.weights_dir); errors name ``key``."""
    try:
        return resolve_weights(name, weights_dir=teacher.weights_dir)
    except WeightsError as error:
        raise WeightsError(f"{key}={name}: {error}") from error


def local_checkpoint_provenance(teacher: TeacherParams) -> dict[str, Any]:
    """`checkpoint_sha256` of the teacher files present here ({} for a random teacher or none)."""
    if teacher.random_weights:
        return {}
    hashes = checkpoint_sha256(teacher, download=False)
    return {CHECKPOINT_SHA256: hashes} if hashes else {}


def check_device_type(teacher: TeacherParams, device_type: str) -> None:
    """Tensor-core precisions need CUDA wherever the teacher runs (here or on dask workers)."""
    require_cuda_for(teacher.precision, device_type, "teacher.precision")


def build_teacher(
    teacher: TeacherParams, device: torch.device, *, unet_key: str = "teacher.unet_weights"
) -> Teacher:
    """The teacher the params name, on ``device``, at their precision and compile mode.

    ``unet_key`` is the params key that named ``teacher.unet_weights`` (evaluate's one-step UNet
    stands in for it), so an unloadable file is reported under the key the user set."""
    check_device_type(teacher, device.type)
    if teacher.random_weights:
        return random_teacher(
            teacher.version,
            seed=0,
            device=device,
            precision=teacher.precision,
            compile_mode=teacher.compile,
        )
    files = checkpoint_files(teacher)
    return load_teacher(
        teacher.version,
        unet=files["unet"],
        autoencoder=files["autoencoder"],
        device=device,
        precision=teacher.precision,
        compile_mode=teacher.compile,
        unet_source=unet_key,
    )
