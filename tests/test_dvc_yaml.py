"""dvc.yaml reruns a stage when, and only when, a param it depends on changes."""

from __future__ import annotations

import ast
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


# Modules whose edits cannot change what a stage writes: params parsing (every value comes from
# params.yaml, which DVC tracks), file-writing mechanics and run locks, progress bars, device
# choice, fixed output names.
_NO_OUTPUT_EFFECT = {
    "dtkd_pipeline/__init__.py",
    "dtkd_pipeline/config.py",
    "dtkd_pipeline/atomic.py",
    "dtkd_pipeline/run_lock.py",
    "dtkd_pipeline/progress.py",
    "dtkd_pipeline/devices.py",
    "dtkd_pipeline/stage_files.py",
}


def _local_imports(path: Path) -> set[str]:
    """Repository files that ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):  # the most specific module the name reaches
                base = REPO.joinpath(*parts[:end])
                candidates = (base / "__init__.py", base.with_suffix(".py"))
                hit = next((c for c in candidates if c.is_file()), None)
                if hit is not None:
                    found.add(hit.relative_to(REPO).as_posix())
                    break
    return found


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_imports_is_a_dependency(stage: str) -> None:
    """Editing code a stage runs must rerun it: dvc.yaml lists each module the stage script
    imports (itself or through a listed folder)."""
    deps = [d for d in STAGES[stage]["deps"] if not d.startswith("${")]
    script = next(d for d in deps if d.startswith("stages/"))
    for module in sorted(_local_imports(REPO / script) - _NO_OUTPUT_EFFECT):
        listed = any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)
        assert listed, f"dvc.yaml stage {stage}: {script} imports {module}, not in its deps"


def test_stages_never_import_one_another() -> None:
    """Reusable pieces live in dtkd_pipeline/, so a stage's deps never hide another stage."""
    for script in sorted((REPO / "stages").glob("*.py")):
        others = {m for m in _local_imports(script) if m.startswith("stages/")}
        assert others <= {"stages/__init__.py"}, f"{script.name} imports {sorted(others)}"
