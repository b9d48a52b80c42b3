"""Commands stopped by Ctrl-C or SIGTERM mid-run: one line saying what is left and how to go on,
exit 130 / 143, no traceback, no lock or temporary left, and the rerun resumes.

Each command runs as a child process in its own process group, as a shell runs it: Ctrl-C reaches
every process of the group (DataLoader workers included), and so does a job scheduler's SIGTERM.
The cache-teacher and distill runs share a prepared store and teacher cache that take ~20 s to
build on 2 CPU cores, so they are `slow`; the upscale one runs by default.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dtkd_pipeline.cache import TileStore
from dtkd_pipeline.config import load_params
from dtkd_pipeline.images import write_image
from dtkd_pipeline.run_lock import output_lock_path
from dtkd_pipeline.student import build_student
from stages import cache_teacher, prepare_data
from tests.pipeline_helpers import REPO_ROOT, tiny_project_params

TRAIN_TILES = 5  # one tile per shard: the teacher stores them one at a time


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def _command(args: list[str], logs: Path) -> tuple[list[str], dict[str, str], Path, Path]:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "dtkd_pipeline.cli", *args]
    return command, env, logs / "cli-stdout.txt", logs / "cli-stderr.txt"


def run_cli(args: list[str], logs: Path) -> Finished:
    command, env, out, err = _command(args, logs)
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run(command, env=env, stdout=stdout, stderr=stderr).returncode
    return Finished(code, out.read_text(), err.read_text())


def interrupt_cli(
    args: list[str], logs: Path, started: Callable[[], bool], signum: signal.Signals
) -> Finished:
    """Run the command; once ``started()`` holds, send ``signum`` to its process group."""
    command, env, out, err = _command(args, logs)
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen(
            command, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not started():
                assert child.poll() is None, f"ended before the signal:\n{err.read_text()}"
                assert time.monotonic() < deadline, "the run never reached its main loop"
                time.sleep(0.05)
            os.killpg(child.pid, signum)
            code = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
    return Finished(code, out.read_text(), err.read_text())


def _interrupt_line(finished: Finished) -> str:
    """The command's last stderr line, after checking it printed nothing like a traceback."""
    assert "Traceback" not in finished.stderr and "Exception ignored" not in finished.stderr
    return finished.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared tiles and a teacher cache under the tiny profile, and its params.yaml."""
    root = tmp_path_factory.mktemp("interrupted")
    params_file = tiny_project_params(root, TRAIN_TILES + 1, [])
    params = load_params(params_file)
    prepare_data.run(params)
    cache_teacher.run(params, device="cpu")
    return root


@pytest.mark.slow
def test_cache_teacher_stopped_by_ctrl_c_says_what_is_stored_and_resumes_the_rest(
    project: Path, tmp_path: Path
) -> None:
    store = tmp_path / "teacher.zarr"
    args = [
        "cache-teacher", "-p", str(project / "params.yaml"), "--device", "cpu",
        "-S", f"teacher.store={store}", "-S", f"teacher.preview={tmp_path / 'preview.png'}",
    ]  # fmt: skip

    def a_shard_is_stored() -> bool:
        return any((store / "_done").glob("*.json"))

    stopped = interrupt_cli(args, tmp_path, a_shard_is_stored, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    line = _interrupt_line(stopped)
    found = re.fullmatch(
        rf"interrupted \(Ctrl-C\): (\d) of {TRAIN_TILES} shards are stored in "
        rf"{re.escape(str(store))}; run the same command again to compute the rest",
        line,
    )
    assert found, line
    done = int(found[1])
    assert 1 <= done < TRAIN_TILES
    assert not output_lock_path(store).exists()  # released and removed, not left to the kernel

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"computed {TRAIN_TILES - done} tiles" in resumed.stdout  # only the missing shards
    with TileStore.open(store) as finished:
        assert finished.verify().ok


@pytest.mark.slow
def test_distill_stopped_by_ctrl_c_names_its_last_checkpoint_and_resumes_from_it(
    project: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "models"
    args = [
        "distill", "-p", str(project / "params.yaml"), "--device", "cpu",
        "-S", f"distill.out_dir={out_dir}", "-S", "distill.iterations=12",
        "-S", "distill.milestones=[9]", "-S", "distill.checkpoint_every=3",
        "-S", "distill.val_every=6", "-S", "distill.num_workers=2",
    ]  # fmt: skip

    def a_checkpoint_is_written() -> bool:
        return any((out_dir / "checkpoints").glob("iter_*.pt"))

    stopped = interrupt_cli(args, tmp_path, a_checkpoint_is_written, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    found = re.fullmatch(
        r"interrupted \(Ctrl-C\): the last checkpoint is (\S+); run the same command again to "
        "resume from it",
        _interrupt_line(stopped),
    )
    assert found, stopped.stderr[-2000:]
    checkpoint = Path(found[1])
    assert checkpoint.is_file() and not (out_dir / "student.pt").exists()

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    iteration = int(checkpoint.stem.removeprefix("iter_"))
    assert f"resuming from {checkpoint} at iteration {iteration}" in resumed.stdout
    assert (out_dir / "student.pt").is_file()


@pytest.mark.slow
def test_distill_stopped_by_sigterm_to_its_workers_too_exits_143_with_one_line(
    project: Path, tmp_path: Path
) -> None:
    """A scheduler's SIGTERM reaches the DataLoader workers as well; their deaths must not turn
    into "worker killed" tracebacks while the run cleans up."""
    out_dir = tmp_path / "models"
    args = [
        "distill", "-p", str(project / "params.yaml"), "--device", "cpu",
        "-S", f"distill.out_dir={out_dir}", "-S", "distill.iterations=40",
        "-S", "distill.checkpoint_every=2", "-S", "distill.val_every=40",
        "-S", "distill.num_workers=2",
    ]  # fmt: skip

    def a_checkpoint_is_written() -> bool:
        return any((out_dir / "checkpoints").glob("iter_*.pt"))

    stopped = interrupt_cli(args, tmp_path, a_checkpoint_is_written, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert _interrupt_line(stopped).startswith("interrupted (SIGTERM): the last checkpoint is ")
    assert not list((out_dir / "checkpoints").glob("*.tmp-*"))


def test_upscale_stopped_by_sigterm_says_how_many_images_are_written_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    model = tmp_path / "student.pt"
    student = build_student("swinir-tiny-x4")
    torch.save({"ema": student.state_dict(), "arch": "swinir-tiny-x4", "iteration": 0}, model)
    inputs = tmp_path / "in"
    for index in range(40):
        write_image(inputs / f"{index:02d}.png", torch.rand(48, 48, 3).numpy())
    out = tmp_path / "out"
    args = ["upscale", str(inputs), str(out), "--model", str(model), "--device", "cpu"]

    def an_image_is_written() -> bool:
        return any(out.glob("*.png"))

    stopped = interrupt_cli(args, tmp_path, an_image_is_written, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    found = re.fullmatch(
        rf"interrupted \(SIGTERM\): (\d+) of 40 image\(s\) were written to {re.escape(str(out))}, "
        "each complete; run the same command with --skip-existing to write only the rest",
        _interrupt_line(stopped),
    )
    assert found, stopped.stderr[-2000:]
    written = int(found[1])
    assert sorted(path.name for path in out.iterdir()) == [
        f"{index:02d}.png" for index in range(written)
    ]  # no temporary beside them

    rest = run_cli([*args, "--skip-existing"], tmp_path)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert f"{40 - written} image(s) -> {out}; {written} skipped, already present" in rest.stdout
    assert sorted(path.name for path in out.iterdir()) == [
        f"{index:02d}.png" for index in range(40)
    ]


def _tasks_running_on(cluster: Any) -> int:
    """Tasks the cluster's workers are executing, those whose client has gone included."""
    from distributed import Client

    with Client(cluster) as client:
        return sum(client.run(lambda dask_worker: len(dask_worker.state.executing)).values())


