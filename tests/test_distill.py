"""Stage two trains for real, resumes bit-exactly after SIGKILL, and refuses a mismatched cache."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dtkd_pipeline.atomic import OutputFolderError
from dtkd_pipeline.cache import (
    HR,
    KIND_TEACHER,
    PREPARED_FINGERPRINT,
    TEACHER,
    CacheError,
    ProvenanceMismatchError,
    StoreLayout,
    StoreLayoutError,
    TileStore,
    teacher_arrays,
)
from dtkd_pipeline.cache.teacher_record import teacher_params_provenance
from dtkd_pipeline.cache.teacher_store import dwt_tile_shapes
from dtkd_pipeline.config import ConfigError, Params, load_params, section_dict
from dtkd_pipeline.devices import DeviceError
from dtkd_pipeline.evaluate.testsets import TestSetError
from dtkd_pipeline.images import ImageReadError
from dtkd_pipeline.losses.wavelet import dwt_subbands, group_weights
from dtkd_pipeline.run_lock import OutputInUseError
from dtkd_pipeline.stage_files import TRAIN_STORE
from dtkd_pipeline.student import build_student
from dtkd_pipeline.train import loop
from dtkd_pipeline.train.checkpoint import CheckpointManager, CheckpointReadError
from dtkd_pipeline.train.curves import truncate_curves
from dtkd_pipeline.train.loop import DistributedContext, TrainingRun, train
from dtkd_pipeline.weights import file_sha256
from stages import distill, prepare_data
from tests.lock_helpers import output_locked_by_child
from tests.pipeline_helpers import (
    REPO_ROOT,
    TINY_DISTILL,
    bars_under_tqdm_disable,
    make_hr_images,
    tiny_params,
)


def build_stores(params: Params) -> None:
    """prepare-data on synthetic images, then a teacher store whose 'teacher' is a blurred HR."""
    prepare_data.run(params)
    build_teacher_store(params)


def build_teacher_store(params: Params, extra_provenance: dict | None = None) -> None:
    """A teacher store over the prepared tiles, recording `params.teacher` (+ extra fields).

    With ``params.teacher.dwt`` the store also holds the teacher's Haar subbands, as stage one
    writes them.
    """
    prepared = TileStore.open(params.data.prepared_dir / TRAIN_STORE)
    hr_size = prepared.layout.spec(HR).tile_shape[1]
    bands = dwt_tile_shapes(hr_size) if params.teacher.dwt else {}
    layout = StoreLayout(
        kind=KIND_TEACHER,
        n_tiles=prepared.n_tiles,
        shard_size=prepared.layout.shard_size,
        arrays=teacher_arrays(hr_size, bands),
    )
    provenance = {
        **teacher_params_provenance(params.teacher),
        PREPARED_FINGERPRINT: prepared.fingerprint(),
        **(extra_provenance or {}),
    }
    with TileStore.create(params.teacher.store, layout, provenance) as store:
        for shard in range(layout.n_shards):
            hr = prepared.read_shard(shard, [HR])[HR].astype(np.float32)
            teacher = np.round((hr + np.roll(hr, 1, axis=-1) + np.roll(hr, 1, axis=-2)) / 3)
            arrays = {TEACHER: teacher.astype(np.uint8)}
            if bands:
                subbands = dwt_subbands(torch.from_numpy(teacher / 255).float(), levels=2)
                arrays |= {f"dwt/{b}": subbands[b].half().numpy() for b in bands}
            store.write_shard(shard, arrays)


@pytest.fixture
def params(tmp_path: Path) -> Params:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 320), (256, 256)])
    built = tiny_params(tmp_path, hr_dir)
    build_stores(built)
    return built


def _run(
    params: Params,
    out_dir: Path,
    use_cached_dwt: bool = False,
    log=None,
    validate=None,
    **updates: object,
) -> dict:
    cfg = params.distill.model_copy(update={"out_dir": out_dir, **updates})
    spec = TrainingRun(
        prepared_store=params.data.prepared_dir / TRAIN_STORE,
        teacher_store=params.teacher.store,
        out_dir=out_dir,
        use_cached_dwt=use_cached_dwt,
        provenance={},
    )
    context = DistributedContext(0, 1, torch.device("cpu"))
    return train(cfg, spec, context, validate=validate, log=log)


def test_best_validation_is_saved_even_between_checkpoint_steps(
    params: Params, tmp_path: Path
) -> None:
    """val_every=3, checkpoint_every=2: the best model of iteration 3 is in best.pt at once."""
    scores = iter([20.0, 19.0])  # iteration 3 is the best; iteration 5 (last) is worse

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return {"psnr_y": next(scores)}

    _run(params, tmp_path / "b", validate=validate, iterations=5, val_every=3, checkpoint_every=2)
    best = torch.load(tmp_path / "b" / "checkpoints" / "best.pt", weights_only=False)
    assert best["iteration"] == 3 and best["best_psnr"] == 20.0


def test_validation_scores_the_ema_weights_which_the_loop_keeps_moving(
    params: Params, tmp_path: Path
) -> None:
    seen: list[dict[str, torch.Tensor]] = []

    def validate(model: torch.nn.Module) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"psnr_y": float(len(seen))}

    final = _run(params, tmp_path / "e", validate=validate, iterations=4, val_every=2)
    ema, trained = final["ema"], final["model"]
    weight = "conv_first.weight"
    assert torch.equal(seen[-1][weight], ema[weight])  # the EMA is what validation scored
    assert not torch.equal(ema[weight], trained[weight])  # ... and it is not the raw model
    assert not torch.equal(seen[0][weight], seen[-1][weight])  # updated between validations


def test_training_decreases_task_and_kd_losses(params: Params, tmp_path: Path) -> None:
    history: list[dict[str, float]] = []
    cfg = params.distill.model_copy(
        update={"iterations": 40, "milestones": [30], "lr": 1e-3, "out_dir": tmp_path / "m"}
    )
    spec = TrainingRun(
        prepared_store=params.data.prepared_dir / TRAIN_STORE,
        teacher_store=params.teacher.store,
        out_dir=tmp_path / "m",
        use_cached_dwt=False,
        provenance={},
    )
    final = train(
        cfg, spec, DistributedContext(0, 1, torch.device("cpu")), log=lambda i, v: history.append(v)
    )
    assert final["throughput"]["timed_steps"] == 39 and final["throughput"]["samples_per_s"] > 0
    timed = [h for h in history if "perf/samples_per_s" in h]
    assert len(timed) == 39  # logged every step but the warm-up one
    assert all(h["perf/samples_per_s"] > 0 and 0 <= h["perf/loader_wait"] < 1 for h in timed)
    task = [h["train/task_l1"] for h in history]
    kd = [h["train/kd"] for h in history]
    assert np.mean(task[-8:]) < 0.7 * np.mean(task[:8])
    assert np.mean(kd[-8:]) < 0.7 * np.mean(kd[:8])
    lambdas = [h["train/lambda"] for h in history]
    assert lambdas[0] == 0.0 and lambdas[-1] == pytest.approx(39 / 40)


def test_the_distill_bar_honours_tqdm_disable(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = bars_under_tqdm_disable(monkeypatch, loop)
    _run(params, tmp_path / "m", iterations=2)
    assert ("distill", False) in bars and not any(shown for _, shown in bars)


def test_distill_validation_asks_for_its_image_bar(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's validation shows its images' bar (evaluate_pairs hides it unless asked)."""
    asked: list[bool] = []

    def recording(*args: Any, progress: bool = False) -> dict[str, float]:
        asked.append(progress)
        return {"psnr_y": 20.0, "ssim_y": 0.5}

    monkeypatch.setattr(distill, "evaluate_pairs", recording)
    context = DistributedContext(0, 1, torch.device("cpu"))
    val_set = distill._open_validation_set(params)
    validate, logger = distill._main_rank_hooks(params.distill, val_set, 4, context)
    validate(build_student("swinir-tiny-x4"))
    logger.close()
    assert asked == [True]


