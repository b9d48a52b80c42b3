"""`dvc repro` runs the whole chain on the demo images with a tiny random teacher and student.

Asserts what DVC users rely on: outputs and metrics appear, a second repro runs nothing, and a
distill param change reruns only distill. Slow (about two minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.pipeline_helpers import REPO_ROOT

pytestmark = pytest.mark.slow

TINY_PROFILE = {
    ("teacher", "version"): "tests/data/resshift_tiny_t2.yaml",
    ("teacher", "random_weights"): True,
    ("teacher", "steps"): 2,
    ("distill", "student"): "swinir-tiny-x4",
    ("distill", "iterations"): 4,
    ("distill", "batch_size"): 2,
    ("distill", "patch_size"): 16,
    ("distill", "milestones"): [3],
    ("distill", "val_every"): 2,
    ("distill", "checkpoint_every"): 2,
}


def _copy_project(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["TQDM_DISABLE"] = "1"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _set_params(project: Path, values: dict[tuple[str, str], object]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for (section, key), value in values.items():
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_runs_chain_then_skips_then_reruns_only_distill(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    _set_params(project, TINY_PROFILE)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "x"],
    ):
        _run(command, project)  # dvclive needs a repository with one commit

    first = _run(["dvc", "repro"], project)
    for stage in ("prepare", "cache_teacher", "distill"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((project / "data/models/dvclive/metrics.json").read_text())
    assert isinstance(metrics["val"]["psnr_y"], float) and metrics["val"]["psnr_y"] > 5
    student = torch.load(project / "data/models/student.pt", weights_only=False)
    cache = student["provenance"]["teacher_cache"]
    assert cache["teacher_name"].endswith("RANDOM-WEIGHTS") and cache["prepared_fingerprint"]

    second = _run(["dvc", "repro"], project)
    assert "Running stage" not in second

    _set_params(project, {("distill", "lr"): 1e-3})
    third = _run(["dvc", "repro"], project)
    assert "Running stage 'distill'" in third
    assert "Running stage 'prepare'" not in third
    assert "Running stage 'cache_teacher'" not in third
