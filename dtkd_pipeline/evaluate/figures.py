"""Report figures, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

Every figure is rendered in memory and written atomically (`dtkd_pipeline.atomic.write_bytes`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtkd_pipeline import atomic

# ---------------------------------------------------------------------- band chart (Figs. 3–4)

GROUP_COLOURS = {"LF": "#4C72B0", "MF": "#DD8452", "HF": "#55A868"}
_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
_DPI = 150


def band_chart(stats: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Two-panel bar chart of mean |student − teacher|: per DWT subband (left), per group (right).

    `stats` is one `BandStats`, one mapping with "subbands" and "groups" dicts (e.g.
    `BandStats.to_json()`), or a mapping label -> either, drawn as grouped bars (one hatch per
    label, e.g. "L1 student" vs "DTKD student"). Subband bars are coloured by frequency group.
    Returns `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = _band_series(stats)
    keys = _shared_keys(series)
    n = len(series)
    figure = Figure(figsize=(4.0 + len(keys.subbands) * (1.0 + 0.3 * (n - 1)), 4.5))
    FigureCanvasAgg(figure)
    width_ratios = [len(keys.subbands), len(keys.groups) + 1]
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": width_ratios})
    _draw_bars(left, right, series, keys)
    _label_axes(left, right, keys, n)
    _add_legends(left, right, keys.groups, list(series))
    figure.suptitle(
        title
        or f"Teacher−student difference per DWT subband ({keys.wavelet}, J={keys.levels}; "
        "LF:MF:HF groups)"
    )
    figure.tight_layout()
    return _save_atomic(figure, Path(path))


@dataclass(frozen=True)
class _BandKeys:
    """What every series of a band chart shares: its subbands and groups, and how it was made."""

    subbands: list[str]
    groups: list[str]
    levels: int
    wavelet: str
    group_of: dict[str, str]  # subband -> frequency group, for its bar colour


def _shared_keys(series: dict[str, dict[str, Any]]) -> _BandKeys:
    """The first series' keys; every other series must have the same ones to share the axes."""
    first = next(iter(series.values()))
    names, groups = list(first["subbands"]), list(first["groups"])
    for label, entry in series.items():
        if list(entry["subbands"]) != names or list(entry["groups"]) != groups:
            raise ValueError(
                f"{label!r} has subbands {list(entry['subbands'])}, the first series has {names}: "
                "compare students measured with the same wavelet and levels"
            )
    levels = first["levels"]
    return _BandKeys(names, groups, levels, first["wavelet"], _subband_groups(names, levels))


def _draw_bars(left: Any, right: Any, series: dict[str, dict[str, Any]], keys: _BandKeys) -> None:
    """Subband bars on the left, group bars on the right: one offset and hatch per series."""
    n = len(series)
    width = 0.8 / n
    for index, (label, entry) in enumerate(series.items()):
        offset = (index - (n - 1) / 2) * width
        hatch = _HATCHES[index % len(_HATCHES)]
        for axis, names, values in (
            (left, keys.subbands, [entry["subbands"][k] for k in keys.subbands]),
            (right, keys.groups, [entry["groups"][k] for k in keys.groups]),
        ):
            colours = [GROUP_COLOURS.get(keys.group_of.get(k, k), "#888888") for k in names]
            bars = axis.bar(
                [i + offset for i in range(len(names))],
                values,
                width,
                color=colours,
                hatch=hatch,
                edgecolor="black",
                linewidth=0.5,
                label=label,
            )
            axis.bar_label(bars, fmt="%.3g", fontsize=7, padding=2, rotation=90 if n > 1 else 0)


def _label_axes(left: Any, right: Any, keys: _BandKeys, n_series: int) -> None:
    for axis, names, xlabel in (
        (left, keys.subbands, "DWT subband (coarsest first)"),
        (right, keys.groups, "frequency group"),
    ):
        axis.set_xticks(range(len(names)), names)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("mean |student − teacher|")
        axis.margins(y=0.25 if n_series > 1 else 0.15)
        axis.set_ylim(bottom=0)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    left.set_title("per subband")
    right.set_title("per group (mean of subband means)")


