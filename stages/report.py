"""Report stage: one markdown page (``report.out_dir``/README.md) that puts the run together.

Sections: the run (from its checkpoint), metrics per test set with deltas against
``report.baseline`` (and the paper's reported deltas beside them when ``report.paper_deltas`` gives
them), the efficiency table, the band chart, training curves, comparison images and params.yaml as
it is now. Figures are copied next to the page and linked relatively, so the folder renders on any
git host or file browser on its own.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from dtkd_pipeline import __version__
from dtkd_pipeline.atomic import staged_folder
from dtkd_pipeline.config import Params, section_dict
from dtkd_pipeline.evaluate.bands import JSON_NAME as BANDS_JSON
from dtkd_pipeline.evaluate.bands import PNG_NAME as BANDS_PNG
from dtkd_pipeline.evaluate.figures import training_curves
from dtkd_pipeline.evaluate.metrics import METRICS
from dtkd_pipeline.stage_files import (
    COMPARISONS_DIR,
    DVCLIVE_DIR,
    EFFICIENCY_MD,
    EFFICIENCY_PNG,
    STUDENT_FILE,
)
from dtkd_pipeline.student.weights import read_checkpoint
from dtkd_pipeline.train.curves import read_curves

REPORT_FILE = "README.md"
FIGURES_DIR = "figures"
TEACHER_PREVIEW_PNG = "teacher_preview.png"
LOWER_IS_BETTER = {name for name, spec in METRICS.items() if spec.lower_is_better}


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the evaluate stage first ({what})")
    return json.loads(path.read_text())


def _fmt(stats: dict[str, float]) -> str:
    mean, std = stats["mean"], stats["std"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if stats.get("runs", 1) > 1 else f"{mean:.4f}"


def metrics_section(result: dict[str, Any], baseline: str | None, paper: dict[str, float]) -> str:
    """Markdown tables for one test set: absolute values, then deltas against the baseline."""
    models = result["metrics"]
    metric_names = sorted({name for stats in models.values() for name in stats})
    count = f"{result['images']} image{'s' if result['images'] != 1 else ''}"
    lines = [f"### {result['set']} ({count}, layout `{result['layout']}`)", ""]
    lines += _absolute_table(models, metric_names)
    if baseline is not None and baseline in models:
        lines += _delta_table(models, baseline, metric_names, paper)
    elif baseline is not None:
        lines += [
            "",
            f"*No deltas: the baseline **{baseline}** has no results in this set; enable it "
            f"in `evaluate.models` and rerun `dtkd-pipeline evaluate`.*",
        ]
    if result.get("skipped_metrics"):
        lines += ["", "Skipped metrics:"]
        lines += [f"- `{name}`: {reason}" for name, reason in result["skipped_metrics"].items()]
    return "\n".join(lines)


def _table_head(metric_names: list[str]) -> list[str]:
    """The header row and the rule under it, shared by the absolute and the delta table."""
    return ["| model | " + " | ".join(metric_names) + " |", "|---" * (len(metric_names) + 1) + "|"]


def _absolute_table(models: dict[str, Any], metric_names: list[str]) -> list[str]:
    """One row per model: mean (± std over runs) of each metric, – where it has none."""
    lines = _table_head(metric_names)
    for label, stats in models.items():
        cells = [_fmt(stats[m]) if m in stats else "–" for m in metric_names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _delta_table(
    models: dict[str, Any], baseline: str, metric_names: list[str], paper: dict[str, float]
) -> list[str]:
    """Each other model's mean minus the baseline's, the paper's deltas, and which metrics fall."""
    lines = ["", f"Delta against **{baseline}** (positive = higher value):", ""]
    lines += _table_head(metric_names)
    base = models[baseline]
    for label, stats in models.items():
        if label == baseline:
            continue
        cells = [_delta(stats, base, metric) for metric in metric_names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if paper:
        cells = [f"{paper[m]:+.4f}" if m in paper else "–" for m in metric_names]
        lines.append("| *paper (reported)* | " + " | ".join(cells) + " |")
    lower = sorted(LOWER_IS_BETTER & set(metric_names))
    if lower:
        lines.append(f"\nLower is better for {', '.join(lower)}.")
    return lines


def _delta(stats: dict[str, Any], base: dict[str, Any], metric: str) -> str:
    if metric in stats and metric in base:
        return f"{stats[metric]['mean'] - base[metric]['mean']:+.4f}"
    return "–"


def bands_table(payload: dict[str, Any]) -> str:
    """Per-group mean |teacher - student| (LF/MF/HF) for each student, as a markdown table."""
    students = payload.get("students", {"student": payload})
    groups = [g for g in ("LF", "MF", "HF") if any(g in s["groups"] for s in students.values())]
    lines = ["| student | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for label, stats in students.items():
        cells = [f"{stats['groups'][g]:.5f}" if g in stats["groups"] else "–" for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(students.values()))
    lines.append(
        f"\nMean absolute difference of the {first['wavelet']} J={first['levels']} subbands over "
        f"{first['n_images']} images ({first['source']}); the group with the largest value is "
        "where the student is furthest from the teacher."
    )
    return "\n".join(lines)


def _copy_figures(source: Path, target: Path) -> list[Path]:
    if not source.is_dir():
        return []
    copied = []
    for path in sorted(source.rglob("*.png")):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        copied.append(dest)
    return copied


def _provenance(student_path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        "student": str(student_path),
        "arch": checkpoint.get("arch"),
        "iteration": checkpoint.get("iteration"),
        "best_val_psnr_y": checkpoint.get("best_psnr"),
        **checkpoint.get("provenance", {}),
    }


def build_report(params: Params) -> str:
    """Write the report folder; returns the markdown text."""
    with staged_folder(params.report.out_dir, "report.out_dir") as staging:
        text = _write_report(params, staging)
    return text


def _missing(what: str, path: Path, how: str) -> list[str]:
    """A section's place-holder: which file is missing and what makes it."""
    return [f"*No {what}: `{path}` is missing; {how}.*"]


def _run_summary(params: Params, checkpoint: dict[str, Any] | None) -> str:
    """The trained run as its checkpoint records it (params.yaml may have changed since)."""
    cache = (checkpoint or {}).get("provenance", {}).get("teacher_cache") or {}
    version = cache.get("teacher_version", params.teacher.version)
    teacher = f"ResShift {version}, {cache.get('steps', params.teacher.steps)} steps"
    if checkpoint is None:
        return (
            f"Teacher: {teacher}. No student checkpoint at "
            f"`{params.distill.out_dir / STUDENT_FILE}`: run `dtkd-pipeline distill`."
        )
    trained = checkpoint.get("params") or section_dict(params.distill)
    kd = trained["kd"]
    weights = kd["weights"]
    return (
        f"Teacher: {teacher}; student: {checkpoint.get('arch', trained['student'])}; KD: "
        f"{kd['kind']} (J={kd['levels']}, {kd['wavelet']}, LF:MF:HF = {weights['lf']:g}:"
        f"{weights['mf']:g}:{weights['hf']:g}, λ {kd['schedule']} to {kd['final_weight']:g}), "
        f"{checkpoint.get('iteration', '?')} of {trained['iterations']} iterations (as the "
        "student checkpoint records them, with the teacher cache it was trained on)."
    )


def _write_report(params: Params, staging: Path) -> str:
    figures = staging / FIGURES_DIR
    figures.mkdir(parents=True)
    student_path = params.distill.out_dir / STUDENT_FILE
    checkpoint = read_checkpoint(student_path) if student_path.is_file() else None
    parts = _title_lines(params, checkpoint)
    parts += _heading("Metrics") + _metrics_lines(params, staging)
    parts += _heading("Efficiency") + _efficiency_lines(params, figures)
    parts += _heading("Teacher–student difference per DWT subband") + _bands_lines(params, figures)
    parts += _heading("Training curves") + _curves_lines(params, figures)
    parts += _heading("Cached teacher tiles") + _teacher_preview_lines(params, figures)
    comparisons = _comparison_lines(params, staging)
    if comparisons:
        parts += _heading("Comparisons") + comparisons
    parts += _heading("Provenance") + _provenance_lines(student_path, checkpoint)
    parts += _params_snapshot_lines(params)
    text = "\n".join(parts)
    (staging / REPORT_FILE).write_text(text)
    return text


def _heading(title: str) -> list[str]:
    return ["", f"## {title}", ""]


def _title_lines(params: Params, checkpoint: dict[str, Any] | None) -> list[str]:
    """Title, where the numbers come from, the run summary and a random-teacher warning."""
    lines = [
        "# DTKD run report",
        "",
        f"Generated by dtkd-pipeline {__version__} from `{params.evaluate.out_dir}` and "
        f"`{params.distill.out_dir}`. {_run_summary(params, checkpoint)}",
    ]
    if params.teacher.random_weights:
        lines += [
            "",
            "> **The teacher had random weights** (a test or speed run): the numbers "
            "below say nothing about quality.",
        ]
    return lines


def _metrics_lines(params: Params, staging: Path) -> list[str]:
    """One metrics section per test set; per-image CSVs are copied beside the page."""
    metrics_dir = params.evaluate.out_dir
    lines: list[str] = []
    for item in params.evaluate.sets:
        result = _read_json(metrics_dir / f"{item.name}.json", f"results of set {item.name}")
        paper = params.report.paper_deltas.get(item.name, {})
        lines += [metrics_section(result, params.report.baseline, paper), ""]
        per_image = metrics_dir / f"{item.name}.csv"
        if per_image.is_file():  # copied, so the report folder stands on its own
            shutil.copy2(per_image, staging / per_image.name)
            lines += [f"Per-image values: [{per_image.name}]({per_image.name}).", ""]
    if not params.report.paper_deltas:
        lines.append(
            "The paper's reported deltas are not shown: set `report.paper_deltas` to print them "
            "beside these."
        )
    return lines


def _efficiency_lines(params: Params, figures: Path) -> list[str]:
    """The efficiency table, and its chart (copied into ``figures``) where evaluate drew one."""
    efficiency = params.evaluate.out_dir / EFFICIENCY_MD
    if efficiency.is_file():
        chart = params.evaluate.out_dir / EFFICIENCY_PNG
        if not chart.is_file():  # written by a version before the chart
            return [efficiency.read_text().strip()]
        shutil.copy2(chart, figures / EFFICIENCY_PNG)
        picture = f"![latency and throughput against batch size]({FIGURES_DIR}/{EFFICIENCY_PNG})"
        return [efficiency.read_text().strip(), "", picture]
    if not params.evaluate.efficiency.enabled:
        return ["*Not measured: `evaluate.efficiency.enabled` is false.*"]
    return _missing("efficiency table", efficiency, "run `dtkd-pipeline evaluate`")


def _bands_lines(params: Params, figures: Path) -> list[str]:
    """The band chart (copied into ``figures``) and its table; both files or neither."""
    band_json = params.evaluate.out_dir / BANDS_JSON
    band_png = params.evaluate.plots_dir / BANDS_PNG
    if band_json.is_file() and band_png.is_file():
        shutil.copy2(band_png, figures / BANDS_PNG)
        chart = [f"![band analysis]({FIGURES_DIR}/{BANDS_PNG})", ""]
        return [*chart, bands_table(json.loads(band_json.read_text()))]
    if not params.evaluate.bands.enabled:
        return ["*Not analysed: `evaluate.bands.enabled` is false.*"]
    absent = band_json if not band_json.is_file() else band_png
    return _missing("band analysis", absent, "run `dtkd-pipeline evaluate`")


def _curves_lines(params: Params, figures: Path) -> list[str]:
    """The training curves distill logged, drawn into ``figures``."""
    dvclive = params.distill.out_dir / DVCLIVE_DIR
    series = read_curves(dvclive)
    if not series:
        return _missing("training curves", dvclive, "run `dtkd-pipeline distill`")
    curves = training_curves(series, figures / "training.png")
    return [f"![training curves]({FIGURES_DIR}/{curves.name})"]


def _teacher_preview_lines(params: Params, figures: Path) -> list[str]:
    preview = params.teacher.preview
    if not preview.is_file():
        return _missing("teacher preview", preview, "run `dtkd-pipeline cache-teacher`")
    shutil.copy2(preview, figures / TEACHER_PREVIEW_PNG)
    return [
        "LR (bicubic) | teacher | HR of a few training tiles, as distill reads them.",
        "",
        f"![teacher cache preview]({FIGURES_DIR}/{TEACHER_PREVIEW_PNG})",
    ]


def _comparison_lines(params: Params, staging: Path) -> list[str]:
    """Each comparison image evaluate drew, copied beside the page; none gives no lines."""
    comparisons = _copy_figures(
        params.evaluate.plots_dir / COMPARISONS_DIR, staging / FIGURES_DIR / COMPARISONS_DIR
    )
    lines: list[str] = []
    for path in comparisons:
        rel = path.relative_to(staging).as_posix()
        lines += [f"**{path.parent.name} / {path.stem}**", "", f"![{path.stem}]({rel})", ""]
    return lines


def _provenance_lines(student_path: Path, checkpoint: dict[str, Any] | None) -> list[str]:
    if checkpoint is None:
        return _missing("student checkpoint", student_path, "run `dtkd-pipeline distill`")
    provenance = _provenance(student_path, checkpoint)
    return ["```yaml", yaml.safe_dump(provenance, sort_keys=True).strip(), "```"]


def _params_snapshot_lines(params: Params) -> list[str]:
    """params.yaml as it is now, folded away below the provenance."""
    # The run summary above comes from the checkpoint; these may have changed since the stages ran
    # (an -S override, an edit without `dvc repro`), so they are labelled for what they are.
    params_dump = {
        name: section_dict(getattr(params, name))
        for name in ("data", "teacher", "distill", "evaluate", "report")
    }
    return [
        "",
        "<details><summary>params.yaml when this report was written</summary>",
        "",
        "```yaml",
        yaml.safe_dump(params_dump, sort_keys=False).strip(),
        "```",
        "",
        "</details>",
        "",
    ]


def run(params: Params) -> Path:
    build_report(params)
    path = params.report.out_dir / REPORT_FILE
    print(f"report -> {path}")
    return path