_KILL_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
from tests.test_distill import _run
from dtkd_pipeline.config import load_params
from pathlib import Path
import dtkd_pipeline.train.loop as loop

params = load_params({params!r}, {overrides!r})
original = loop.CheckpointManager.save
def save_then_die(self, state, iteration, is_best=False):
    path = original(self, state, iteration, is_best)
    if iteration == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
loop.CheckpointManager.save = save_then_die
_run(params, Path({out!r}))
"""


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_sigkill_gives_identical_weights(
    params: Params, tmp_path: Path, num_workers: int
) -> None:
    """Killed mid-epoch (3 batches per epoch at batch 1, checkpoint at iteration 2): a new loader
    iterator must not draw from the global RNG, or the resumed drop-path masks shift. With worker
    processes, the resumed run's workers outlive an epoch boundary."""
    recipe = {"batch_size": 1, "checkpoint_every": 2, "num_workers": num_workers}
    straight = _run(params, tmp_path / "straight", **recipe)

    resumed_dir = tmp_path / "resumed"
    overrides = [
        f"data.hr_dir={params.data.hr_dir}",
        f"data.prepared_dir={params.data.prepared_dir}",
        f"teacher.store={params.teacher.store}",
        *TINY_DISTILL,
        *(f"distill.{key}={value}" for key, value in recipe.items()),
    ]
    script = _KILL_SCRIPT.format(
        root=str(REPO_ROOT),
        params=str(tmp_path / "params.yaml"),
        overrides=overrides,
        out=str(resumed_dir),
        kill_at=2,
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in (resumed_dir / "checkpoints").iterdir()) == ["iter_00000002.pt"]

    resumed = _run(params, resumed_dir, **recipe)
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"


