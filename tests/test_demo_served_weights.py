"""README command 1 with the default teacher: the official v1 weights are fetched on first use.

The official files cannot be downloaded here, so files of the same format and size (the real v1
UNet and VQGAN architectures with random weights) are served from 127.0.0.1 through
``DTKD_MIRROR``. Everything else is the default params.yaml, shrunk only in data size and
iterations, so `dvc repro` goes through the real weights step (download, hash record, strict
load) and every stage after it. Slow (a few minutes on 2 cores): `pytest -m slow`.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dtkd_pipeline.images import read_image, write_image
from dtkd_pipeline.teacher import build_teacher_networks
from dtkd_pipeline.weights import file_sha256, get_spec
from tests.pipeline_helpers import (
    REPO_ROOT,
    apply_profile,
    copy_project,
    init_git,
    run_command,
)

pytestmark = pytest.mark.slow

SMALL_DEMO = [
    "distill.iterations=2",
    "distill.batch_size=2",
    "distill.milestones=[1]",
    "distill.log_every=1",
    "distill.val_every=2",
    "distill.checkpoint_every=2",
    "evaluate.efficiency.teacher=false",  # 15 full-size steps per timed run: minutes on a CPU
    "evaluate.efficiency.batch_sizes=[1]",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Official-format v1 UNet and VQGAN files (random weights) on a local HTTP server."""
    served = tmp_path / "served"
    served.mkdir()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, autoencoder = build_teacher_networks("v1")
    torch.save(unet.state_dict(), served / get_spec("resshift-realsr-v1").filename)
    torch.save(autoencoder.state_dict(), served / get_spec("resshift-vq-f4").filename)
    del unet, autoencoder
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def _small_demo_images(folder: Path) -> None:
    """Training data of two 64 px LR tiles (a 256x384 crop) and a 256 px validation crop."""
    folder.mkdir(parents=True)
    demo = REPO_ROOT / "data" / "demo" / "hr"
    for name, width in (("astronaut", 512), ("rocket", 256)):  # sorted: rocket is held out
        rgb = read_image(demo / f"{name}.png").rgb[:256, :width]
        write_image(folder / f"{name}.png", np.ascontiguousarray(rgb))


def test_default_demo_fetches_official_weights_then_runs_every_stage(
    tmp_path: Path, mirror: tuple[str, Path]
) -> None:
    url, served = mirror
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    _small_demo_images(project / "data" / "small")
    apply_profile(project / "params.yaml", ["data.hr_dir=data/small", *SMALL_DEMO])
    init_git(project)
    home = tmp_path / "dtkd-home"
    env = {"DTKD_HOME": str(home), "DTKD_MIRROR": url}

    log = run_command(["dvc", "repro"], project, env=env)
    for stage in ("prepare", "cache_teacher", "distill", "evaluate", "report"):
        assert f"Running stage '{stage}'" in log

    # The weights step: files fetched into $DTKD_HOME/weights, hashes recorded (trust on first use).
    hashes = {}
    for name in ("resshift-realsr-v1", "resshift-vq-f4"):
        filename = get_spec(name).filename
        stored = home / "weights" / filename
        assert stored.is_file() and file_sha256(stored) == file_sha256(served / filename)
        hashes[name] = (stored.with_name(filename + ".sha256")).read_text().split()[0]
    student = torch.load(project / "data/models/student.pt", weights_only=False)
    cache = student["provenance"]["teacher_cache"]
    assert "RANDOM" not in cache["teacher_name"]
    assert set(cache["checkpoint_sha256"].values()) == set(hashes.values())

    metrics = json.loads((project / "data/metrics/demo.json").read_text())
    assert {"bicubic", "DTKD", "teacher"} <= set(metrics)
    assert (project / "data/report/README.md").is_file()
