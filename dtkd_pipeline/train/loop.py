"""The distillation training loop: L1(student, GT) + lambda(t) * L_KD(student, teacher).

`train` reads top to bottom like nanoGPT's train.py: set-up (model, EMA, optimiser, DDP, data),
resume from the newest checkpoint, then one loop that steps, logs, validates and checkpoints; the
helpers above it are those steps, named. Every piece of
state that influences later iterations (weights, EMA, optimiser, LR schedule, every RNG, the data
position) is checkpointed, so a killed and resumed run ends with exactly the weights of an
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from dtkd_pipeline.config import ConfigError, DistillParams, section_dict
from dtkd_pipeline.devices import require_cuda_for, resolve_device
from dtkd_pipeline.losses import DistillationObjective, build_kd_loss
from dtkd_pipeline.progress import hidden_unless
from dtkd_pipeline.stage_files import CHECKPOINTS_DIR
from dtkd_pipeline.student import build_student
from dtkd_pipeline.train.checkpoint import (
    CheckpointManager,
    StudentCheckpoint,
    restore_rng_states,
    rng_states,
)
from dtkd_pipeline.train.dataset import (
    LoaderSettings,
    ShardStreamDataset,
    batch_to_float,
    epochs_of_batches,
)
from dtkd_pipeline.train.ema import ModelEMA
from dtkd_pipeline.train.throughput import Throughput

Validator = Callable[[nn.Module], dict[str, float]]
Logger = Callable[[int, dict[str, float]], None]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; the message says where the debugging state was saved."""


@dataclass(frozen=True)
class TrainingRun:
    """Where a run reads from and writes to; everything else comes from DistillParams."""

    prepared_store: Path
    teacher_store: Path
    out_dir: Path
    use_cached_dwt: bool
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> DistributedContext:
    """One process per GPU under torchrun (WORLD_SIZE > 1), otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            return DistributedContext(dist.get_rank(), world_size, torch.device("cuda", local_rank))
        return DistributedContext(dist.get_rank(), world_size, torch.device("cpu"))
    return DistributedContext(0, 1, resolve_device(device))


def _this_rank(saved: Any, ctx: DistributedContext, what: str) -> Any:
    """This rank's entry of per-rank checkpoint state (a list under DDP, one value otherwise)."""
    per_rank = isinstance(saved, list)
    saved_ranks = len(saved) if per_rank else 1
    if saved_ranks != ctx.world_size:
        raise ConfigError(
            f"the checkpoint's {what} was saved by {saved_ranks} rank(s) but this run has "
            f"{ctx.world_size}: resume with the same number of processes, or start over"
        )
    return saved[ctx.rank] if per_rank else saved


def _save_debug_state(out_dir: Path, iteration: int, model: nn.Module, batch: dict) -> Path:
    path = out_dir / f"diverged_iter_{iteration:08d}.pt"
    torch.save({"iteration": iteration, "model": model.state_dict(), "batch": batch}, path)
    return path


def _kd_loss(cfg: DistillParams) -> nn.Module:
    kd = cfg.kd
    weights = (kd.weights["lf"], kd.weights["mf"], kd.weights["hf"])
    try:
        return build_kd_loss(kd.kind, levels=kd.levels, wavelet=kd.wavelet, weights=weights)
    except ImportError as error:  # an optional extra (dtcwt) that is not installed
        raise ConfigError(f"distill.kd.kind={kd.kind}: {error}") from error


def check_recipe(cfg: DistillParams, device: torch.device, world_size: int = 1) -> None:
    """What can refuse a run, checked before it writes or deletes anything (precision, KD loss,
    the batch split over processes)."""
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"distill.batch_size ({cfg.batch_size}) is the batch over all processes and must be "
            f"divisible by their number, {world_size}: change one of them"
        )
    require_cuda_for(cfg.precision, device.type, "distill.precision")
    _kd_loss(cfg)


@dataclass(frozen=True)
class _Student:
    """The network being trained and the state that moves with it."""

    model: nn.Module  # the plain module: saved, averaged into the EMA, clipped
    # What the steps run (compiled, DDP-wrapped); it shares its parameters with `model`.
    train_model: nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR


def _build_student(cfg: DistillParams, ctx: DistributedContext) -> _Student:
    device = ctx.device
    model = build_student(cfg.student, drop_path_rate=cfg.drop_path).to(device)
    ema = ModelEMA(model, cfg.ema_decay)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if ctx.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Student(model, train_model, ema, optimizer, scheduler)