def test_bf16_on_cpu_is_refused_naming_the_key(params: Params, tmp_path: Path) -> None:
    with pytest.raises(
        DeviceError, match=r"distill\.precision=bf16 needs.*distill\.precision=fp32"
    ):
        _run(params, tmp_path / "out", precision="bf16")
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_is_a_file_is_refused_naming_the_key(params: Params) -> None:
    params.distill.out_dir.parent.mkdir(parents=True, exist_ok=True)
    params.distill.out_dir.write_text("not a folder")
    with pytest.raises(OutputFolderError, match=r"distill\.out_dir: .* is a file"):
        distill.run(params, device="cpu")
    assert params.distill.out_dir.read_text() == "not a folder"


def test_an_out_dir_holding_files_no_run_wrote_is_refused_before_anything_is_deleted(
    params: Params,
) -> None:
    out = params.distill.out_dir
    (out / "dvclive").mkdir(parents=True)
    (out / "dvclive" / "metrics.json").write_text("{}")  # the user's own experiment's curves
    (out / "student.pt").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        OutputFolderError,
        match=r"distill\.out_dir: .* \(dvclive, notes\.txt, student\.pt\), and distill "
        r"overwrites student\.pt",
    ):
        distill.run(params, device="cpu", restart_on_change=True)
    assert (out / "student.pt").read_bytes() == b"mine"
    assert sorted(p.name for p in out.rglob("*")) == [
        "dvclive",
        "metrics.json",
        "notes.txt",
        "student.pt",
    ]


def test_a_second_run_on_an_out_dir_another_run_trains_in_is_refused_naming_its_pid(
    params: Params,
) -> None:
    """The rerun of a `dvc repro` killed alone (its distill goes on) must not train beside it."""
    out = params.distill.out_dir
    with (
        output_locked_by_child(out, "distill.out_dir") as holder_pid,
        pytest.raises(
            OutputInUseError,
            match=rf"distill\.out_dir: .* is being written by another run \(PID {holder_pid}",
        ),
    ):
        distill.run(params, device="cpu", restart_on_change=True)
    assert not out.exists()


