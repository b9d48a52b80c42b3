"""Stage 2, distill: train the SwinIR-small student against GT and the cached teacher outputs.

Checks that the teacher cache was built with this params' teacher settings, trains with
``dtkd_pipeline.train.loop`` (resuming from the newest checkpoint if one exists), logs curves with
dvclive, and writes ``<out_dir>/student.pt`` holding the EMA weights (``ema``, what every loader
uses), the last raw weights (``model``), the params and the cache's provenance.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import torch

from dtkd_pipeline import atomic
from dtkd_pipeline.cache import DWT_LEVELS
from dtkd_pipeline.cache.prepared_store import check_prepared_fits, open_params_prepared
from dtkd_pipeline.cache.provenance import diff_fields
from dtkd_pipeline.cache.teacher_open import open_teacher
from dtkd_pipeline.cache.teacher_record import (
    CHECKPOINT_SHA256,
    REBUILD_ADVICE,
    local_checkpoint_provenance,
    teacher_params_provenance,
)
from dtkd_pipeline.config import ConfigError, DistillParams, Params, section_dict
from dtkd_pipeline.evaluate.metrics import FullReferenceMetrics, evaluate_pairs
from dtkd_pipeline.evaluate.testsets import TestSet, TestSetError, open_test_set
from dtkd_pipeline.pairing import abbreviated
from dtkd_pipeline.run_lock import exclusive_output
from dtkd_pipeline.stage_files import (
    CHECKPOINTS_DIR,
    DVCLIVE_DIR,
    RUN_PREPARE_DATA_FIRST,
    STUDENT_FILE,
    TRAIN_STORE,
    VAL_DIR,
)
from dtkd_pipeline.train.checkpoint import (
    CheckpointManager,
    CheckpointReadError,
    StudentCheckpoint,
    atomic_torch_save,
)
from dtkd_pipeline.train.curves import discard_unreadable_summary, truncate_curves
from dtkd_pipeline.train.loop import (
    DistributedContext,
    TrainingRun,
    Validator,
    check_recipe,
    setup_distributed,
    train,
)

# distill keys that decide when to log, validate, keep or save, how fast to run, or where the run
# lives (a moved folder, or one path spelled relative and absolute), never what is trained:
# changing them resumes the checkpoints instead of starting over.
BOOKKEEPING_KEYS = ("log_every", "val_every", "checkpoint_every", "keep_last", "compile", "out_dir")


def uses_cached_subbands(params: Params) -> bool:
    """Whether the KD loss reads the teacher store's subbands instead of transforming the teacher.

    Only where they are exactly what the loss would compute: Haar, at the cached depth.
    """
    kd = params.distill.kd
    return (
        params.teacher.dwt
        and kd.kind in ("dwt", "dwt_uniform")
        and kd.wavelet == "haar"
        and kd.levels == DWT_LEVELS
    )


def _teacher_provenance(params: Params) -> dict[str, Any]:
    """Open the teacher store, refuse it if it does not fit params, return its provenance."""
    with open_teacher(params.teacher.store) as store:
        local = local_checkpoint_provenance(params.teacher)  # stage two may run without them
        checked = set(local.get(CHECKPOINT_SHA256, {}))
        if not params.teacher.random_weights and checked != {"unet", "autoencoder"}:
            print(
                "note: the teacher checkpoint files are not on this machine, so the cache's "
                "checkpoint hashes cannot be re-checked against teacher.unet_weights / "
                "teacher.autoencoder_weights; the other teacher settings are"
            )
        expected = {**teacher_params_provenance(params.teacher), **local}
        store.check_provenance(expected, rebuild=REBUILD_ADVICE)
        store.require_complete("cache-teacher")
        return store.provenance


class _DvcLiveLogger:
    """dvclive curves; ``dvcyaml=None`` because dvc.yaml already declares metrics and plots.

    ``resume_from``: the checkpoint iteration a resumed run continues from (None: a fresh run).
    """

    def __init__(self, folder: Path, resume_from: int | None) -> None:
        from dvclive import Live

        if resume_from is not None:
            if (folder / "metrics.json").is_file():
                if discard_unreadable_summary(folder):
                    print(
                        f"note: {folder / 'metrics.json'} was cut short (a failed write) and is "
                        f"written anew from iteration {resume_from}"
                    )
                truncate_curves(folder, resume_from)
            else:
                print(
                    f"note: resuming at iteration {resume_from} but {folder} is gone; the "
                    "training curves start here"
                )
        from scmrepo.exceptions import SCMError

        resume = resume_from is not None
        self.folder = folder
        try:
            with atomic.naming_write_errors(folder):
                self.live = Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False, resume=resume)
        except SCMError as error:  # dvclive reads the git revision of the repository it is in
            raise ConfigError(
                f"dvclive cannot log {folder}: the git repository around it has {error} "
                "(no commit yet); make a first commit (`git commit`), then run again"
            ) from None

    def __call__(self, iteration: int, values: dict[str, float]) -> None:
        with atomic.naming_write_errors(self.folder):  # dvclive's failed writes name no file
            self.live.step = iteration
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.make_summary()

    def close(self) -> None:
        with atomic.naming_write_errors(self.folder):
            self.live.end()


def _checkpoint_changes(
    saved: StudentCheckpoint, params: Params, provenance: dict[str, Any], world_size: int
) -> tuple[str, str] | None:
    """None when the newest checkpoint may be resumed; otherwise ("processes" or "settings", a
    listing of what differs)."""
    cfg = params.distill
    # Ranks shard the data and draw their own noise: another process count cannot continue it.
    saved_ranks = len(saved["data"]) if isinstance(saved["data"], list) else 1
    if saved_ranks != world_size:
        return "processes", f"  processes: checkpoint {saved_ranks}, now {world_size}"

    def recipe(params_section: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params_section.items() if k not in BOOKKEEPING_KEYS}

    # Keyed "distill" so a changed field reads as its params.yaml key (distill.lr).
    differences = diff_fields(
        {
            "distill": recipe(saved["params"]),
            "teacher_cache": saved["provenance"].get("teacher_cache"),
        },
        {"distill": recipe(section_dict(cfg)), "teacher_cache": provenance},
    )
    if not differences:
        return None
    listing = "\n".join(
        f"  {key}: checkpoint {old!r}, now {new!r}" for key, old, new in differences
    )
    return "settings", listing


def _reconcile_checkpoints(
    params: Params, provenance: dict[str, Any], ctx: DistributedContext, restart_on_change: bool
) -> StudentCheckpoint | None:
    """Resume only checkpoints made with these params, this cache and this many processes;
    otherwise refuse, or start over (``restart_on_change``, for changed params only).

    Rank 0 reads the checkpoint and decides for every rank, so no rank reads files another is
    deleting, and all ranks raise the same error together instead of one waiting forever.
    Returns, on rank 0, the checkpoint to resume (read once, for the comparison and the resume).
    """
    saved, verdict = _checkpoint_verdict(params, provenance, ctx)
    if verdict is None:
        return saved
    if isinstance(verdict, Exception):
        raise verdict
    kind, listing = verdict
    _refuse_unless_restarting(kind, listing, params.distill.out_dir, restart_on_change)
    _start_over(params.distill.out_dir, listing, ctx)
    return None


# Whether the newest checkpoint may be resumed: None (yes, or there is none), the error reading
# it, or what differs as ``_checkpoint_changes`` lists it.
_Verdict = CheckpointReadError | tuple[str, str] | None


def _checkpoint_verdict(
    params: Params, provenance: dict[str, Any], ctx: DistributedContext
) -> tuple[StudentCheckpoint | None, _Verdict]:
    """(rank 0's newest checkpoint, the verdict every rank shares)."""
    verdict: _Verdict = None
    saved: StudentCheckpoint | None = None
    if ctx.is_main:
        cfg = params.distill
        try:
            saved = CheckpointManager(cfg.out_dir / CHECKPOINTS_DIR, cfg.keep_last).load_latest()
            if saved is not None:
                verdict = _checkpoint_changes(saved, params, provenance, ctx.world_size)
        except CheckpointReadError as error:
            verdict = error
    if ctx.world_size > 1:
        shared = [verdict]
        torch.distributed.broadcast_object_list(shared, src=0)
        verdict = shared[0]
    return saved, verdict


def _refuse_unless_restarting(
    kind: str, listing: str, out_dir: Path, restart_on_change: bool
) -> None:
    """Refuse checkpoints of another process count always, of other settings unless asked to
    start over."""
    folder = out_dir / CHECKPOINTS_DIR
    if kind == "processes":
        # Never deleted on its own: the process count is the machine's, not a params change.
        raise ConfigError(
            f"checkpoints in {folder} were made by another number of processes:\n{listing}\n"
            "Resume with that many (torchrun --nproc_per_node), or delete the folder to start over"
        )
    if not restart_on_change:
        raise ConfigError(
            f"checkpoints in {folder} were made with other settings:\n{listing}\n"
            "Delete that folder to start over (or pass --restart-on-change)"
        )


def _start_over(out_dir: Path, listing: str, ctx: DistributedContext) -> None:
    """Delete the checkpoints and curves of a run with other settings (rank 0), then sync."""
    if ctx.is_main:
        print(f"settings changed since the last checkpoint, starting over:\n{listing}")
        shutil.rmtree(out_dir / CHECKPOINTS_DIR)
        shutil.rmtree(out_dir / DVCLIVE_DIR, ignore_errors=True)
    if ctx.world_size > 1:
        torch.distributed.barrier()  # no rank looks for checkpoints while they are deleted


# What distill writes in out_dir, and the .gitignore DVC writes beside its outputs.
_OWN_NAMES = {STUDENT_FILE, CHECKPOINTS_DIR, DVCLIVE_DIR, ".gitignore"}


def _require_own_out_dir(out_dir: Path) -> None:
    """Refuse an out_dir holding files no stage wrote: distill overwrites student.pt, prunes
    checkpoints/, clears dvclive/ on a fresh start and deletes both on --restart-on-change."""
    if atomic.is_replaceable(out_dir):  # missing, empty, or marked by an earlier run
        return
    names = sorted(entry.name for entry in out_dir.iterdir())
    if set(names) <= _OWN_NAMES:  # written by a distill from before the marker existed
        return
    raise atomic.OutputFolderError(
        f"distill.out_dir: {out_dir} holds files no distill run marked as its own "
        f"({abbreviated(names)}), and distill overwrites {STUDENT_FILE} and "
        f"deletes old checkpoints and curves there. Set distill.out_dir to a new or empty "
        f"folder; if they are an earlier distill run's files, mark the folder as its output "
        f"with `touch {out_dir / atomic.OUTPUT_MARKER}`"
    )


def run(params: Params, device: str | None = None, restart_on_change: bool = False) -> Path:
    """Train the student (resuming its checkpoints) and write ``<out_dir>/student.pt``; returns
    that path. Everything that can refuse the run is checked before anything is deleted."""
    cfg = params.distill
    provenance = _teacher_provenance(params)
    with open_params_prepared(params, complete=True) as prepared:
        check_prepared_fits(prepared, params.data)  # the teacher cache holds their tiles too
    ctx = setup_distributed(device)
    check_recipe(cfg, ctx.device, ctx.world_size)  # before --restart-on-change deletes anything
    if ctx.is_main:
        _note_unreached_milestones(cfg)
    atomic.require_folder(cfg.out_dir, "distill.out_dir")
    # One run at a time per out_dir (rank 0 holds it for all ranks): a second run, such as the
    # rerun of a `dvc repro` killed while its distill went on, would train beside the first and
    # interleave checkpoints; it is refused at once instead.
    lock = exclusive_output(cfg.out_dir, "distill.out_dir") if ctx.is_main else None
    with lock or contextlib.nullcontext():
        return _run_locked(params, provenance, ctx, restart_on_change)


def _run_locked(
    params: Params,
    provenance: dict[str, Any],
    ctx: DistributedContext,
    restart_on_change: bool,
) -> Path:
    """`run` once this run holds ``distill.out_dir``."""
    cfg, scale = params.distill, params.data.scale
    _require_own_out_dir(cfg.out_dir)  # before --restart-on-change deletes anything
    val_set = _open_validation_set(params)
    latest = _reconcile_checkpoints(params, provenance, ctx, restart_on_change)
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        atomic.mark_output(out_dir)  # a later run may overwrite and prune what is in it
    run_spec = TrainingRun(
        prepared_store=params.data.prepared_dir / TRAIN_STORE,
        teacher_store=params.teacher.store,
        out_dir=out_dir,
        use_cached_dwt=uses_cached_subbands(params),
        provenance={"teacher_cache": provenance, "teacher_store": str(params.teacher.store)},
    )
    validate, logger = _main_rank_hooks(cfg, val_set, scale, ctx) if ctx.is_main else (None, None)
    final = _train_closing_logger(cfg, run_spec, ctx, validate, logger, latest)
    path = out_dir / STUDENT_FILE
    speed = final.pop("throughput")
    if ctx.is_main:
        _write_student(final, speed, path)
    return path


def _note_unreached_milestones(cfg: DistillParams) -> None:
    """Name the LR milestones this run never reaches. Said, not refused: a quick run keeps the
    recipe's milestones on purpose, but a long one that drops them by mistake trains at the
    initial rate throughout."""
    # A milestone m lowers the rate from iteration m + 1 on, so one at the last iteration is
    # as unreached as one past it.
    unreached = [milestone for milestone in cfg.milestones if milestone >= cfg.iterations]
    if unreached:
        print(
            f"note: distill.milestones {unreached} are not below distill.iterations "
            f"({cfg.iterations}), so the learning rate is never lowered at them; lower them or "
            "raise distill.iterations if that is not meant"
        )


def _open_validation_set(params: Params) -> TestSet:
    """The whole-image pairs prepare-data holds out; when missing, say which stage writes them
    (the test-set message would send the user to evaluate.sets, which does not name them)."""
    folder = params.data.prepared_dir / VAL_DIR
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "not found"
        raise TestSetError(
            f"validation images {folder} {what}: prepare-data writes them beside "
            f"{TRAIN_STORE} (data.prepared_dir/{VAL_DIR}); {RUN_PREPARE_DATA_FIRST}"
        )
    rewrite = f"rerun `dtkd-pipeline prepare-data` to write data.prepared_dir/{VAL_DIR} again"
    return open_test_set("validation", "paired", folder, params.data.scale, remedy=rewrite)


def _main_rank_hooks(
    cfg: DistillParams, val_set: TestSet, scale: int, ctx: DistributedContext
) -> tuple[Validator, _DvcLiveLogger]:
    """Rank 0's validation (on the EMA weights the loop passes) and curve logger."""
    pairs = [val_set.load(pair, scale) for pair in val_set]  # decoded once, reused every time
    metrics = FullReferenceMetrics(scale=scale, device=ctx.device)

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_pairs(model, pairs, metrics, ctx.device, progress=True)

    done = CheckpointManager(cfg.out_dir / CHECKPOINTS_DIR, cfg.keep_last).iterations()
    logger = _DvcLiveLogger(cfg.out_dir / DVCLIVE_DIR, resume_from=done[-1] if done else None)
    return validate, logger


def _train_closing_logger(
    cfg: DistillParams,
    run_spec: TrainingRun,
    ctx: DistributedContext,
    validate: Validator | None,
    logger: _DvcLiveLogger | None,
    latest: StudentCheckpoint | None,
) -> dict[str, Any]:
    """Train; on Ctrl-C say where the run resumes from; close the curves either way."""
    try:
        result = train(cfg, run_spec, ctx, validate=validate, log=logger, latest=latest)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt) and ctx.is_main:  # the CLI prints the note
            newest = CheckpointManager(cfg.out_dir / CHECKPOINTS_DIR, cfg.keep_last).latest()
            error.add_note(
                f"the last checkpoint is {newest}; run the same command again to resume from it"
                if newest
                else "no checkpoint was written; run the same command again to start over"
            )
        if logger is not None:
            # On a full disk closing fails too: that second error must not hide the first.
            with contextlib.suppress(OSError):
                logger.close()
        raise
    if logger is not None:
        logger.close()
    return result


def _write_student(final: dict[str, Any], speed: dict[str, Any], path: Path) -> None:
    """Save the final state and report its validation score and the training speed."""
    atomic_torch_save(final, path)
    print(f"student (EMA weights) -> {path}; best val PSNR-Y {final['best_psnr']:.2f} dB")
    if speed["timed_steps"]:  # none when a finished run is rerun
        print(
            f"training speed: {speed['samples_per_s']:.1f} samples/s over "
            f"{speed['timed_steps']} steps after the first; waiting for data "
            f"{100 * speed['loader_wait']:.1f}% of the time"
        )