def _objective(cfg: DistillParams) -> DistillationObjective:
    return DistillationObjective(
        _kd_loss(cfg),
        final_weight=cfg.kd.final_weight,
        total_iterations=cfg.iterations,
        schedule=cfg.kd.schedule,
    )


def _rank_dataset(
    cfg: DistillParams, run: TrainingRun, ctx: DistributedContext
) -> ShardStreamDataset:
    """This rank's stream of its own shards, at its share of the batch."""
    return ShardStreamDataset(
        run.prepared_store,
        run.teacher_store,
        dwt=run.use_cached_dwt,
        settings=LoaderSettings(
            patch_size=cfg.patch_size,
            batch_size=cfg.batch_size // ctx.world_size,
            shuffle_buffer=cfg.shuffle_buffer,
            patches_per_tile=cfg.patches_per_tile,
            augment=cfg.augment,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            num_workers=cfg.num_workers,
        ),
    )


def _resume(
    state: StudentCheckpoint,
    student: _Student,
    dataset: ShardStreamDataset,
    ctx: DistributedContext,
) -> tuple[int, float]:
    """Load a checkpoint into the run's state; returns (iteration, best validation PSNR-Y)."""
    student.model.load_state_dict(state["model"])
    student.ema.load_state_dict(state["ema"])
    student.optimizer.load_state_dict(state["optimizer"])
    student.scheduler.load_state_dict(state["scheduler"])
    dataset.load_state_dict(_this_rank(state["data"], ctx, "data position"))
    restore_rng_states(_this_rank(state["rng"], ctx, "RNG state"))
    return state["iteration"], state["best_psnr"]


def _run_summary(
    student: _Student, cfg: DistillParams, run: TrainingRun, iteration: int, best_psnr: float
) -> dict[str, Any]:
    """What a checkpoint and the final student file both hold: weights, progress, origin."""
    return {
        "model": student.model.state_dict(),
        "ema": student.ema.state_dict(),
        "iteration": iteration,
        "best_psnr": best_psnr,
        "arch": cfg.student,
        "params": section_dict(cfg),
        "provenance": dict(run.provenance),
    }


def _gathered_from_ranks(position: Any, rng: Any, ctx: DistributedContext) -> tuple[Any, Any]:
    """The data position and RNG state of every rank (lists) under DDP, this rank's otherwise.

    Ranks draw different drop-path masks (seed + rank), so each rank's RNG state is saved beside
    its data position; restoring rank 0's everywhere would break exact resumption.
    """
    if ctx.world_size == 1:
        return position, rng
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, (position, rng))
    return [g[0] for g in gathered], [g[1] for g in gathered]


def _train_curves(
    parts: dict[str, torch.Tensor], step_lr: float, throughput: Throughput
) -> dict[str, float]:
    return {
        "train/loss": parts["total"].item(),
        "train/task_l1": parts["task"].item(),
        "train/kd": parts["kd"].item(),
        "train/lambda": float(parts["lambda"]),
        "train/lr": step_lr,
        **throughput.window(),
    }


def _stop_if_diverged(
    parts: dict[str, torch.Tensor],
    iteration: int,
    model: nn.Module,
    batch: dict[str, Any],
    out_dir: Path,
    checkpoints: CheckpointManager,
) -> None:
    """Raise `TrainingDivergedError`, saving the model and the batch, when the loss is NaN/inf.

    A host sync per step, kept so that a divergence is caught at its exact iteration with the
    batch that caused it; it costs little beside the step.
    """
    if torch.isfinite(parts["total"]):
        return
    debug = _save_debug_state(out_dir, iteration, model, batch)
    raise TrainingDivergedError(
        f"loss is {parts['total'].item()} at iteration {iteration} (task "
        f"{parts['task'].item():.4g}, kd {parts['kd'].item():.4g}); model and batch saved "
        f"to {debug}; the last good checkpoint {checkpoints.latest()} is untouched. "
        "Lower distill.lr, set distill.grad_clip, or use distill.precision=fp32"
    )


