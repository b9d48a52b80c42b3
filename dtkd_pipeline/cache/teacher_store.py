"""The teacher store's layout and provenance for given params, and the teacher it records.

Stage one creates (or resumes) the store with these; `--repair` and dask workers compare a built
teacher with what the store records, so a store is never filled by two different teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dtkd_pipeline import __version__
from dtkd_pipeline.cache.layout import (
    DWT_LEVELS,
    KIND_TEACHER,
    LR,
    Compression,
    StoreLayout,
    teacher_arrays,
)
from dtkd_pipeline.cache.provenance import PREPARED_FINGERPRINT
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.cache.teacher_record import (
    CHECKPOINT_SHA256,
    checkpoint_sha256,
    teacher_params_provenance,
)
from dtkd_pipeline.config import Params, TeacherParams
from dtkd_pipeline.losses.wavelet import subband_level, subband_names
from dtkd_pipeline.teacher import Teacher, resolve_config, teacher_name


@dataclass(frozen=True)
class TeacherIdentity:
    """What a store records about the teacher that fills it.

    It follows from params, checkpoint files and device type alone, so a coordinator that fans
    shards out to dask workers records it without building (or fitting) a teacher itself.
    """

    name: str
    checkpoint_sha256: dict[str, str | None]
    device_type: str

    @classmethod
    def of(cls, teacher: Teacher) -> TeacherIdentity:
        return cls(teacher.name, dict(teacher.checkpoint_sha256), teacher.device.type)

    @classmethod
    def from_params(cls, teacher: TeacherParams, device_type: str) -> TeacherIdentity:
        config = resolve_config(teacher.version)
        hashes: dict[str, str | None] = {"unet": None, "autoencoder": None}
        if not teacher.random_weights:
            hashes = dict(checkpoint_sha256(teacher))
        return cls(teacher_name(config, teacher.random_weights), hashes, device_type)

    def fields(self) -> dict[str, Any]:
        """The store provenance fields this identity fills in."""
        return {
            "teacher_name": self.name,
            CHECKPOINT_SHA256: self.checkpoint_sha256,
            "device_type": self.device_type,  # outputs are bit-stable per device type only
        }

    def mismatch(self, provenance: dict[str, Any]) -> str | None:
        """The first field in which a store's provenance names another teacher, or None."""
        for key, mine in self.fields().items():
            if provenance.get(key) != mine:
                return f"{key}: store has {provenance.get(key)!r}, this worker has {mine!r}"
        return None


OFFICIAL_NOISE_BATCH = "teacher.batch_size (rng: official)"


def teacher_store_provenance(
    identity: TeacherIdentity, params: Params, prepared_fingerprint: str
) -> dict[str, Any]:
    diffusion = resolve_config(params.teacher.version).diffusion
    provenance = {
        **teacher_params_provenance(params.teacher),
        PREPARED_FINGERPRINT: prepared_fingerprint,
        **identity.fields(),
        "kappa": diffusion.kappa,
        "scale": diffusion.sf,
        "package_version": __version__,
    }
    if params.teacher.rng == "official":
        # One stream drawn batch by batch: a tile's noise depends on the batching, so a resume
        # with another batch size would mix two streams in one store. (Stage two does not care.)
        provenance[OFFICIAL_NOISE_BATCH] = params.teacher.batch_size
    return provenance


def dwt_tile_shapes(hr_size: int) -> dict[str, tuple[int, int, int]]:
    """Per-tile shape of each cached Haar subband: level j halves the HR side j times."""
    return {
        name: (3, hr_size >> subband_level(name), hr_size >> subband_level(name))
        for name in subband_names(DWT_LEVELS)
    }


def teacher_store_layout(prepared: TileStore, params: Params) -> StoreLayout:
    hr_size = prepared.layout.spec(LR).tile_shape[1] * params.data.scale
    return StoreLayout(
        kind=KIND_TEACHER,
        n_tiles=prepared.n_tiles,
        shard_size=prepared.layout.shard_size,
        arrays=teacher_arrays(hr_size, dwt_tile_shapes(hr_size) if params.teacher.dwt else None),
        compression=Compression(params.data.compression.codec, params.data.compression.level),
    )