@pytest.mark.slow
def test_cache_teacher_on_a_dask_scheduler_stopped_by_ctrl_c_leaves_no_task_writing_and_resumes(
    project: Path, tmp_path: Path
) -> None:
    """dask cannot stop a running task and a task outlives its client: the coordinator must not
    release the store while its tasks still write, or they would write beside its rerun."""
    from distributed import LocalCluster

    store = tmp_path / "teacher.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        args = [
            "cache-teacher", "-p", str(project / "params.yaml"),
            "--scheduler", cluster.scheduler_address, "-S", f"teacher.store={store}",
            "-S", f"teacher.preview={tmp_path / 'preview.png'}",
        ]  # fmt: skip

        def a_shard_is_stored() -> bool:
            return any((store / "_done").glob("*.json"))

        stopped = interrupt_cli(args, tmp_path, a_shard_is_stored, signal.SIGINT)
        assert stopped.returncode == 130, stopped.stderr[-2000:]
        found = re.search(r"interrupted \(Ctrl-C\): (\d) of 5 shards are stored", stopped.stderr)
        assert found, stopped.stderr[-2000:]
        assert _tasks_running_on(cluster) == 0
        stored = sorted(path.name for path in (store / "_done").iterdir())
        assert len(stored) == int(found[1]) < TRAIN_TILES  # the note counts what is there
        assert not output_lock_path(store).exists()

        resumed = run_cli(args, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"computed {TRAIN_TILES - len(stored)} tiles" in resumed.stdout
        straight = tmp_path / "straight.zarr"
        whole = run_cli([*args, "-S", f"teacher.store={straight}"], tmp_path)
        assert whole.returncode == 0, whole.stderr[-2000:]
    with TileStore.open(store) as finished, TileStore.open(straight) as reference:
        assert finished.verify().ok
        for shard in range(TRAIN_TILES):  # same workers, same batches: the same bytes
            expected = reference.read_shard(shard)
            for name, tiles in finished.read_shard(shard).items():
                assert np.array_equal(tiles, expected[name]), (shard, name)
