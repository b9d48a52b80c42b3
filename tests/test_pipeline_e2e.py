"""`dvc repro` runs the whole chain on the demo images with a tiny random teacher and student.

Asserts what DVC users rely on: every stage's outputs and metrics appear and carry provenance, a
second repro runs nothing, a distill param change reruns only distill, evaluate and report, and a
teacher param change rebuilds the cache and everything after it.
Slow (a few minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def _dvc_until(project: Path, reached: Callable[[], bool], log: Path) -> subprocess.Popen:
    """`dvc repro distill` in its own process group (as a shell runs it), output to ``log`` (a
    pipe would stay open while a stage it started runs on), returned once ``reached()``."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    with log.open("w") as output:
        dvc = subprocess.Popen(
            ["dvc", "repro", "distill"], cwd=project, env=env, start_new_session=True,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    while not reached():
        assert dvc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    return dvc


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_dvc_repro_stopped_in_cache_teacher_and_in_distill_resumes_both(tmp_path: Path) -> None:
    """Ctrl-C in cache_teacher, then a SIGTERM to dvc alone in distill (its stage runs on): the
    persisted store and checkpoints are kept, a rerun beside the orphaned stage is refused, and
    once it is stopped `dvc repro` resumes each stage where it stopped and ends up to date."""
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    longer = ["distill.iterations=40", "distill.checkpoint_every=2", "distill.val_every=20"]
    apply_profile(project / "params.yaml", [*profile_overrides(), *longer])
    init_git(project)
    store, checkpoints = project / "data/cache/teacher.zarr", project / "data/models/checkpoints"

    logs = tmp_path / "dvc.log"
    dvc = _dvc_until(project, lambda: any((store / "_done").glob("*.json")), logs)
    os.killpg(dvc.pid, signal.SIGINT)
    dvc.wait(timeout=120)
    log = logs.read_text()
    found = re.search(r"interrupted \(Ctrl-C\): (\d) of 4 shards are stored", log)
    assert dvc.returncode != 0 and found, log[-3000:]
    assert not list(project.rglob("*.dtkd-lock"))

    dvc = _dvc_until(project, lambda: any(checkpoints.glob("iter_*.pt")), logs)
    os.kill(dvc.pid, signal.SIGTERM)  # dvc alone: the distill it started trains on
    dvc.wait(timeout=120)
    log = logs.read_text()
    assert f"computed {16 - 4 * int(found[1])} tiles" in log, log[-3000:]
    lock = project / "data/.models.dtkd-lock"
    orphan = int(lock.read_text())
    refused = subprocess.run(
        ["dvc", "repro", "distill"], cwd=project, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"is being written by another run (PID {orphan}" in refused.stdout + refused.stderr
    os.kill(orphan, signal.SIGTERM)  # what README's troubleshooting says to do
    while not _gone(orphan):
        time.sleep(0.1)

    resumed = run_command(["dvc", "repro"], project)
    assert _ran(resumed) == {"distill", "evaluate", "report"}
    assert re.search(r"resuming from \S+iter_\d+\.pt at iteration \d+", resumed), resumed
    assert torch.load(project / "data/models/student.pt", weights_only=False)["iteration"] == 40
    assert "up to date" in run_command(["dvc", "status"], project)
    assert not list(project.rglob("*.dtkd-lock"))
