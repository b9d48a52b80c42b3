"""Band-wise teacher−student analysis: known answers, cache vs folder, dask vs a loop, report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dtkd_pipeline.cache import (
    KIND_PREPARED,
    KIND_TEACHER,
    PREPARED_FINGERPRINT,
    CacheError,
    StoreLayout,
    StoreLayoutError,
    TileStore,
    prepared_arrays,
    teacher_arrays,
)
from dtkd_pipeline.evaluate import bands
from dtkd_pipeline.evaluate.bands import (
    GROUPS,
    BandStats,
    analyze_cache,
    analyze_folder,
    subband_group,
    write_band_report,
)
from dtkd_pipeline.evaluate.figures import band_chart
from dtkd_pipeline.images import write_image
from dtkd_pipeline.losses.wavelet import dwt_subbands, group_weights, subband_names
from dtkd_pipeline.student import build_student
from tests.pipeline_helpers import bars_made

N_TILES, SHARD, TILE, SCALE = 10, 4, 16, 4  # 3 shards, the last holding 2 tiles
FAST = {"progress": False, "batch_size": 3}  # 3 does not divide a shard: partial batches too


class Nearest4(nn.Module):
    """x4 pixel replication: exact, so teacher tiles can be built from its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(SCALE, dim=-2).repeat_interleave(SCALE, dim=-1)


class Bicubic4(nn.Module):
    """x4 bicubic: overshoots [0, 1], so clamping and rounding matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=SCALE, mode="bicubic", align_corners=False)


def student_uint8(model: nn.Module, lr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = model(torch.from_numpy(lr).float() / 255)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def make_stores(root: Path, lr: np.ndarray, teacher: np.ndarray) -> tuple[Path, Path]:
    """A complete prepared store and a teacher cache computed "from" it (as stage one records)."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(lr)
    layout = StoreLayout(KIND_PREPARED, n, SHARD, prepared_arrays(TILE, SCALE))
    with TileStore.create(root / "train.zarr", layout, {"sources": ["x.png"]}) as prepared:
        for shard in range(prepared.n_shards):
            start, stop = layout.shard_range(shard)
            prepared.write_shard(
                shard,
                {
                    "lr": lr[start:stop],
                    "hr": lr[start:stop].repeat(SCALE, axis=2).repeat(SCALE, axis=3),
                    "tile_source": np.zeros(stop - start, np.int32),
                    "tile_offset": np.zeros((stop - start, 2), np.int32),
                },
            )
        provenance = {PREPARED_FINGERPRINT: prepared.fingerprint()}
    teacher_layout = StoreLayout(KIND_TEACHER, n, SHARD, teacher_arrays(TILE * SCALE))
    with TileStore.create(root / "teacher.zarr", teacher_layout, provenance) as cache:
        for shard in range(cache.n_shards):
            start, stop = teacher_layout.shard_range(shard)
            cache.write_shard(shard, {"teacher": teacher[start:stop]})
    return root / "train.zarr", root / "teacher.zarr"


def write_folder(root: Path, lr: np.ndarray, teacher: np.ndarray) -> Path:
    (root / "lr").mkdir(parents=True)
    (root / "teacher").mkdir()
    for index, (x, y) in enumerate(zip(lr, teacher, strict=True)):
        write_image(root / "lr" / f"tile{index:03d}.png", x.transpose(1, 2, 0))
        write_image(root / "teacher" / f"tile{index:03d}.png", y.transpose(1, 2, 0))
    return root


def reference_means(model: nn.Module, lr: np.ndarray, teacher: np.ndarray, levels: int) -> dict:
    """A plain in-memory loop, tile by tile, with PyWavelets as an independent DWT."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for x, y in zip(lr, teacher, strict=True):
        student = student_uint8(model, x[None])[0].astype(np.float64) / 255
        coefficients = pywt.wavedec2(student - y / 255.0, "haar", level=levels, axes=(-2, -1))
        bands = {f"LL{levels}": coefficients[0]}
        for index, details in enumerate(coefficients[1:]):
            for orientation, band in zip(("LH", "HL", "HH"), details, strict=True):
                bands[f"{orientation}{levels - index}"] = band
        for name, band in bands.items():
            sums[name] = sums.get(name, 0.0) + float(np.abs(band).sum())
            counts[name] = counts.get(name, 0) + band.size
    return {name: sums[name] / counts[name] for name in subband_names(levels)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Random LR tiles and unrelated random teacher tiles: every band has a non-trivial error."""
    root = tmp_path_factory.mktemp("bands")
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (N_TILES, 3, TILE, TILE), dtype=np.uint8)
    teacher = rng.integers(0, 256, (N_TILES, 3, TILE * SCALE, TILE * SCALE), dtype=np.uint8)
    prepared, cache = make_stores(root / "stores", lr, teacher)
    return {"lr": lr, "teacher": teacher, "prepared": prepared, "cache": cache, "root": root}