def test_an_unmarked_out_dir_holding_only_what_distill_writes_is_taken_as_its_own(
    tmp_path: Path,
) -> None:
    """A folder an older version wrote (before the marker existed) needs no hand marking."""
    out = tmp_path / "models"
    (out / "checkpoints").mkdir(parents=True)
    (out / "dvclive").mkdir()
    (out / "student.pt").write_bytes(b"old run")
    (out / ".gitignore").write_text("/student.pt\n")  # DVC writes it beside its outputs
    distill._require_own_out_dir(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"notes\.txt"):
        distill._require_own_out_dir(out)


def test_stage_refuses_prepared_tiles_cut_with_other_data_settings(
    params: Params, tmp_path: Path
) -> None:
    """data.stride edited without re-running prepare-data: the old tiles are not trained on."""
    edited = params.model_copy(
        update={"data": params.data.model_copy(update={"stride": 16, "small_images": "skip"})}
    )
    with pytest.raises(CacheError) as info:
        distill.run(edited, device="cpu")
    message = str(info.value)
    assert f"data.stride: store {params.data.stride}, params 16" in message
    assert "data.small_images: store 'pad', params 'skip'" in message
    assert "dtkd-pipeline prepare-data" in message
    assert not (tmp_path / "models").exists()


def test_missing_validation_images_say_to_run_prepare_data(params: Params) -> None:
    """They are prepare-data's output; the message sent the user to evaluate.sets instead."""
    shutil.rmtree(params.data.prepared_dir / "val")
    with pytest.raises(TestSetError) as info:
        distill.run(params, device="cpu")
    message = str(info.value)
    assert f"validation images {params.data.prepared_dir / 'val'} not found" in message
    assert "run `dtkd-pipeline prepare-data` first" in message
    assert "evaluate.sets" not in message
    assert not params.distill.out_dir.exists()


def test_validation_images_replaced_by_a_file_are_called_a_file(params: Params) -> None:
    val = params.data.prepared_dir / "val"
    shutil.rmtree(val)
    val.write_text("not a folder")
    with pytest.raises(TestSetError, match=rf"{re.escape(str(val))} is a file, not a folder"):
        distill.run(params, device="cpu")
    assert not params.distill.out_dir.exists()


def test_a_corrupt_validation_image_says_to_rerun_prepare_data(params: Params) -> None:
    """The advice pointed at evaluate.sets, which does not hold the validation images."""
    hr_image = sorted((params.data.prepared_dir / "val").rglob("*.png"))[0]
    hr_image.write_bytes(hr_image.read_bytes()[:60])  # header kept, pixels cut off
    with pytest.raises(ImageReadError) as info:
        distill.run(params, device="cpu")
    message = str(info.value)
    assert hr_image.name in message and "rerun `dtkd-pipeline prepare-data`" in message
    assert "evaluate.sets" not in message


def test_a_teacher_store_that_is_a_file_is_refused_naming_teacher_store(
    params: Params, tmp_path: Path
) -> None:
    a_file = tmp_path / "teacher.png"
    a_file.write_bytes(b"not a store")
    elsewhere = params.model_copy(
        update={"teacher": params.teacher.model_copy(update={"store": a_file})}
    )
    with pytest.raises(StoreLayoutError) as info:
        distill.run(elsewhere, device="cpu")
    message = str(info.value)
    assert message.startswith(f"teacher.store: {a_file} is a file, not a tile store")
    assert "`dtkd-pipeline cache-teacher`" in message


def test_stage_refuses_cache_built_with_other_teacher_settings(params: Params) -> None:
    other = params.model_copy(
        update={"teacher": params.teacher.model_copy(update={"steps": 4, "seed": 7})}
    )
    with pytest.raises(ProvenanceMismatchError) as info:
        distill.run(other, device="cpu")
    message = str(info.value)
    assert "steps" in message and "seed" in message
    assert "`dtkd-pipeline cache-teacher --overwrite`" in message  # distill has no --overwrite


