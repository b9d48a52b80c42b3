"""The training curves distill logs with dvclive: one TSV per metric under ``plots/metrics``.

distill truncates them when it resumes; report reads them for its figures.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dtkd_pipeline import atomic

__all__ = ["discard_unreadable_summary", "read_curves", "truncate_curves"]

SUMMARY_FILE = "metrics.json"  # dvclive's summary: the latest value of each metric


def _curve_files(dvclive_dir: Path) -> dict[str, Path]:
    """{"train/loss": <dvclive_dir>/plots/metrics/train/loss.tsv, ...}, sorted by name."""
    plots = dvclive_dir / "plots" / "metrics"
    return {
        path.relative_to(plots).with_suffix("").as_posix(): path
        for path in sorted(plots.rglob("*.tsv"))
    }


def read_curves(dvclive_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """{"train/loss": [(step, value), ...], ...} for every logged metric."""
    curves = {}
    for name, path in _curve_files(dvclive_dir).items():
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        curves[name] = [(float(row["step"]), float(row[path.stem])) for row in rows]
    return curves


def truncate_curves(dvclive_dir: Path, last_step: int) -> int:
    """Drop rows logged after `last_step`; returns how many.

    A killed run logs past its last checkpoint; the resumed run logs those steps again, so the
    curves would repeat them (21 22 23 21 22 ...) without this. A row a failed write (a full
    disk) cut short is dropped too.
    """
    dropped = 0
    for path in _curve_files(dvclive_dir).values():
        header, *rows = path.read_text().splitlines()
        columns = header.split("\t")
        step = columns.index("step")
        kept = [
            row
            for row in rows
            if _is_whole_row(row, len(columns)) and int(row.split("\t")[step]) <= last_step
        ]
        if len(kept) != len(rows):
            dropped += len(rows) - len(kept)
            atomic.write_text(path, "\n".join([header, *kept]) + "\n")
    return dropped


def _is_whole_row(row: str, n_columns: int) -> bool:
    fields = row.split("\t")
    return len(fields) == n_columns and all(fields)


def discard_unreadable_summary(dvclive_dir: Path) -> bool:
    """Delete dvclive's summary when a failed write cut it short; returns whether it did.

    dvclive rewrites it in place on every log, so a full disk can leave it empty or half
    written, and a resumed dvclive reads it first. The next log writes it again whole.
    """
    summary = dvclive_dir / SUMMARY_FILE
    try:
        json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except ValueError:  # not JSON, or not UTF-8
        summary.unlink()
        return True
    return False