def test_groups_follow_the_loss_weights() -> None:
    for levels in range(1, 5):
        by_weight = {1.0: "LF", 2.0: "MF", 3.0: "HF"}
        weights = group_weights(levels, (1.0, 2.0, 3.0))
        assert {name: subband_group(name, levels) for name in weights} == {
            name: by_weight[w] for name, w in weights.items()
        }


def test_student_equal_to_teacher_gives_zero_everywhere(tmp_path: Path) -> None:
    lr = np.random.default_rng(1).integers(0, 256, (N_TILES, 3, TILE, TILE), dtype=np.uint8)
    model = Bicubic4()
    prepared, cache = make_stores(tmp_path, lr, student_uint8(model, lr))
    stats = analyze_cache(prepared, cache, model, **FAST)
    assert stats.n_images == N_TILES
    assert list(stats.subbands) == list(subband_names(2))
    assert all(value == 0.0 for value in stats.subbands.values())
    assert stats.groups == dict.fromkeys(GROUPS, 0.0)
    assert stats.groups_weighted == dict.fromkeys(GROUPS, 0.0)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_constant_offset_lands_in_ll_only_scaled_by_two_to_the_j(
    tmp_path: Path, levels: int
) -> None:
    rng = np.random.default_rng(2)
    lr = rng.integers(0, 200, (6, 3, TILE, TILE), dtype=np.uint8)
    model = Nearest4()
    offset = 10  # teacher = student + c, c = 10/255; no clipping since lr < 200
    prepared, cache = make_stores(tmp_path, lr, student_uint8(model, lr) + offset)
    stats = analyze_cache(prepared, cache, model, levels=levels, **FAST)

    c = offset / 255
    # The scaling as dwt_subbands itself defines it (orthonormal Haar: LL_J of a constant = c 2^J).
    constant = torch.full((1, 3, TILE * SCALE, TILE * SCALE), c, dtype=torch.float64)
    expected_ll = float(dwt_subbands(constant, levels, "haar")[f"LL{levels}"].abs().mean())
    assert expected_ll == pytest.approx(c * 2**levels, rel=1e-12)
    assert stats.subbands[f"LL{levels}"] == pytest.approx(expected_ll, rel=1e-12)
    for name, value in stats.subbands.items():
        if name != f"LL{levels}":
            assert value == pytest.approx(0.0, abs=1e-12), name
    assert stats.groups["LF"] == pytest.approx(c * 2**levels, rel=1e-12)
    assert stats.groups["MF"] == pytest.approx(0.0, abs=1e-12)
    if levels == 1:
        assert "HF" not in stats.groups  # no details finer than level J
    else:
        assert stats.groups["HF"] == pytest.approx(0.0, abs=1e-12)


def test_dask_result_equals_an_in_memory_loop(data: dict[str, Any]) -> None:
    model = Bicubic4()
    expected = reference_means(model, data["lr"], data["teacher"], levels=2)
    for scheduler in ("threads", "sync"):
        stats = analyze_cache(data["prepared"], data["cache"], model, scheduler=scheduler, **FAST)
        assert stats.n_images == N_TILES
        for name, value in expected.items():
            assert stats.subbands[name] == pytest.approx(value, rel=1e-6), (scheduler, name)
        assert min(stats.subbands.values()) > 0.01
        for group in GROUPS:
            members = [stats.subbands[n] for n in stats.subbands if subband_group(n, 2) == group]
            assert stats.groups[group] == pytest.approx(np.mean(members), rel=1e-12)
            # Haar on 64x64 tiles: a group's subbands have equal sizes, so both means agree.
            assert stats.groups_weighted[group] == pytest.approx(stats.groups[group], rel=1e-12)

    limited = analyze_cache(data["prepared"], data["cache"], model, max_tiles=6, **FAST)
    expected_6 = reference_means(model, data["lr"][:6], data["teacher"][:6], levels=2)
    assert limited.n_images == 6
    for name, value in expected_6.items():
        assert limited.subbands[name] == pytest.approx(value, rel=1e-6), name


def test_cache_and_folder_give_the_same_numbers(data: dict[str, Any]) -> None:
    folder = write_folder(data["root"] / "folder", data["lr"], data["teacher"])
    model = Bicubic4()
    from_cache = analyze_cache(data["prepared"], data["cache"], model, **FAST)
    from_folder = analyze_folder(folder, model, images_per_task=4, **FAST)
    assert from_folder.n_images == from_cache.n_images == N_TILES
    for name, value in from_cache.subbands.items():
        assert from_folder.subbands[name] == pytest.approx(value, rel=1e-12), name
    assert from_folder.groups == pytest.approx(from_cache.groups, rel=1e-12)
    assert "folder" in from_folder.source and "cache" in from_cache.source

    some = analyze_folder(folder, model, max_images=3, **FAST)
    expected = reference_means(model, data["lr"][:3], data["teacher"][:3], levels=2)
    assert some.n_images == 3
    assert some.subbands == pytest.approx(expected, rel=1e-6)


