"""dvc.yaml reruns a stage when, and only when, a param it depends on changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dtkd_pipeline.cache.teacher_record import teacher_params_provenance
from dtkd_pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# A value of each TeacherParams field's type that differs from params.yaml's.
OTHER_VALUES: dict[str, Any] = {
    "version": "v3",
    "unet_weights": "other.pth",
    "autoencoder_weights": "other.pth",
    "weights_dir": Path("/elsewhere"),
    "random_weights": True,
    "steps": 4,
    "seed": 1,
    "rng": "official",
    "precision": "fp16",
    "batch_size": 128,
    "compile": "default",
    "dwt": True,
    "store": Path("elsewhere.zarr"),
    "preview": Path("elsewhere.png"),
    "preview_tiles": 9,
}


def _listed(stage: str, section: str) -> set[str]:
    keys = STAGES[stage]["params"]
    if section in keys:
        return set(type(getattr(PARAMS, section)).model_fields)
    return {key.split(".", 1)[1] for key in keys if key.startswith(f"{section}.")}


def test_every_listed_param_exists_in_params_yaml() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} not in params.yaml"
                node = node[part]


def test_distill_reruns_for_every_teacher_key_a_checkpoint_records_and_no_other() -> None:
    """A key that changes the cache's recorded teacher (or its weight files) must rerun distill;
    speed and location keys must not retrain the student."""
    assert set(OTHER_VALUES) == set(type(PARAMS.teacher).model_fields)
    recorded = {"unet_weights", "autoencoder_weights"}  # their sha256, via the weight files
    before = teacher_params_provenance(PARAMS.teacher)
    for field, value in OTHER_VALUES.items():
        changed = PARAMS.teacher.model_copy(update={field: value})
        if teacher_params_provenance(changed) != before:
            recorded.add(field)
    assert _listed("distill", "teacher") == recorded


@pytest.mark.parametrize("stage", ["distill", "evaluate"])
def test_machine_local_teacher_keys_never_rerun_training_or_evaluation(stage: str) -> None:
    assert not _listed(stage, "teacher") & {"batch_size", "compile", "weights_dir", "store"}
