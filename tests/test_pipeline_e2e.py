"""`dvc repro` runs the whole chain on the demo images with a tiny random teacher and student.

Asserts what DVC users rely on: every stage's outputs and metrics appear and carry provenance, a
second repro runs nothing, a distill param change reruns only distill, evaluate and report, and a
teacher param change rebuilds the cache and everything after it.
Slow (a few minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.pipeline_helpers import (
    apply_profile,
    copy_project,
    init_git,
    profile_overrides,
    run_command,
)

pytestmark = pytest.mark.slow


STAGES = ("prepare", "cache_teacher", "distill", "evaluate", "report")


def _ran(log: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in log}


def test_dvc_repro_runs_chain_then_skips_then_reruns_from_distill(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    apply_profile(project / "params.yaml", profile_overrides())
    init_git(project)

    assert _ran(run_command(["dvc", "repro"], project)) == set(STAGES)
    training = json.loads((project / "data/models/dvclive/metrics.json").read_text())
    assert isinstance(training["val"]["psnr_y"], float) and training["val"]["psnr_y"] > 5
    student = torch.load(project / "data/models/student.pt", weights_only=False)
    cache = student["provenance"]["teacher_cache"]
    assert cache["teacher_name"].endswith("RANDOM-WEIGHTS") and cache["prepared_fingerprint"]

    # Metrics: numbers for every model, the paper's convention, LPIPS skipped offline or measured.
    metrics = json.loads((project / "data/metrics/demo.json").read_text())
    teacher = "teacher (RANDOM weights)"  # the tiny profile's teacher, named so in every output
    assert set(metrics) == {"images", "bicubic", "DTKD", teacher}
    for model in ("bicubic", "DTKD", teacher):
        assert 5 < metrics[model]["psnr_y"]["mean"] < 60
        assert 0 < metrics[model]["ssim_y"]["mean"] <= 1
    record = json.loads((project / "data/evaluation/demo.json").read_text())
    assert "lpips" in record["skipped_metrics"] or "lpips" in metrics["DTKD"]
    # Provenance: the student's run links back to the cache and the teacher it was trained on.
    (run,) = record["runs"]["DTKD"].values()
    assert (
        run["provenance"]["teacher_cache"]["prepared_fingerprint"] == cache["prepared_fingerprint"]
    )
    (teacher_run,) = record["runs"][teacher].values()
    assert teacher_run["teacher"] == cache["teacher_name"]
    assert (project / "data/evaluation/demo.csv").read_text().count("\n") == 1 + 3
    assert (project / "data/plots/comparisons/demo/rocket.png").is_file()
    assert (project / "data/plots/bands.png").is_file()
    efficiency = json.loads((project / "data/evaluation/efficiency.json").read_text())
    assert "DTKD" in {row["model"] for row in efficiency}
    assert (project / "data/evaluation/efficiency.png").is_file()

    report = (project / "data/report/README.md").read_text()
    for heading in ("## Metrics", "## Efficiency", "## Training curves", "## Comparisons"):
        assert heading in report
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (project / "data/report" / link).is_file(), link

    assert _ran(run_command(["dvc", "repro"], project)) == set()

    apply_profile(project / "params.yaml", ["distill.lr=1e-3"])
    assert _ran(run_command(["dvc", "repro"], project)) == {"distill", "evaluate", "report"}

    apply_profile(project / "params.yaml", ["teacher.seed=7"])
    assert _ran(run_command(["dvc", "repro"], project)) == set(STAGES) - {"prepare"}