def _add_legends(left: Any, right: Any, groups: list[str], labels: list[str]) -> None:
    """Group colours on the left; the hatch of each series on the right when there are several."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=colour, edgecolor="black", label=group)
        for group, colour in GROUP_COLOURS.items()
        if group in groups
    ]
    left.legend(handles=handles, fontsize=8, loc="upper right")
    if len(labels) > 1:
        label_handles = [
            Patch(
                facecolor="white", edgecolor="black", hatch=_HATCHES[i % len(_HATCHES)], label=lbl
            )
            for i, lbl in enumerate(labels)
        ]
        right.legend(handles=label_handles, fontsize=8, loc="upper right")


def _band_series(stats: Any) -> dict[str, dict[str, Any]]:
    """Normalise the accepted inputs to {label: {"subbands", "groups", "levels", "wavelet"}}."""
    single = _as_band_entry(stats)
    if single is not None:
        label = str(single.pop("student", "") or "student")
        return {label: single}
    if not isinstance(stats, Mapping) or not stats:
        raise TypeError(
            "band_chart takes a BandStats, a mapping with 'subbands' and 'groups', or a non-empty "
            f"mapping of label -> those; got {type(stats).__name__}"
        )
    series = {}
    for label, value in stats.items():
        entry = _as_band_entry(value)
        if entry is None:
            raise TypeError(f"band_chart: {label!r} has no 'subbands' and 'groups'")
        series[str(label)] = entry
    return series


def _as_band_entry(value: Any) -> dict[str, Any] | None:
    if isinstance(value, Mapping):
        if "subbands" not in value or "groups" not in value:
            return None
        get = value.get
    elif hasattr(value, "subbands") and hasattr(value, "groups"):

        def get(key: str, default: Any = None) -> Any:
            return getattr(value, key, default)

    else:
        return None
    raw_subbands, raw_groups = get("subbands"), get("groups")
    if not (isinstance(raw_subbands, Mapping) and raw_subbands):
        raise TypeError("band_chart: 'subbands' must be a non-empty mapping of subband -> value")
    if not isinstance(raw_groups, Mapping):
        raise TypeError("band_chart: 'groups' must be a mapping of group -> value")
    subbands = {str(k): float(v) for k, v in raw_subbands.items()}
    levels = get("levels") or max(int(name[2:]) for name in subbands)
    return {
        "subbands": subbands,
        "groups": {str(k): float(v) for k, v in raw_groups.items()},
        "levels": int(levels),
        "wavelet": str(get("wavelet") or "haar"),
        "student": get("student", ""),
    }


def _subband_groups(names: list[str], levels: int) -> dict[str, str]:
    from dtkd_pipeline.evaluate.bands import subband_group

    return {name: subband_group(name, levels) for name in names}


# ---------------------------------------------------------------------- shared helpers


def _save_atomic(figure: Any, path: Path) -> Path:
    """Render `figure` as PNG in memory, then write it atomically (temporary file + rename)."""
    return atomic.write_bytes(path, png_bytes(figure))


def png_bytes(figure: Any) -> bytes:
    """`figure` rendered as PNG, in memory (for callers that write several files together)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


# ---------------------------------------------------------------------- comparison images