def test_stage_refuses_cache_built_from_another_checkpoint_file(
    params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unet, autoencoder = tmp_path / "unet.pth", tmp_path / "vq.pth"
    unet.write_bytes(b"unet weights, first training run")
    autoencoder.write_bytes(b"vq weights")
    teacher = params.teacher.model_copy(
        update={
            "random_weights": False,
            "unet_weights": str(unet),
            "autoencoder_weights": str(autoencoder),
            "store": tmp_path / "real-teacher.zarr",
        }
    )
    real = params.model_copy(update={"teacher": teacher})
    hashes = {"unet": file_sha256(unet), "autoencoder": file_sha256(autoencoder)}
    build_teacher_store(real, {"checkpoint_sha256": hashes})
    assert distill._teacher_provenance(real)["checkpoint_sha256"] == hashes
    assert "cannot be re-checked" not in capsys.readouterr().out

    unet.write_bytes(b"unet weights, another training run")  # same path and params, other file
    with pytest.raises(ProvenanceMismatchError, match=r"checkpoint_sha256\.unet: stored '"):
        distill._teacher_provenance(real)

    unet.unlink()  # stage two on a machine without the teacher's weights checks what it can
    assert distill._teacher_provenance(real)["checkpoint_sha256"] == hashes
    assert "checkpoint hashes cannot be re-checked" in capsys.readouterr().out  # and says so


def test_nan_loss_stops_with_debug_state_and_keeps_last_checkpoint(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nan"
    _run(params, out, iterations=3)
    last_good = (out / "checkpoints" / "iter_00000003.pt").read_bytes()

    from dtkd_pipeline.losses import DistillationObjective

    original = DistillationObjective.forward

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        parts = original(self, *args, **kwargs)
        parts["total"] = parts["total"] * float("nan")
        return parts

    monkeypatch.setattr(DistillationObjective, "forward", poisoned)
    from dtkd_pipeline.train.loop import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="iteration 3"):
        _run(params, out, iterations=6)
    assert (out / "checkpoints" / "iter_00000003.pt").read_bytes() == last_good
    assert (out / "diverged_iter_00000003.pt").is_file()
    assert os.environ.get("WORLD_SIZE", "1") == "1"


def test_a_changed_training_setting_is_named_by_its_params_yaml_key() -> None:
    """It read `params.kd.levels`, a key the user could not find in params.yaml."""
    params = load_params(REPO_ROOT / "params.yaml")
    trained = section_dict(params.distill)
    trained["kd"] = {**trained["kd"], "levels": 3}
    saved: Any = {"data": {}, "params": trained, "provenance": {"teacher_cache": {"seed": 1}}}
    changes = distill._checkpoint_changes(saved, params, {"seed": 1}, world_size=1)
    assert changes == ("settings", "  distill.kd.levels: checkpoint 3, now 2")


def test_checkpoints_from_other_params_are_refused_or_restarted(params: Params) -> None:
    small = params.model_copy(
        update={"distill": params.distill.model_copy(update={"iterations": 3, "val_every": 3})}
    )
    distill.run(small, device="cpu")
    changed = small.model_copy(update={"distill": small.distill.model_copy(update={"lr": 1e-3})})
    with pytest.raises(ConfigError, match=r"distill\.lr: checkpoint 0\.0002, now 0\.001"):
        distill.run(changed, device="cpu")
    # A change that cannot run is refused before --restart-on-change deletes anything.
    checkpoints = sorted((params.distill.out_dir / "checkpoints").iterdir())
    unrunnable = changed.model_copy(
        update={"distill": changed.distill.model_copy(update={"precision": "bf16"})}
    )
    with pytest.raises(DeviceError, match=r"distill\.precision"):
        distill.run(unrunnable, device="cpu", restart_on_change=True)
    assert sorted((params.distill.out_dir / "checkpoints").iterdir()) == checkpoints
    path = distill.run(changed, device="cpu", restart_on_change=True)
    final = torch.load(path, weights_only=False)
    assert final["params"]["lr"] == 1e-3 and final["iteration"] == 3
    assert final["provenance"]["teacher_cache"]["steps"] == params.teacher.steps
    assert (params.distill.out_dir / "dvclive" / "metrics.json").is_file()

    # Bookkeeping keys (when to log, validate, save; compile) resume instead of starting over.
    kept = sorted((params.distill.out_dir / "checkpoints").iterdir())
    bookkeeping = {"keep_last": 5, "log_every": 7, "val_every": 2, "checkpoint_every": 2}
    relogged = changed.model_copy(
        update={"distill": changed.distill.model_copy(update=bookkeeping | {"compile": True})}
    )
    assert set(bookkeeping) | {"compile", "out_dir"} == set(distill.BOOKKEEPING_KEYS)
    distill.run(relogged, device="cpu")  # refused before, as if the recipe had changed
    assert sorted((params.distill.out_dir / "checkpoints").iterdir()) == kept

    # A moved run folder resumes too (under DVC, a refusal would have meant retraining).
    moved_dir = params.distill.out_dir.with_name("moved")
    shutil.copytree(params.distill.out_dir, moved_dir)
    moved = relogged.model_copy(
        update={"distill": relogged.distill.model_copy(update={"out_dir": moved_dir})}
    )
    distill.run(moved, device="cpu", restart_on_change=True)
    assert sorted(p.name for p in (moved_dir / "checkpoints").iterdir()) == [p.name for p in kept]


def test_a_damaged_newest_checkpoint_is_named_before_anything_is_deleted(params: Params) -> None:
    distill.run(params, device="cpu")
    newest = params.distill.out_dir / "checkpoints" / "iter_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(CheckpointReadError, match=r"iter_00000006\.pt cannot be read.*delete it"):
        distill.run(params, device="cpu", restart_on_change=True)
    assert newest.exists()


def test_a_checkpoint_without_the_training_keys_is_named_with_what_it_lacks(
    tmp_path: Path,
) -> None:
    checkpoints = CheckpointManager(tmp_path, keep_last=2)
    torch.save({"model": {}, "iteration": 4}, checkpoints.path_for(4))  # not written by distill
    lacks = r"iter_00000004\.pt is not a training checkpoint .*lacks arch, best_psnr, data, ema"
    with pytest.raises(CheckpointReadError, match=lacks + r".*delete it"):
        checkpoints.load_latest()


def test_a_resumed_run_reads_its_newest_checkpoint_once(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comparing its settings and resuming from it share one read (checkpoints are large)."""
    distill.run(params, device="cpu")
    (params.distill.out_dir / "checkpoints" / "iter_00000006.pt").unlink()  # killed after 3
    reads: list[str] = []
    real_load = torch.load

    def counting_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(f).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    distill.run(params, device="cpu")
    assert reads.count("iter_00000003.pt") == 1


def test_checkpoints_of_another_process_count_are_refused(params: Params) -> None:
    distill.run(params, device="cpu")
    newest = params.distill.out_dir / "checkpoints" / "iter_00000006.pt"
    state = torch.load(newest, weights_only=False)
    state["data"], state["rng"] = [state["data"]] * 2, [state["rng"]] * 2  # as 2 DDP ranks save
    torch.save(state, newest)
    for restart in (False, True):  # never deleted: the process count is not a params change
        with pytest.raises(ConfigError, match=r"processes: checkpoint 2, now 1[\s\S]*torchrun"):
            distill.run(params, device="cpu", restart_on_change=restart)
    assert newest.exists()


def test_the_logged_learning_rate_is_the_one_the_step_trained_with(
    params: Params, tmp_path: Path
) -> None:
    """milestones=[4]: steps 1-4 train at lr, step 5 on at lr * gamma."""
    logged: dict[int, float] = {}

    def log(iteration: int, values: dict[str, float]) -> None:
        if "train/lr" in values:
            logged[iteration] = values["train/lr"]

    _run(params, tmp_path / "lr", log=log)
    cfg = params.distill
    assert cfg.milestones == [4] and cfg.log_every == 1
    expected = {step: cfg.lr * (cfg.gamma if step > 4 else 1) for step in range(1, 7)}
    assert logged == pytest.approx(expected)


def test_milestones_the_run_never_reaches_are_named_at_start_up(
    params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """milestones=[4]: a 6-iteration run lowers the rate; a 4-iteration run never does."""
    distill.run(params, device="cpu")
    assert "distill.milestones" not in capsys.readouterr().out
    short = params.distill.model_copy(update={"iterations": 4, "out_dir": tmp_path / "short"})
    distill.run(params.model_copy(update={"distill": short}), device="cpu")
    assert (
        "note: distill.milestones [4] are not below distill.iterations (4), so the learning "
        "rate is never lowered at them" in capsys.readouterr().out
    )


def test_a_resumed_run_continues_its_curves_without_repeating_steps(params: Params) -> None:
    """A run killed after logging past its last checkpoint logs those steps again on resume."""
    distill.run(params, device="cpu")
    out = params.distill.out_dir
    (out / "checkpoints" / "iter_00000006.pt").unlink()  # as if killed between 3 and 6
    distill.run(params, device="cpu")
    curve = (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    steps = [int(line.split("\t")[0]) for line in curve.splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert truncate_curves(out / "dvclive", 6) == 0


def test_cached_teacher_subbands_give_the_recomputed_kd_loss(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 320), (256, 256)])
    params = tiny_params(tmp_path, hr_dir, ["teacher.dwt=true"])
    build_stores(params)
    logs: dict[bool, list[float]] = {True: [], False: []}
    for cached in (True, False):
        _run(
            params,
            tmp_path / f"cached-{cached}",
            use_cached_dwt=cached,
            log=lambda i, v, c=cached: logs[c].append(v["train/kd"]),
            iterations=3,
        )
    # float16 storage of the subbands is the only difference (about 1e-3 relative).
    np.testing.assert_allclose(logs[True], logs[False], rtol=5e-3)


@pytest.mark.parametrize(
    ("teacher_dwt", "kd", "expected"),
    [
        (True, {}, True),  # the paper's J=2 Haar loss reads the cached subbands
        (True, {"kind": "dwt_uniform"}, True),
        (True, {"levels": 1}, False),  # the cache holds J=2 bands only
        (True, {"levels": 3}, False),
        (True, {"wavelet": "db2"}, False),
        (True, {"kind": "pixel_l1"}, False),
        (False, {}, False),
    ],
)
def test_cached_subbands_stand_in_only_for_the_haar_dwt_at_the_cached_depth(
    params: Params, teacher_dwt: bool, kd: dict, expected: bool
) -> None:
    changed = params.model_copy(
        update={
            "teacher": params.teacher.model_copy(update={"dwt": teacher_dwt}),
            "distill": params.distill.model_copy(
                update={"kd": params.distill.kd.model_copy(update=kd)}
            ),
        }
    )
    assert distill.uses_cached_subbands(changed) is expected


def test_one_level_kd_loss_trains_on_a_store_with_cached_subbands(tmp_path: Path) -> None:
    """The J=1 ablation on a cache built with teacher.dwt=true once failed: 'lack LL1'."""
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 320), (256, 256)])
    params = tiny_params(
        tmp_path, hr_dir, ["teacher.dwt=true", "distill.kd.levels=1", "distill.iterations=2"]
    )
    build_stores(params)
    final = torch.load(distill.run(params, device="cpu"), weights_only=False)
    assert final["iteration"] == 2 and final["params"]["kd"]["levels"] == 1


def test_kd_weights_lf_mf_hf_weigh_ll2_the_level_two_and_the_level_one_details() -> None:
    """params.yaml's distill.kd.weights {lf, mf, hf} reach the DWT loss as DESIGN's groups:
    LL2 / {LH2, HL2, HH2} / {LH1, HL1, HH1}; distinct values catch any swap."""
    params = load_params(REPO_ROOT / "params.yaml", ["distill.kd.weights={lf: 1, mf: 2, hf: 3}"])
    # group_weights' subband-by-subband mapping is pinned in test_losses_wavelet.py.
    assert loop._kd_loss(params.distill).subband_weights == group_weights(2, (1.0, 2.0, 3.0))


@pytest.mark.parametrize(
    "kd",
    [
        {"weights": {"lf": 0.0, "mf": 1.0, "hf": 0.0}},
        {"kind": "dwt_uniform", "levels": 1, "wavelet": "db2"},
        {"kind": "pixel_l1", "schedule": "constant"},
        {"kind": "fft"},
    ],
)
def test_the_loop_trains_with_the_configured_kd_loss_and_schedule(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kd: dict
) -> None:
    from dtkd_pipeline.losses import DistillationObjective, build_kd_loss

    seen: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
    original = DistillationObjective.forward

    def recording(self, student, ground_truth, teacher=None, **kwargs):  # type: ignore[no-untyped-def]
        parts = original(self, student, ground_truth, teacher, **kwargs)
        seen.append((student.detach().clone(), teacher.clone(), parts))
        return parts

    monkeypatch.setattr(DistillationObjective, "forward", recording)
    cfg_kd = params.distill.kd.model_copy(update=kd)
    _run(params, tmp_path / "out", iterations=2, kd=cfg_kd)

    weights = (cfg_kd.weights["lf"], cfg_kd.weights["mf"], cfg_kd.weights["hf"])
    expected_loss = build_kd_loss(cfg_kd.kind, cfg_kd.levels, cfg_kd.wavelet, weights)
    student, teacher, parts = seen[0]
    assert parts["kd"].item() == pytest.approx(expected_loss(student, teacher).item(), rel=1e-5)
    first_lambda = cfg_kd.final_weight if cfg_kd.schedule == "constant" else 0.0
    assert parts["lambda"].item() == pytest.approx(first_lambda)


def test_grad_clip_bounds_the_update_of_a_step(params: Params, tmp_path: Path) -> None:
    """Adam rescales gradients, so only a clip far below eps shows: the step all but vanishes."""
    torch.manual_seed(params.distill.seed)  # as the loop seeds itself before building the model
    initial = build_student(params.distill.student).state_dict()

    def moved(**updates: object) -> float:
        final = _run(params, tmp_path / str(len(updates)), iterations=1, **updates)["model"]
        return max((final[k] - initial[k]).abs().max().item() for k in initial)

    assert moved(grad_clip=1e-12) < 1e-2 * moved()


def test_checkpoints_made_on_another_teacher_cache_are_refused(params: Params) -> None:
    small = params.model_copy(
        update={"distill": params.distill.model_copy(update={"iterations": 2, "val_every": 2})}
    )
    distill.run(small, device="cpu")
    reseeded = small.model_copy(update={"teacher": small.teacher.model_copy(update={"seed": 7})})
    shutil.rmtree(reseeded.teacher.store)
    build_teacher_store(reseeded)  # the cache rebuilt with another noise seed
    with pytest.raises(ConfigError, match=r"teacher_cache\.seed: checkpoint 12345, now 7"):
        distill.run(reseeded, device="cpu")


def test_ctrl_c_says_where_training_will_resume_from(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    distill.run(params, device="cpu")
    newest = params.distill.out_dir / "checkpoints" / "iter_00000006.pt"

    def interrupted(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(distill, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        distill.run(params, device="cpu")
    (note,) = raised.value.__notes__  # printed by the CLI
    assert note.startswith(f"the last checkpoint is {newest}; run the same command again")


def test_ctrl_c_before_the_first_checkpoint_says_the_rerun_starts_over(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(distill, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        distill.run(params, device="cpu")
    (note,) = raised.value.__notes__  # printed by the CLI
    assert note == "no checkpoint was written; run the same command again to start over"


def test_a_git_repository_without_commits_is_explained_not_a_dvclive_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"make a first commit \(`git commit`\)"):
        distill._DvcLiveLogger(tmp_path / "dvclive", resume_from=None)


def test_the_student_trains_with_the_configured_stochastic_depth(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtkd_pipeline.train import loop

    built: list[torch.nn.Module] = []

    def recording(name: str, **overrides: object) -> torch.nn.Module:
        built.append(build_student(name, **overrides))
        return built[-1]

    monkeypatch.setattr(loop, "build_student", recording)
    _run(params, tmp_path / "out", drop_path=0.3, iterations=1)
    rates = [m.drop_prob for m in built[0].modules() if type(m).__name__ == "DropPath"]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)  # rising linearly, as SwinIR's