def test_the_bar_names_the_student_and_counts_tiles_or_images(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several students are analysed one after another: each bar says whose it is."""
    bars = bars_made(monkeypatch, bands)
    model = Bicubic4()
    analyze_cache(data["prepared"], data["cache"], model, max_tiles=6, batch_size=3, name="DTKD")
    folder = write_folder(data["root"] / "bar-folder", data["lr"], data["teacher"])
    analyze_folder(folder, model, images_per_task=4, batch_size=3)  # named by default
    made = [(bar.desc, bar.total, bar.unit, bar.made.n) for bar in bars]
    assert made == [("bands of DTKD", 6, "tile", 6), ("bands of Bicubic4", N_TILES, "img", N_TILES)]


def test_checkpoint_path_matches_the_module(data: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4")
    path = tmp_path / "student.pt"
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "arch": "swinir-tiny-x4", "iteration": 1}, path)
    model.train()
    by_module = analyze_cache(data["prepared"], data["cache"], model, **FAST)
    assert model.training  # the caller's mode is restored
    by_path = analyze_cache(data["prepared"], data["cache"], path, **FAST)
    assert by_path.subbands == pytest.approx(by_module.subbands, rel=1e-12)
    assert by_path.student == str(path)


def test_band_analysis_on_a_dask_scheduler_equals_the_local_one(
    data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    torch.manual_seed(1)
    model = build_student("swinir-tiny-x4")
    path = tmp_path / "student.pt"
    torch.save({"ema": model.state_dict(), "arch": "swinir-tiny-x4"}, path)
    local = analyze_cache(data["prepared"], data["cache"], model, **FAST)
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        by_module = analyze_cache(data["prepared"], data["cache"], model, scheduler=address, **FAST)
        bars = bars_made(monkeypatch, bands)
        by_path = analyze_folder(  # the worker loads the checkpoint itself
            write_folder(tmp_path / "folder", data["lr"], data["teacher"]),
            path,
            scheduler=address,
            images_per_task=4,
            batch_size=3,
            name="DTKD",
        )
    assert [(bar.desc, bar.made.n) for bar in bars] == [("bands of DTKD", N_TILES)]
    assert by_module.subbands == pytest.approx(local.subbands, rel=1e-12)
    assert by_path.subbands == pytest.approx(local.subbands, rel=1e-12)
    assert by_module.n_images == by_path.n_images == N_TILES


def test_write_band_report_writes_json_and_png(data: dict[str, Any], tmp_path: Path) -> None:
    stats = analyze_cache(
        data["prepared"], data["cache"], Bicubic4(), max_tiles=4, batch_size=8, progress=True
    )
    paths = write_band_report(stats, tmp_path / "report")
    assert set(paths) == {"json", "png"}
    payload = json.loads(paths["json"].read_text())
    assert list(payload["subbands"]) == list(subband_names(2))
    assert set(payload["groups"]) == set(GROUPS) == set(payload["groups_weighted"])
    assert payload["subband_groups"]["LL2"] == "LF" and payload["subband_groups"]["HH1"] == "HF"
    assert payload["levels"] == 2 and payload["wavelet"] == "haar" and payload["n_images"] == 4
    assert BandStats.from_json(payload) == stats
    with Image.open(paths["png"]) as image:
        image.load()
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["bands.json", "bands.png"]

    # Several students as grouped bars; plain dicts are accepted too.
    other = BandStats.from_json(payload | {"student": "DTKD student"})
    both = write_band_report({"L1 student": stats, "DTKD student": other}, tmp_path / "two")
    assert set(json.loads(both["json"].read_text())["students"]) == {"L1 student", "DTKD student"}
    chart = band_chart({"a": payload, "b": stats}, tmp_path / "dicts.png")
    with Image.open(chart) as image:
        assert image.format == "PNG"
    for bad in ({"subbands": None, "groups": {}}, {"subbands": {}, "groups": {}}):
        with pytest.raises(TypeError, match="'subbands' must be a non-empty mapping"):
            band_chart(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_missing_inputs_raise_errors_naming_the_path(data: dict[str, Any], tmp_path: Path) -> None:
    model = Nearest4()
    absent = tmp_path / "absent.zarr"
    with pytest.raises(FileNotFoundError, match=r"absent\.zarr"):
        analyze_cache(absent, data["cache"], model, **FAST)
    with pytest.raises(FileNotFoundError, match=r"absent\.zarr"):
        analyze_cache(data["prepared"], absent, model, **FAST)
    with pytest.raises(CacheError, match=r"teacher\.zarr"):  # stores given the wrong way round
        analyze_cache(data["cache"], data["prepared"], model, **FAST)
    with pytest.raises(FileNotFoundError, match=r"student\.pt"):
        analyze_cache(data["prepared"], data["cache"], tmp_path / "student.pt", **FAST)

    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="empty"):
        analyze_folder(empty, model, **FAST)
    (empty / "lr").mkdir(parents=True)
    (empty / "teacher").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image pairs.*empty"):
        analyze_folder(empty, model, **FAST)


def test_folder_image_too_small_for_the_depth_is_refused_before_the_student_loads(
    tmp_path: Path,
) -> None:
    """db2 (4 taps) on a 20x16 teacher image: pywt.dwt_max_level(16, "db2") = 2."""
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (1, 3, 4, 5), dtype=np.uint8)
    folder = write_folder(tmp_path / "small", lr, student_uint8(Nearest4(), lr))
    no_student = tmp_path / "student.pt"  # loading it would fail with another error
    message = r"tile000\.png is 20x16 px.*\(levels 3\): it allows at most 2 levels"
    with pytest.raises(ValueError, match=message):
        analyze_folder(folder, no_student, levels=3, wavelet="db2", **FAST)
    stats = analyze_folder(folder, Nearest4(), levels=2, wavelet="db2", **FAST)
    assert stats.n_images == 1 and stats.groups["LF"] == 0.0  # the deepest allowed level runs


def test_cached_tiles_too_small_for_the_depth_are_refused_before_the_student_loads(
    data: dict[str, Any], tmp_path: Path
) -> None:
    """The params check data.lr_tile, but the stores are what is analysed: db10 (20 taps) on the
    64-px HR tiles allows pywt.dwt_max_level(64, "db10") = 1 level."""
    no_student = tmp_path / "student.pt"  # loading it would fail with another error
    message = (
        rf"{re.escape(str(data['cache']))}: its 64x64-px teacher tiles are too small for a "
        r"2-level db10 DWT \(levels 2\): they allow at most 1 level"
    )
    with pytest.raises(StoreLayoutError, match=message):  # a CacheError: the CLI exits 1
        analyze_cache(data["prepared"], data["cache"], no_student, levels=2, wavelet="db10", **FAST)
    stats = analyze_cache(
        data["prepared"], data["cache"], Nearest4(), levels=1, wavelet="db10", **FAST
    )
    assert stats.n_images == N_TILES  # the deepest allowed level runs


def test_wrong_scale_is_reported(data: dict[str, Any]) -> None:
    class Nearest2(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

    with pytest.raises(ValueError, match="student output"):
        analyze_cache(data["prepared"], data["cache"], Nearest2(), scheduler="sync", **FAST)


def test_cli_analyzes_the_given_checkpoint_into_out_dir(
    data: dict[str, Any], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from dtkd_pipeline.cli import app

    folder = write_folder(tmp_path / "pairs", data["lr"][:3], data["teacher"][:3])
    model = build_student("swinir-tiny-x4")
    checkpoint = tmp_path / "mine.pt"
    torch.save({"ema": model.state_dict(), "arch": "swinir-tiny-x4"}, checkpoint)
    out = tmp_path / "bands-out"
    common = ["analyze-bands", "-S", f"evaluate.bands.source={folder}", "--out-dir", str(out)]
    runner = CliRunner()

    missing = runner.invoke(app, [*common, "--model", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert (
        missing.exit_code == 1 and "nope.pt" in missing.output and "Traceback" not in missing.output
    )
    assert not out.exists()

    result = runner.invoke(app, [*common, "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (stats,) = json.loads((out / "bands.json").read_text())["students"].values()
    reference = reference_means(model.eval(), data["lr"][:3], data["teacher"][:3], levels=2)
    assert stats["subbands"] == pytest.approx(reference, rel=1e-5)  # float32 DWT sums
    assert (out / "bands.png").is_file()
    assert f"chart -> {out / 'bands.png'}" in result.output

    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-b").mkdir()
    for run in ("run-a", "run-b"):  # two runs' student.pt: one series each, labelled by folder
        shutil.copy(checkpoint, tmp_path / run / "student.pt")
    both = [str(tmp_path / run / "student.pt") for run in ("run-a", "run-b")]
    result = runner.invoke(
        app, [*common, "--device", "cpu", "--model", both[0], "--model", both[1]]
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "bands.json").read_text())["students"]) == {
        "run-a/student",
        "run-b/student",
    }
    twice = runner.invoke(app, [*common, "--device", "cpu", "--model", both[0], "--model", both[0]])
    assert twice.exit_code == 1 and "share the label" in twice.output
    assert "Traceback" not in twice.output
