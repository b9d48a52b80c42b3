"""Stage two under real DDP: two gloo processes on CPU via torchrun, then an idempotent resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dtkd_pipeline.cache import TileStore
from dtkd_pipeline.config import Params
from dtkd_pipeline.stage_files import TRAIN_STORE
from dtkd_pipeline.train.checkpoint import CheckpointManager
from stages import distill
from tests.pipeline_helpers import REPO_ROOT, TINY_DISTILL, make_hr_images, tiny_params
from tests.test_distill import build_stores

pytestmark = pytest.mark.slow

# Each rank gets its own shards: one tile per shard so 2 ranks x >= 2 batches always exist.
# batch_size 4 over 2 ranks = 2 samples per rank per step.
DDP_OVERRIDES = ["data.shard_size=1", "distill.batch_size=4"]

_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
from dtkd_pipeline.config import load_params
from stages import distill

params = load_params(sys.argv[1], json.loads(sys.argv[2]))
distill.run(params, device="cpu", restart_on_change="--restart-on-change" in sys.argv)
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _torchrun(
    script: Path, params_file: Path, overrides: list[str], *flags: str
) -> subprocess.CompletedProcess:
    # torchrun sets the rank variables itself; never inherit a parent's.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # One thread per rank: the two ranks share two cores without oversubscription.
    env |= {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        str(script),
        str(params_file),
        json.dumps(overrides),
        *flags,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def ddp_params(tmp_path: Path) -> tuple[Params, list[str]]:
    hr_dir = tmp_path / "hr"
    # 512x512 -> one 128x128 LR image = 4 tiles of 64; the last image is held out for validation.
    make_hr_images(hr_dir, [(512, 512), (256, 256)])
    params = tiny_params(tmp_path, hr_dir, DDP_OVERRIDES)
    build_stores(params)
    overrides = [
        f"data.hr_dir={hr_dir}",
        f"data.prepared_dir={params.data.prepared_dir}",
        "data.workers=1",
        f"teacher.store={params.teacher.store}",
        f"distill.out_dir={params.distill.out_dir}",
        *TINY_DISTILL,
        *DDP_OVERRIDES,
    ]
    return params, overrides


def test_ddp_two_ranks_trains_checkpoints_and_resumes(
    ddp_params: tuple[Params, list[str]], tmp_path: Path
) -> None:
    params, overrides = ddp_params
    with TileStore.open(params.data.prepared_dir / TRAIN_STORE) as store:
        assert store.n_shards >= 4, "each of the 2 ranks needs >= 2 shards"
    script = tmp_path / "ddp_distill.py"
    script.write_text(_SCRIPT.format(root=str(REPO_ROOT)))
    params_file = tmp_path / "params.yaml"
    out = params.distill.out_dir

    first = _torchrun(script, params_file, overrides)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    student = out / distill.STUDENT_FILE
    final = torch.load(student, weights_only=False)
    assert final["iteration"] == params.distill.iterations == 6
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("iter_*.pt"))
    assert checkpoints == ["iter_00000003.pt", "iter_00000006.pt"]
    # Only rank 0 writes: no stray temporary files from a second writer.
    assert not list(out.rglob(".*.tmp-*"))

    saved = torch.load(out / "checkpoints" / "iter_00000006.pt", weights_only=False)
    positions = saved["data"]
    assert isinstance(positions, list) and len(positions) == 2
    assert [p["settings"]["rank"] for p in positions] == [0, 1]
    assert all(
        p["settings"]["world_size"] == 2 and p["settings"]["batch_size"] == 2 for p in positions
    )
    assert isinstance(saved["rng"], list) and len(saved["rng"]) == 2  # per-rank RNG streams
    # Both ranks made the same number of steps over disjoint shards.
    assert positions[0]["batches_consumed"] == positions[1]["batches_consumed"]
    assert positions[0]["epoch"] == positions[1]["epoch"]

    # An identical second invocation resumes at iteration 6 and ends without training.
    mtime = (out / "checkpoints" / "iter_00000006.pt").stat().st_mtime_ns
    second = _torchrun(script, params_file, overrides)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    assert (out / "checkpoints" / "iter_00000006.pt").stat().st_mtime_ns == mtime
    again = torch.load(student, weights_only=False)
    for name, tensor in final["ema"].items():
        assert torch.equal(tensor, again["ema"][name]), name

    # Changed params under --restart-on-change (the DVC command): rank 0 decides and deletes,
    # the other rank waits for it instead of reading checkpoints as they vanish.
    changed = [*overrides, "distill.lr=0.001"]
    third = _torchrun(script, params_file, changed, "--restart-on-change")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert (third.stdout + third.stderr).count("starting over") == 1
    restarted = torch.load(student, weights_only=False)
    assert restarted["params"]["lr"] == 0.001 and restarted["iteration"] == 6


def test_ddp_run_with_a_killed_rank_ends_and_its_rerun_resumes_from_the_last_checkpoint(
    ddp_params: tuple[Params, list[str]],
) -> None:
    """SIGKILL one rank mid-training (an OOM kill, a lost GPU): torchrun stops the other rank
    instead of leaving it waiting in a collective, the checkpoints left are whole, and the same
    command resumes from the newest."""
    params, overrides = ddp_params
    out = params.distill.out_dir
    longer = [*overrides, "distill.iterations=30", "distill.checkpoint_every=2"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "dtkd_pipeline.cli", "distill", "-p", str(out.parent / "params.yaml"),
        *(arg for override in longer for arg in ("-S", override)),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        while not list((out / "checkpoints").glob("iter_*.pt")):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(_rank_pid(launcher.pid, 1), signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0  # no rank hangs on the dead one
    finally:
        if launcher.poll() is None:
            launcher.kill()
    saved = CheckpointManager(out / "checkpoints", keep_last=2)
    newest = saved.load_latest()  # whole: written atomically
    assert newest is not None and newest["iteration"] < 30
    assert not out.joinpath(distill.STUDENT_FILE).exists()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at iteration {newest['iteration']}" in resumed.stdout + resumed.stderr
    assert torch.load(out / distill.STUDENT_FILE, weights_only=False)["iteration"] == 30


def _rank_pid(launcher: int, rank: int) -> int:
    """The PID of the torchrun worker process of ``rank`` (a child of ``launcher``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no rank {rank} process under torchrun (PID {launcher})")
