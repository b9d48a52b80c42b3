"""Evaluate stage: metrics of every contender on every test set, efficiency table, band analysis.

Writes three folders:

* ``evaluate.metrics_dir``/``<set>.json`` (DVC metrics): per model, each metric's mean, std and
  number of runs, numbers only;
* ``evaluate.out_dir``/ (default data/evaluation):
  ``<set>.json`` the full record (skipped metrics and why, run provenance, params),
  ``<set>.csv`` one row per image, model and run,
  ``efficiency.json`` / ``efficiency.md`` params, FLOPs and latency (``evaluate.efficiency``)
  and ``efficiency.png`` latency and images/s against batch size,
  ``bands.json`` mean teacher-student difference per DWT subband and group;
* ``evaluate.plots_dir``/ (DVC plots): ``bands.png`` the band chart and
  ``comparisons/<set>/<image>.png`` the same crop of every model's output beside GT.

All three folders are built as ``<folder>.partial`` and renamed into place at the end, so an
interrupted run leaves the previous results intact and never a half-written set.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dtkd_pipeline import atomic
from dtkd_pipeline.atomic import staged_folder
from dtkd_pipeline.cache.teacher_record import build_teacher, resolve_keyed_checkpoint
from dtkd_pipeline.config import (
    BandsParams,
    ConfigError,
    EvaluateParams,
    Params,
    TeacherParams,
    section_dict,
)
from dtkd_pipeline.devices import resolve_device
from dtkd_pipeline.evaluate import contenders as zoo
from dtkd_pipeline.evaluate.bands import (
    analyze_cache,
    analyze_folder,
    folder_pairs,
    require_dwt_depth,
    write_band_report,
)
from dtkd_pipeline.evaluate.efficiency import (
    benchmark_models,
    student_target,
    teacher_target,
    write_efficiency,
)
from dtkd_pipeline.evaluate.figures import comparison_figure, detail_crop
from dtkd_pipeline.evaluate.metrics import MetricSuite
from dtkd_pipeline.evaluate.testsets import (
    TestPair,
    TestSet,
    TestSetError,
    open_test_set,
)
from dtkd_pipeline.images import as_saved_8bit, probe_image
from dtkd_pipeline.pairing import abbreviated
from dtkd_pipeline.stage_files import (
    COMPARISONS_DIR,
    EFFICIENCY_JSON,
    EFFICIENCY_MD,
    EFFICIENCY_PNG,
    RUN_PREPARE_DATA_FIRST,
    TRAIN_STORE,
)
from dtkd_pipeline.student import StudentWeightsError
from dtkd_pipeline.teacher import Teacher

ONE_STEP_KEY = "evaluate.models.one_step"  # a UNet file run in place of teacher.unet_weights


def _eager_teacher(params: Params, **update: Any) -> TeacherParams:
    """The teacher params (with `update`) as evaluate builds them: eager, because test images come
    in many sizes and a compiled teacher recompiles (minutes) for each."""
    return params.teacher.model_copy(update={"compile": None, **update})


def _student_contenders(params: Params, device: torch.device) -> list[zoo.Contender]:
    """One contender per `evaluate.models.students` label. Built before any teacher (they load
    in under a second): a bad checkpoint is named at once, not after the teacher ran."""
    cfg = params.evaluate
    found = []
    for label, checkpoints in cfg.models.students.items():
        for path in checkpoints:
            if not path.exists():
                raise FileNotFoundError(
                    f"evaluate.models.students: checkpoint {path} not found; train it first "
                    "(dtkd-pipeline distill) or fix the path in params.yaml"
                )
        try:
            found.append(
                zoo.students(label, checkpoints, device, cfg.student_tile, cfg.student_overlap)
            )
        except (StudentWeightsError, ValueError, OSError) as error:
            raise StudentWeightsError(f"evaluate.models.students.{label}: {error}") from error
    return found


def _one_step_unet(params: Params) -> Path | None:
    """The one-step UNet's checkpoint file, resolved before any model runs; its errors name
    evaluate.models.one_step, not the teacher.unet_weights it stands in for."""
    name = params.evaluate.models.one_step
    if name is None:
        return None
    return resolve_keyed_checkpoint(ONE_STEP_KEY, name, params.teacher)


def _contenders(
    params: Params,
    device: torch.device,
    students: list[zoo.Contender],
    teacher: Teacher | None,
    one_step_unet: Path | None,
) -> list[zoo.Contender]:
    cfg = params.evaluate
    models = cfg.models
    found: list[zoo.Contender] = []  # in the paper's figure order: LR-bicubic | students | teacher
    if models.bicubic:
        found.append(zoo.bicubic(params.data.scale))
    found += students
    if one_step_unet is not None:
        # The one-step UNet runs on the teacher's VQGAN, loaded like the teacher itself.
        spec = _eager_teacher(params, unet_weights=str(one_step_unet), random_weights=False)
        one_step = build_teacher(spec, device, unet_key=ONE_STEP_KEY)
        found.append(
            zoo.diffusion(zoo.ONE_STEP, one_step, cfg.teacher_seeds, cfg.teacher_chop, True)
        )
    if teacher is not None:
        label = zoo.RANDOM_TEACHER if params.teacher.random_weights else zoo.TEACHER
        found.append(zoo.diffusion(label, teacher, cfg.teacher_seeds, cfg.teacher_chop))
    return found


def _mean_std(values: list[float]) -> dict[str, float | int]:
    finite = [v for v in values if math.isfinite(v)]
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {
        "mean": statistics.fmean(finite) if finite else math.nan,
        "std": std,
        "runs": len(finite),
    }


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per model and metric: the mean over images of each run, then mean and std over runs."""
    per_run: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        scores = per_run.setdefault(row["model"], {}).setdefault(row["run"], {})
        for metric, value in row.items():
            if metric not in _ROW_KEYS:
                scores.setdefault(metric, []).append(value)
    return {
        model: {
            metric: _mean_std([statistics.fmean(run[metric]) for run in runs.values()])
            for metric in sorted({name for run in runs.values() for name in run})
        }
        for model, runs in per_run.items()
    }