def train(
    cfg: DistillParams,
    run: TrainingRun,
    ctx: DistributedContext,
    validate: Validator | None = None,
    log: Logger | None = None,
    latest: StudentCheckpoint | None = None,
) -> dict[str, Any]:
    """Train (or resume) to ``cfg.iterations``; returns the final state: model and EMA weights,
    iteration, best validation PSNR-Y, params, provenance and the throughput totals.

    ``latest``: the newest checkpoint when the caller has read it already (None: read it here).
    """
    device = ctx.device
    check_recipe(cfg, device, ctx.world_size)
    torch.manual_seed(cfg.seed + ctx.rank)
    student = _build_student(cfg, ctx)
    objective = _objective(cfg)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    )
    dataset = _rank_dataset(cfg, run, ctx)

    checkpoints = CheckpointManager(run.out_dir / CHECKPOINTS_DIR, cfg.keep_last)
    # On the CPU, where RNG states must be restored from.
    state = latest if latest is not None else checkpoints.load_latest()
    iteration, best_psnr = 0, -math.inf
    if state is not None:
        iteration, best_psnr = _resume(state, student, dataset, ctx)
        if ctx.is_main:
            tqdm.write(f"resuming from {checkpoints.latest()} at iteration {iteration}")

    def checkpoint_state(data_position: Any, rng: Any) -> StudentCheckpoint:
        return {
            **_run_summary(student, cfg, run, iteration, best_psnr),
            "optimizer": student.optimizer.state_dict(),
            "scheduler": student.scheduler.state_dict(),
            "data": data_position,
            "rng": rng,
        }

    def train_step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward, loss, backward, optimiser and EMA on one batch; returns the loss parts."""
        data = batch_to_float(batch, device, non_blocking=True)
        with autocast:
            sr = student.train_model(data["lr"])
        parts = objective(
            sr.float(),
            data["hr"],
            data["teacher"],
            iteration=iteration,
            teacher_subbands=data.get("dwt"),
        )
        _stop_if_diverged(parts, iteration, student.model, batch, run.out_dir, checkpoints)
        student.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.model.parameters(), cfg.grad_clip)
        student.optimizer.step()
        student.scheduler.step()
        student.ema.update(student.model)
        return parts

    def due(every: int) -> bool:
        """Whether this iteration logs/validates/checkpoints: every `every`, and the last one."""
        return iteration % every == 0 or iteration == cfg.iterations

    # -- the loop
    batches = epochs_of_batches(dataset, pin_memory=device.type == "cuda")
    student.model.train()
    bar = tqdm(
        total=cfg.iterations, initial=iteration, desc="distill", **hidden_unless(ctx.is_main)
    )
    throughput = Throughput()
    shown: dict[str, str] = {}  # the bar's postfix: last logged loss and validation PSNR-Y
    while iteration < cfg.iterations:
        waiting_since = time.perf_counter()
        batch, consumed = next(batches)
        throughput.waited(time.perf_counter() - waiting_since)
        # The rate this step uses (the step moves it on).
        step_lr = student.scheduler.get_last_lr()[0]
        parts = train_step(batch)
        iteration += 1
        bar.update(1)
        throughput.stepped(cfg.batch_size)

        if ctx.is_main and due(cfg.log_every):
            shown["loss"] = f"{parts['total'].item():.4g}"
            bar.set_postfix(shown)
            if log is not None:
                log(iteration, _train_curves(parts, step_lr, throughput))
        is_best = False
        if validate is not None and ctx.is_main and due(cfg.val_every):
            metrics = validate(student.ema.module)
            is_best = metrics["psnr_y"] > best_psnr
            best_psnr = max(best_psnr, metrics["psnr_y"])
            shown["val_psnr_y"] = f"{metrics['psnr_y']:.2f}"
            bar.set_postfix(shown)
            if log is not None:
                log(iteration, {f"val/{k}": v for k, v in metrics.items()})
        if is_best and not due(cfg.checkpoint_every):
            # Validation and checkpoint steps need not coincide; best.pt (main rank only, never
            # resumed from) must not wait for the next checkpoint step.
            checkpoints.save_best(checkpoint_state(dataset.state_dict(consumed), rng_states()))
        if due(cfg.checkpoint_every):
            position, rng = _gathered_from_ranks(dataset.state_dict(consumed), rng_states(), ctx)
            if ctx.is_main:
                checkpoints.save(checkpoint_state(position, rng), iteration, is_best=is_best)
    bar.close()
    return {
        "throughput": throughput.totals(),
        **_run_summary(student, cfg, run, iteration, best_psnr),
    }