def detail_crop(hr: Any, size: int) -> tuple[int, int]:
    """(top, left) of the `size` px square of `hr` (1x3xHxW or 3xHxW) with the most detail.

    Detail = summed gradient magnitude of the luma, searched on a grid of quarter-crop steps, so
    the crop lands on texture and edges (where SR methods differ) rather than on flat sky.
    """
    import torch

    image = hr.reshape(-1, *hr.shape[-2:])[:3].float()
    height, width = image.shape[-2:]
    size = min(size, height, width)
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    grad = torch.zeros_like(luma)
    grad[:, 1:] += (luma[:, 1:] - luma[:, :-1]).abs()
    grad[1:, :] += (luma[1:, :] - luma[:-1, :]).abs()
    integral = torch.nn.functional.pad(grad.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    step = max(1, size // 4)
    best, where = -1.0, (0, 0)
    for top in [*range(0, height - size, step), height - size]:
        for left in [*range(0, width - size, step), width - size]:
            total = float(
                integral[top + size, left + size]
                - integral[top, left + size]
                - integral[top + size, left]
                + integral[top, left]
            )
            if total > best:
                best, where = total, (top, left)
    return where


def comparison_figure(
    panels: list[tuple[str, Any]],
    crop: tuple[int, int, int],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """One row of labelled crops, the same (top, left, size) region of every HR-sized image.

    `panels` are (label, image 1x3xHxW or 3xHxW in [0, 1]) in display order, e.g.
    LR-bicubic | L1 student | DTKD student | teacher | GT. Crops are shown pixel for pixel
    (nearest-neighbour), so SR artefacts are not smoothed away by the viewer.
    """
    top, left, size = crop
    crops = [
        (label, image.reshape(-1, *image.shape[-2:])[:3, top : top + size, left : left + size])
        for label, image in panels
    ]
    if title:
        title = f"{title}  (crop {size}x{size} at y={top}, x={left})"
    return image_grid([("", crops)], path, title=title)


def image_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, Any]]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Rows of labelled images (3xHxW or 1x3xHxW in [0, 1]), shown pixel for pixel.

    Each row is (row label, [(column label, image), ...]); a row label may be empty, and column
    labels are drawn above the first row. Images are
    drawn nearest-neighbour so SR artefacts are not smoothed away by the viewer.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(len(panels) for _, panels in rows)
    height = 2.4 * len(rows) + (0.4 if title else 0.2)
    figure = Figure(figsize=(2.4 * columns, height))
    FigureCanvasAgg(figure)
    for row, (row_label, panels) in enumerate(rows):
        for column, (label, image) in enumerate(panels):
            axis = figure.add_subplot(len(rows), columns, row * columns + column + 1)
            _show_pixels(axis, image)
            if row == 0:  # columns hold the same kind of image in every row
                axis.set_title(label, fontsize=10)
            if column == 0 and row_label:
                axis.set_ylabel(row_label, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save_atomic(figure, Path(path))


def _show_pixels(axis: Any, image: Any) -> None:
    """`image` (its first three channels, clamped to [0, 1]) pixel for pixel on a bare axis."""
    chw = image.reshape(-1, *image.shape[-2:])[:3].float().clamp(0, 1)
    axis.imshow(chw.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


# ---------------------------------------------------------------------- training curves


def training_curves(series: Mapping[str, list[tuple[float, float]]], path: str | Path) -> Path:
    """Training curves from dvclive (see `curve_figure`) as a PNG at `path`."""
    return _save_atomic(curve_figure(series), Path(path))


def curve_figure(series: Mapping[str, list[tuple[float, float]]]) -> Any:
    """One panel per metric family, three panels to a row, each titled and with its unit.

    `series` maps names such as "train/loss" or "val/psnr_y" to (step, value) points. Losses
    share a log-scaled panel; the KD weight lambda, learning rate and validation metrics get
    their own panels because their scales differ. Panels run losses, lambda, learning rate,
    validation, then speed (perf/*): what a reader looks for first comes first.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = curve_panels(series)
    columns = min(_CURVE_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    FigureCanvasAgg(figure)
    for index, (panel, names) in enumerate(panels.items()):
        axis = figure.add_subplot(rows, columns, index + 1)
        for name in names:
            points = series[name]
            label = _LOSS_LEGEND.get(name, name)
            axis.plot([p[0] for p in points], [p[1] for p in points], label=label, marker=".")
        title, unit = _CURVE_LABELS.get(panel, (panel, panel))
        if panel == "training losses" and all(p[1] > 0 for n in names for p in series[n]):
            axis.set_yscale("log")
            unit += " (log scale)"
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("iteration")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        if len(names) > 1 or panel == "training losses":
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


# Panel -> (title, y-axis label): what each curve is and its unit.
_CURVE_LABELS = {
    "training losses": ("training losses", "loss"),
    "train/lambda": ("KD weight λ (its schedule)", "λ"),
    "train/lr": ("learning rate", "learning rate"),
    "val/psnr_y": ("validation PSNR-Y (EMA weights)", "PSNR-Y (dB)"),
    "val/ssim_y": ("validation SSIM-Y (EMA weights)", "SSIM-Y"),
    "perf/samples_per_s": ("training speed", "samples/s"),
    "perf/loader_wait": ("time spent waiting for data", "fraction of wall time"),
}
# The loss curves as the objective adds them up: total = L1 + λ·KD.
_LOSS_LEGEND = {
    "train/loss": "total = L1 + λ·KD",
    "train/task_l1": "L1 to HR (task)",
    "train/kd": "KD to teacher (before λ)",
}


def curve_panels(names: Iterable[str]) -> dict[str, list[str]]:
    """{panel title: the series drawn in it}, in reading order (see `training_curves`)."""
    panels: dict[str, list[str]] = {}
    for name in sorted(names, key=_curve_order):
        if name.startswith("train/") and name.split("/")[-1] in _LOSS_CURVES:
            panels.setdefault("training losses", []).append(name)
        else:
            panels.setdefault(name, []).append(name)
    return panels


_CURVE_COLUMNS = 3
_LOSS_CURVES = ("loss", "task_l1", "kd")
_CURVE_GROUPS = ("train/loss", "train/task_l1", "train/kd", "train/lambda", "train/lr", "val/")


def _curve_order(name: str) -> tuple[int, str]:
    """Losses, lambda, learning rate, validation metrics, then anything else (speed)."""
    rank = next(
        (i for i, prefix in enumerate(_CURVE_GROUPS) if name.startswith(prefix)),
        len(_CURVE_GROUPS),
    )
    return rank, name


# ---------------------------------------------------------------------- efficiency chart


def efficiency_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Latency and throughput against batch size, one line per model and precision.

    `rows` are `benchmark_models` rows. Left: median time of one batch (ms); right: images/s.
    Both axes are log-scaled, since batch sizes double and the teacher is orders of magnitude
    slower than a student. Settings that were skipped (e.g. out of memory) have no point.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.2))
    FigureCanvasAgg(figure)
    latency, throughput = figure.subplots(1, 2)
    lines = _timed_series(rows)
    batches = sorted({batch for points in lines.values() for batch, _, _ in points})
    for label, points in lines.items():
        xs = [batch for batch, _, _ in points]
        latency.plot(xs, [ms for _, ms, _ in points], marker="o", label=label)
        throughput.plot(xs, [per_s for _, _, per_s in points], marker="o", label=label)
    _speed_axis(latency, "latency of one batch (median)", "ms per batch", batches)
    _speed_axis(throughput, "throughput", "images/s", batches)
    devices = ", ".join(sorted({str(row["device"]) for row in rows}))
    sizes = ", ".join(sorted({str(row["input_size"]) for row in rows}))
    figure.suptitle(f"Speed on {devices} (LR input {sizes})")
    figure.tight_layout()
    return figure


def _speed_axis(axis: Any, title: str, unit: str, batches: list[int]) -> None:
    """Title and log-log axes labelled with the batch sizes timed; a note where none was."""
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("batch size")
    axis.grid(alpha=0.3, which="both")
    if not batches:
        axis.set_xticks([])
        axis.set_yticks([])
        note = "no setting was timed\n(efficiency.md says why)"
        axis.text(0.5, 0.5, note, ha="center", transform=axis.transAxes)
        return
    axis.set_ylabel(f"{unit} (log scale)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(batch) for batch in batches])  # not 2^n
    axis.minorticks_off()
    axis.set_yscale("log")
    axis.legend(fontsize=8)


def _timed_series(
    rows: Sequence[Mapping[str, Any]],
) -> dict[str, list[tuple[int, float, float]]]:
    """Label "model, precision" -> (batch, median ms, images/s) of each timed setting, by batch."""
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        if row["skipped"] is None and row["median_ms"] is not None:
            label = f"{row['model']}, {row['precision']}"
            lines.setdefault(label, []).append(
                (int(row["batch"]), float(row["median_ms"]), float(row["images_per_s"]))
            )
    return {label: sorted(points) for label, points in lines.items()}