_ROW_KEYS = ("image", "model", "run")


def evaluate_set(
    test_set: TestSet,
    contenders: list[zoo.Contender],
    suite: MetricSuite,
    cfg: EvaluateParams,
    scale: int,
    out_dir: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    """Run every contender on every image; write the set's CSV and comparison figures."""
    rows: list[dict[str, Any]] = []
    wanted = set(cfg.comparison.images)
    total = len(test_set.pairs) * sum(len(c.runs) for c in contenders)
    with tqdm(total=total, desc=f"evaluate {test_set.name}", unit="sr") as bar:
        for index, pair in enumerate(test_set.pairs):
            lr, hr = test_set.load(pair, scale)
            panels: dict[str, torch.Tensor] = {}
            for contender in contenders:
                for run in contender:
                    sr = as_saved_8bit(run.super_resolve(lr, index))
                    scores = _scores(suite, sr, hr, pair, test_set.name)
                    rows.append(
                        {"image": pair.stem, "model": contender.label, "run": run.name, **scores}
                    )
                    panels.setdefault(contender.label, sr)
                    bar.update()
            if pair.stem in wanted:
                folder = plots_dir / COMPARISONS_DIR / test_set.name
                _comparison(pair.stem, hr, panels, cfg.comparison.crop, folder)
    _write_csv(out_dir / f"{test_set.name}.csv", rows)
    return _set_record(test_set, contenders, suite, rows)


def _scores(
    suite: MetricSuite, sr: torch.Tensor, hr: torch.Tensor, pair: TestPair, set_name: str
) -> dict[str, float]:
    """The metrics of one output; a metric network's size limit names the image to leave out."""
    try:
        return suite(sr, hr)
    except torch.OutOfMemoryError:
        raise  # the device's limit, not the image's
    except RuntimeError as error:  # a metric network's own size limits
        raise TestSetError(
            f"{pair.hr}: the metrics could not score this "
            f"{hr.shape[-1]}x{hr.shape[-2]} image ({error}); leave it out of "
            f"test set {set_name!r}"
        ) from error


def _set_record(
    test_set: TestSet,
    contenders: list[zoo.Contender],
    suite: MetricSuite,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The set's full record: where it came from, aggregated metrics, skips and provenance."""
    return {
        "set": test_set.name,
        "layout": test_set.layout,
        "root": str(test_set.root),
        "images": len(test_set.pairs),
        "metrics": _aggregate(rows),
        "skipped_metrics": dict(suite.skipped),
        "runs": {c.label: {run.name: run.provenance for run in c} for c in contenders},
    }


def _comparison(
    stem: str, hr: torch.Tensor, panels: dict[str, torch.Tensor], crop: int, folder: Path
) -> None:
    top, left = detail_crop(hr, crop)
    ordered = [*panels.items(), ("GT", hr)]  # contender order, then the ground truth
    comparison_figure(ordered, (top, left, crop), folder / f"{stem}.png", title=stem)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = [*_ROW_KEYS, *sorted({key for row in rows for key in row} - set(_ROW_KEYS))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def check_efficiency_precisions(params: Params, device: torch.device) -> None:
    precisions = params.evaluate.efficiency.precisions
    if device.type != "cuda" and "fp32" not in precisions:
        raise ConfigError(
            f"evaluate.efficiency.precisions {precisions}: half precisions are measured on CUDA "
            f"only and this run is on {device}, so nothing would be timed; add fp32 or run on a "
            "GPU"
        )


def run_efficiency(
    params: Params, device: torch.device, out_dir: Path, teacher: Teacher | None = None
) -> None:
    """The efficiency table (params, FLOPs, latency) of the students and the teacher.

    A given fp32 `teacher` is reused; otherwise one is built (weights are read once per run).
    """
    cfg = params.evaluate
    check_efficiency_precisions(params, device)
    targets = [
        student_target(
            label, arch_or_path=checkpoints[0], compile_mode=cfg.efficiency.student_compile
        )
        for label, checkpoints in cfg.models.students.items()
    ]
    if cfg.efficiency.teacher:
        if teacher is None or teacher.precision != "fp32":
            # fp32: benchmark_models applies each measured precision itself.
            teacher = build_teacher(_eager_teacher(params, precision="fp32"), device)
        targets.append(teacher_target(teacher, one_step=False))
        targets.append(teacher_target(teacher, one_step=True))
    rows = benchmark_models(
        targets,
        lr_size=cfg.efficiency.lr_size,
        batch_sizes=cfg.efficiency.batch_sizes,
        precisions=cfg.efficiency.precisions,
        warmup=cfg.efficiency.warmup,
        runs=cfg.efficiency.runs,
        device=device,
    )
    write_efficiency(
        rows, out_dir / EFFICIENCY_JSON, out_dir / EFFICIENCY_MD, out_dir / EFFICIENCY_PNG
    )


def run_bands(
    params: Params,
    device: torch.device,
    out_dir: Path,
    plots_dir: Path,
    models: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Band analysis of each student (first checkpoint per label, or ``models``); returns the
    written files ({"json": ..., "png": ...})."""
    cfg = params.evaluate.bands
    if models is None:
        models = {label: runs[0] for label, runs in params.evaluate.models.students.items()}
    common: dict[str, Any] = {
        "levels": cfg.levels,
        "wavelet": cfg.wavelet,
        "batch_size": cfg.batch_size,
        "device": device,
    }
    if cfg.source != "cache":
        band_folder_pairs(cfg)  # its errors name the params keys, analyze_folder's its arguments
    stats = {}
    for label, checkpoint in models.items():
        if cfg.source == "cache":
            stats[label] = analyze_cache(
                params.data.prepared_dir / TRAIN_STORE,
                params.teacher.store,
                checkpoint,
                max_tiles=cfg.max_tiles or None,  # 0 = every tile
                name=label,
                **common,
            )
        else:
            stats[label] = analyze_folder(
                Path(cfg.source), checkpoint, max_images=cfg.max_tiles or None, name=label, **common
            )
    return write_band_report(stats, out_dir, plots_dir)


def band_folder_pairs(cfg: BandsParams) -> list[tuple[Path, Path]]:
    """The (lr, teacher) pairs a folder `evaluate.bands.source` analyses, refused if the folder
    lacks them or a teacher image is too small for `evaluate.bands.levels`."""
    try:
        pairs = folder_pairs(cfg.source)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"evaluate.bands.source: {error}") from None
    analysed = pairs[: cfg.max_tiles or None]  # 0 = every image
    require_dwt_depth(
        analysed, cfg.levels, cfg.wavelet, key="evaluate.bands.levels", error=ConfigError
    )
    return analysed


def run(params: Params, device: str | None = None) -> Path:
    """Score every contender on every test set; returns evaluate.metrics_dir."""
    try:
        return _evaluate(params, device)
    except KeyboardInterrupt as interrupt:  # the CLI prints the note
        cfg = params.evaluate
        interrupt.add_note(
            f"{cfg.metrics_dir}, {cfg.out_dir} and {cfg.plots_dir} are as they were (each is "
            "replaced only when the evaluation completes); run the same command again"
        )
        raise


def _evaluate(params: Params, device: str | None) -> Path:
    cfg = params.evaluate
    target = resolve_device(device or cfg.device)
    # Everything that can fail on bad input is checked before any model runs.
    _check_output_folders(cfg)  # first: metric networks, students and the teacher load below
    suite = MetricSuite(
        cfg.metrics,
        scale=params.data.scale,
        color=cfg.color,
        device=target,
        skip_unavailable=cfg.skip_unavailable,
    )
    test_sets = _open_test_sets(params, suite.min_hr_side)
    students = _student_contenders(params, target)
    one_step_unet = _one_step_unet(params)
    if cfg.efficiency.enabled:
        check_efficiency_precisions(params, target)
    _note_ignored_alpha(_images_read(cfg, test_sets))

    wants_teacher = cfg.models.teacher or (cfg.efficiency.enabled and cfg.efficiency.teacher)
    teacher = build_teacher(_eager_teacher(params), target) if wants_teacher else None
    chosen_teacher = teacher if cfg.models.teacher else None
    contenders = _contenders(params, target, students, chosen_teacher, one_step_unet)
    summary: dict[str, Any] = {}
    with (
        staged_folder(cfg.metrics_dir, "evaluate.metrics_dir") as metrics_dir,
        staged_folder(cfg.plots_dir, "evaluate.plots_dir") as plots_dir,
        staged_folder(cfg.out_dir, "evaluate.out_dir") as out_dir,
    ):
        for test_set in test_sets:
            result = evaluate_set(
                test_set, contenders, suite, cfg, params.data.scale, out_dir, plots_dir
            )
            _write_set_results(result, cfg, out_dir, metrics_dir)
            summary[test_set.name] = result["metrics"]
        _note_absent_comparisons(cfg, test_sets)
        if cfg.efficiency.enabled:
            run_efficiency(params, target, out_dir, teacher)
        if cfg.bands.enabled:
            run_bands(params, target, out_dir, plots_dir)
    _print_summary(summary, suite.skipped)
    print(
        f"metrics -> {cfg.metrics_dir}, per-image scores and records -> {cfg.out_dir}, "
        f"figures -> {cfg.plots_dir}"
    )
    return cfg.metrics_dir


def _check_output_folders(cfg: EvaluateParams) -> None:
    """Refuse, before any model loads, an output folder the stage could not replace at the end
    (one no stage wrote, a read-only place, a file in the way); ``staged_folder`` checks each
    again when it writes, in the same order, so the messages are the same."""
    for folder, key in (
        (cfg.metrics_dir, "evaluate.metrics_dir"),
        (cfg.plots_dir, "evaluate.plots_dir"),
        (cfg.out_dir, "evaluate.out_dir"),
    ):
        atomic.check_replaceable(folder, key)


def _open_test_sets(params: Params, min_hr_side: int) -> list[TestSet]:
    """Every `evaluate.sets` entry, checked (pairs, sizes the metrics can score) up front."""
    for item in params.evaluate.sets:
        _require_prepared(item.name, item.path, params.data.prepared_dir)
    return [
        open_test_set(
            item.name,
            item.layout,
            item.path,
            params.data.scale,
            item.hr_dir,
            item.lr_dir,
            min_hr_side=min_hr_side,
            params_key=f"evaluate.sets.{index}",  # as params errors name list entries
        )
        for index, item in enumerate(params.evaluate.sets)
    ]


def _require_prepared(name: str, path: Path, prepared_dir: Path) -> None:
    """A set inside data.prepared_dir (the demo's val/) is prepare's output, not a download: say
    which stage makes it, rather than to download or unpack it."""
    if path.resolve().is_relative_to(prepared_dir.resolve()) and not path.exists():
        raise TestSetError(
            f"test set {name!r}: {path} does not exist yet; it is written by the prepare stage "
            f"(data.prepared_dir {prepared_dir}): {RUN_PREPARE_DATA_FIRST}"
        )


def _images_read(cfg: EvaluateParams, test_sets: list[TestSet]) -> dict[str, list[Path | None]]:
    """Per source, the image files the stage will read: the test sets and a folder band source
    (checked here, before any model runs)."""
    read_images: dict[str, list[Path | None]] = {
        f"test set {test_set.name}": [path for pair in test_set for path in (pair.hr, pair.lr)]
        for test_set in test_sets
    }
    if cfg.bands.enabled and cfg.bands.source != "cache":
        analysed = band_folder_pairs(cfg.bands)
        read_images["evaluate.bands.source"] = [path for pair in analysed for path in pair]
    return read_images


def _write_set_results(
    result: dict[str, Any], cfg: EvaluateParams, out_dir: Path, metrics_dir: Path
) -> None:
    """The set's full record (with the evaluate params) and its numbers-only DVC metrics file."""
    name = result["set"]
    result["params"] = section_dict(cfg)
    atomic.write_json(out_dir / f"{name}.json", result)
    # The DVC metrics file holds numbers only, so `dvc metrics show/diff` can compare it.
    numbers = {"images": result["images"], **result["metrics"]}
    atomic.write_json(metrics_dir / f"{name}.json", numbers)


def _note_absent_comparisons(cfg: EvaluateParams, test_sets: list[TestSet]) -> None:
    shown = {pair.stem for test_set in test_sets for pair in test_set.pairs}
    if absent := sorted(set(cfg.comparison.images) - shown):
        print(f"note: evaluate.comparison.images {absent} are in no test set; no figure made")


def _note_ignored_alpha(read_images: dict[str, list[Path | None]]) -> None:
    """One note naming the images whose alpha channel is dropped: only colour is compared."""
    named = []
    for source, paths in read_images.items():
        with_alpha = [str(p) for p in paths if p is not None and probe_image(p).has_alpha]
        if with_alpha:
            named.append(f"{source}: {abbreviated(with_alpha)}")
    if named:
        print(f"note: alpha channel ignored, only colour is compared, in {'; '.join(named)}")


def _print_summary(summary: dict[str, Any], skipped: dict[str, str]) -> None:
    for name, models in summary.items():
        print(f"[{name}]")
        width = max(map(len, models), default=0)
        for label, metrics in models.items():
            shown = "  ".join(f"{metric} {value['mean']:.4f}" for metric, value in metrics.items())
            print(f"  {label:{width}s}  {shown}")
    for metric, reason in skipped.items():  # asked for in evaluate.metrics, yet not scored
        print(f"note: metric {metric} skipped: {reason}")
