"""Upscaling with the student: seam-free tiling, file I/O (16-bit, alpha, folders), ONNX export.

Everything runs the tiny student (`swinir-tiny-x4`: window 4, two RSTBs of two layers) with
random weights from a fixed seed, on the CPU.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtkd_pipeline import upscale
from dtkd_pipeline.devices import DeviceError
from dtkd_pipeline.images import ImageReadError, read_image, write_image
from dtkd_pipeline.resize import imresize
from dtkd_pipeline.skipped import SHOWN_SKIPS, SKIPPED_LIST
from dtkd_pipeline.student import StudentWeightsError, build_student
from dtkd_pipeline.upscale import (
    load_upscaler,
    require_model_file,
    tile_layout,
    upscale_paths,
    upscale_tensor,
)
from tests.pipeline_helpers import bars_under_tqdm_disable, image_write_killed_midway

ARCH = "swinir-tiny-x4"
SCALE = 4
# Measured: with window-aligned tiles, the tiny student's tiled output equals the untiled one
# (max |Δ| ≈ 5e-7, float rounding) at LR pixels >= 8 px from every interior tile edge; at 4 px
# it is still ~4e-3 off. 8 LR px is its reach (the receptive field of 4 Swin layers and 5 convs).
REACH = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to gain from threads; with other jobs on the machine
    two spinning OpenMP threads made this file ~4x slower (measured 7 s vs 28 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_student(ARCH).eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _tiny_model()


@pytest.fixture(scope="module")
def checkpoint(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project-style student.pt; "model" holds other weights so EMA preference is visible."""
    path = tmp_path_factory.mktemp("models") / "student.pt"
    other = _tiny_model(seed=1).state_dict()
    torch.save({"model": other, "ema": model.state_dict(), "arch": ARCH, "iteration": 0}, path)
    return path


def _smooth_image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    """1×3×h×w in [0, 1]: a bicubic-upsampled coarse field plus some fine noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 4), max(2, width // 4), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.rand(1, 3, height, width, generator=generator)
    return (0.7 * smooth + 0.3 * noise).clamp(0, 1)


def _seam_distance(layout, height: int, width: int) -> np.ndarray:
    """HR map: LR-pixel distance of each HR pixel centre to the nearest interior tile edge."""

    def axis(length: int, starts: list[int], tile: int) -> np.ndarray:
        edges = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < length}
        centres = (np.arange(length * SCALE) + 0.5) / SCALE
        if not edges:
            return np.full(centres.shape, np.inf)
        return np.abs(centres[:, None] - np.array(sorted(edges))[None, :]).min(axis=1)

    rows = axis(height, layout.ys, layout.tile_h)
    cols = axis(width, layout.xs, layout.tile_w)
    return np.minimum(rows[:, None], cols[None, :])


def _column_jump_ratio(tiled: torch.Tensor, untiled: torch.Tensor) -> torch.Tensor:
    """Per HR column boundary: mean |horizontal step of (tiled - untiled)| / mean |step of untiled|.

    A seam is a step in the error: where two tiles meet without blending the error jumps by as
    much as the image's own neighbouring-pixel differences (ratio ≈ 1); a smooth blend keeps it
    far below.
    """
    error = tiled - untiled
    error_step = (error[..., 1:] - error[..., :-1]).abs().mean(dim=(0, 1, 2))
    image_step = (untiled[..., 1:] - untiled[..., :-1]).abs().mean(dim=(0, 1, 2))
    return error_step / image_step


# ---------------------------------------------------------------------------------- tiling


def test_tiled_equals_untiled_away_from_seams_and_has_no_seams(model: torch.nn.Module) -> None:
    height, width, tile, overlap = 48, 96, 32, 16
    lr = _smooth_image(height, width)
    untiled = upscale_tensor(model, lr, tile=0)
    tiled = upscale_tensor(model, lr, tile=tile, overlap=overlap, batch_size=3)
    assert tiled.shape == untiled.shape == (1, 3, height * SCALE, width * SCALE)

    layout = tile_layout(height, width, tile, overlap, window=model.window_size)
    assert layout.count > 4  # really tiled, in both directions
    assert len(layout.ys) > 1 and len(layout.xs) > 1
    difference = (tiled - untiled).abs().amax(dim=(0, 1)).numpy()
    distance = _seam_distance(layout, height, width)
    interior, seams = distance >= REACH, distance < REACH
    assert interior.mean() > 0.03 and seams.any()
    # Away from seams: the same numbers up to float rounding (measured 4.8e-7).
    assert difference[interior].max() < 1e-5
    # In the seam bands the tiles lack context; the blend keeps the tiled output close to the
    # untiled one. Measured max 0.026 with these random weights (whose output is very noisy:
    # mean |neighbour difference| 0.28); bound 0.05 leaves a ~2x margin.
    assert difference[seams].max() < 0.05
    # No visible seam at the tile edges: the mean |horizontal gradient| across each seam column
    # is what the untiled image has there (measured ratios 0.999-1.000).
    edges = sorted({x for x in layout.xs if x > 0} | {x + tile for x in layout.xs[:-1]})
    for edge in edges:
        column = edge * SCALE
        tiled_step = (tiled[..., column] - tiled[..., column - 1]).abs().mean()
        untiled_step = (untiled[..., column] - untiled[..., column - 1]).abs().mean()
        assert tiled_step / untiled_step < 1.5, f"seam at LR column {edge}"
    # Stronger: the error never steps between neighbouring columns by more than a fraction of
    # the image's own steps (measured max 0.018 over all columns; hard tile seams give ~1).
    assert _column_jump_ratio(tiled, untiled).max() < 0.2


def test_seam_check_detects_unblended_tiles(model: torch.nn.Module) -> None:
    """Negative control: tiles without overlap (no blending) fail the seam metric above."""
    height, width = 48, 96
    lr = _smooth_image(height, width)
    untiled = upscale_tensor(model, lr, tile=0)
    hard = upscale_tensor(model, lr, tile=24, overlap=0, batch_size=8)
    assert _column_jump_ratio(hard, untiled).max() > 0.5  # measured ~1.0


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(20, 27, 32, 8), (3, 5, 16, 4), (9, 45, 12, 6), (37, 21, 10, 3)],
)
def test_any_image_size_and_tile_gives_a_bounded_seam_free_result(
    model: torch.nn.Module, height: int, width: int, tile: int, overlap: int
) -> None:
    """Images smaller than a tile (or than a window), odd sizes, tiles not window multiples."""
    lr = _smooth_image(height, width, seed=height)
    untiled = upscale_tensor(model, lr, tile=0)
    tiled = upscale_tensor(model, lr, tile=tile, overlap=overlap, batch_size=2)
    assert tiled.shape == (1, 3, height * SCALE, width * SCALE)
    assert torch.isfinite(tiled).all() and tiled.min() >= 0 and tiled.max() <= 1
    if height <= tile and width <= tile:  # runs whole: the same computation
        torch.testing.assert_close(tiled, untiled, rtol=0, atol=0)
    else:
        # Small tiles with small overlaps: most pixels lie near a seam. Measured mean |Δ| 0.008
        # and 0.017 for the two tiled cases.
        assert (tiled - untiled).abs().mean() < 0.05


def test_tile_layout_covers_with_aligned_overlapping_tiles() -> None:
    for height, width, tile, overlap, window in [
        (1000, 700, 256, 32, 8),
        (250, 64, 64, 0, 8),
        (33, 9, 16, 8, 4),
        (37, 37, 10, 3, 4),
    ]:
        layout = tile_layout(height, width, tile, overlap, window)
        for length, starts, size, padded in (
            (height, layout.ys, layout.tile_h, layout.padded_h),
            (width, layout.xs, layout.tile_w, layout.padded_w),
        ):
            assert starts[0] == 0 and starts[-1] + size == padded >= length
            assert padded - length < window  # only SwinIR's own padding to a window multiple
            assert all(s % window == 0 for s in starts)
            gaps = np.diff(starts)
            assert (gaps > 0).all() and (size - gaps >= overlap).all()
    assert tile_layout(30, 40, 0, 8).count == 1
    with pytest.raises(ValueError, match="overlap"):
        tile_layout(64, 64, 16, 16)


def test_reduced_precision_on_cpu_is_a_clear_error(
    model: torch.nn.Module, checkpoint: Path
) -> None:
    lr = _smooth_image(8, 8)
    for precision in ("bf16", "fp16"):
        with pytest.raises(DeviceError, match=rf"--precision={precision} needs a CUDA device"):
            upscale_tensor(model, lr, tile=0, precision=precision, device="cpu")
        with pytest.raises(ValueError, match="precision"):
            load_upscaler(checkpoint, "cpu", precision)
    with pytest.raises(ValueError, match="--precision must be one of"):
        upscale_tensor(model, lr, tile=0, precision="int8", device="cpu")


# ------------------------------------------------------------------------------ compilation


def test_compiled_upscale_fills_the_last_batch_so_every_batch_has_one_shape(
    model: torch.nn.Module, record_compiled_calls: Callable[[str], list[tuple]]
) -> None:
    """A new batch shape would compile a new graph; the fill tiles' outputs must be dropped."""
    shapes = record_compiled_calls("dtkd_pipeline.upscale")
    lr = _smooth_image(40, 56)
    layout = tile_layout(40, 56, tile=16, overlap=4, window=4)
    assert layout.count % 4 != 0  # a ragged last batch
    compiled = upscale_tensor(
        model, lr, tile=16, overlap=4, batch_size=4, compile_mode="reduce-overhead"
    )
    assert set(shapes) == {(4, 3, 16, 16)} and len(shapes) == math.ceil(layout.count / 4)
    eager = upscale_tensor(model, lr, tile=16, overlap=4, batch_size=4)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)


def test_unknown_compile_mode_is_a_clear_error(model: torch.nn.Module, checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="compile mode must be one of"):
        upscale_tensor(model, _smooth_image(8, 8), tile=0, compile_mode="fast")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        load_upscaler(checkpoint, "cpu", compile_mode="fast")


@pytest.mark.slow
def test_torch_compiled_upscale_matches_eager(checkpoint: Path, tmp_path: Path) -> None:
    """The real torch.compile (inductor on the CPU, ~1 min) through the file-level API."""
    source = tmp_path / "in.png"
    write_image(source, _smooth_image(40, 56)[0].permute(1, 2, 0).numpy())
    eager_out, compiled_out = tmp_path / "eager.png", tmp_path / "compiled.png"
    common = {"model_path": checkpoint, "tile": 16, "overlap": 4, "batch_size": 4, "device": "cpu"}
    upscale_paths(source, eager_out, **common)
    upscale_paths(source, compiled_out, **common, compile_mode="default")
    eager, compiled = read_image(eager_out).rgb, read_image(compiled_out).rgb
    assert np.abs(eager - compiled).max() <= 1 / 255  # summation order may move one level


# ---------------------------------------------------------------------------------- loading


def test_load_upscaler_prefers_ema_and_reads_arch(model: torch.nn.Module, checkpoint: Path) -> None:
    upscaler = load_upscaler(checkpoint, "cpu")
    assert upscaler.arch == ARCH and upscaler.scale == SCALE
    assert upscaler.source["key"] == "ema" and upscaler.source["iteration"] == 0
    lr = _smooth_image(12, 16)
    torch.testing.assert_close(upscaler(lr, tile=0), upscale_tensor(model, lr, tile=0))


def test_load_upscaler_official_file_needs_arch(model: torch.nn.Module, tmp_path: Path) -> None:
    official = tmp_path / "official.pth"
    torch.save({"params": model.state_dict()}, official)
    upscaler = load_upscaler(official, "cpu", arch=ARCH)
    assert upscaler.source["key"] == "params"
    # Without arch the default (full-size swinir-s-x4) is built and the tiny weights do not fit.
    with pytest.raises(StudentWeightsError, match=str(official.name)) as info:
        load_upscaler(official, "cpu")
    assert "pass its architecture, e.g. --arch swinir-s-x2" in str(info.value)
    with pytest.raises(FileNotFoundError, match=re.escape("missing.pt")):
        load_upscaler(tmp_path / "missing.pt", "cpu")


def test_load_upscaler_rejects_contradicting_arch(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="swinir-s-x4"):
        load_upscaler(checkpoint, "cpu", arch="swinir-s-x4")


def test_a_checkpoint_of_an_unknown_architecture_is_named_with_its_file(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    odd = tmp_path / "odd.pt"
    torch.save({"arch": "swinir-xl-x4", "ema": model.state_dict()}, odd)
    with pytest.raises(ValueError, match=r"odd\.pt: its 'arch' entry 'swinir-xl-x4' is not"):
        load_upscaler(odd, "cpu")


def test_official_release_name_resolves_through_the_weights_folder(tmp_path: Path) -> None:
    """`--model swinir-s-x2` finds the registry file (as the release ships it, {'params': ...})
    and builds the x2 architecture the name implies, though the file records none."""
    from dtkd_pipeline.weights import get_spec

    torch.manual_seed(0)
    official = build_student("swinir-s-x2").eval()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"params": official.state_dict()}, folder / get_spec("swinir-s-x2").filename)
    upscaler = load_upscaler("swinir-s-x2", "cpu", weights_dir=folder)
    assert upscaler.arch == "swinir-s-x2" and upscaler.scale == 2
    lr = _smooth_image(8, 8)
    torch.testing.assert_close(upscaler(lr, tile=0), upscale_tensor(official, lr, scale=2, tile=0))
    with pytest.raises(ValueError, match="drop --arch"):
        load_upscaler("swinir-s-x2", "cpu", arch="swinir-s-x4", weights_dir=folder)


def test_missing_model_error_names_the_official_releases(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="swinir-s-x4; downloaded once"):
        upscale_paths(tmp_path, tmp_path / "out", model_path="no-such-model")


# ------------------------------------------------------------------------------------ files


def _random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.ascontiguousarray(_smooth_image(height, width, seed)[0].permute(1, 2, 0).numpy())


def test_16bit_png_stays_16bit(model: torch.nn.Module, checkpoint: Path, tmp_path: Path) -> None:
    rgb = _random_rgb(14, 22, seed=3)
    source = write_image(tmp_path / "deep.png", rgb, bit_depth=16)
    loaded = read_image(source)
    assert loaded.bit_depth == 16
    (written,) = upscale_paths(
        source, tmp_path / "out", model_path=checkpoint, tile=12, overlap=4, device="cpu"
    )
    assert written == tmp_path / "out" / "deep.png"
    result = read_image(written)
    assert result.bit_depth == 16 and result.alpha is None
    assert result.rgb.shape == (14 * SCALE, 22 * SCALE, 3)
    lr = torch.from_numpy(loaded.rgb).permute(2, 0, 1)[None]
    expected = upscale_tensor(model, lr, tile=12, overlap=4)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(result.rgb, expected, atol=1 / 65535 + 1e-6)


def test_rgba_keeps_upscaled_alpha(checkpoint: Path, tmp_path: Path) -> None:
    rgb = _random_rgb(16, 20, seed=4)
    yy, xx = np.mgrid[0:16, 0:20]
    alpha = np.clip((xx - 4) / 10.0, 0, 1).astype(np.float32)  # a horizontal ramp
    alpha[yy < 3] = 0.0  # and a hard edge
    source = write_image(tmp_path / "rgba.png", rgb, alpha)
    out_file = tmp_path / "sr" / "rgba_x4.png"
    (written,) = upscale_paths(source, out_file, model_path=checkpoint, tile=0, device="cpu")
    assert written == out_file
    result = read_image(written)
    assert result.bit_depth == 8 and result.rgb.shape == (64, 80, 3)
    assert result.alpha is not None and result.alpha.shape == (64, 80)
    expected = np.clip(imresize(read_image(source).alpha, SCALE), 0, 1)
    np.testing.assert_allclose(result.alpha, expected, atol=0.5 / 255 + 1e-6)
    assert result.alpha[:8].max() == 0 and result.alpha[20:, 70:].min() == 1


def test_a_folder_is_upscaled_into_a_folder_of_pngs_gray_as_rgb(
    checkpoint: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(inputs / "a.png", _random_rgb(10, 12, seed=5))
    write_image(inputs / "b.jpg", _random_rgb(9, 7, seed=6))
    gray = (_random_rgb(8, 8, seed=7)[..., 0] * 255).round().astype(np.uint8)
    write_image(inputs / "c.bmp", gray)  # gray in, RGB out
    (inputs / "notes.txt").write_text("not an image")
    written = upscale_paths(
        inputs,
        tmp_path / "out",
        model_path=checkpoint,
        tile=8,
        overlap=4,
        device="cpu",
        suffix="_x4",
        progress=False,
    )
    names = ["a_x4.png", "b_x4.png", "c_x4.png"]
    assert [p.name for p in written] == names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    shapes = [read_image(p).rgb.shape for p in written]
    assert shapes == [(40, 48, 3), (36, 28, 3), (32, 32, 3)]


def test_the_image_and_tile_bars_honour_tqdm_disable(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "in"
    for index, name in enumerate(["a.png", "b.png"]):
        write_image(inputs / name, _random_rgb(16, 16, seed=index))
    bars = bars_under_tqdm_disable(monkeypatch, upscale)
    upscale_paths(inputs, tmp_path / "out", model_path=checkpoint, tile=8, overlap=4, device="cpu")
    assert {"upscale", "tiles"} <= {desc for desc, _ in bars}
    assert not any(shown for _, shown in bars)


def _folder_with_bad_images(tmp_path: Path) -> Path:
    """a.png and c.png fine; broken.png is not a PNG at all; b_truncated.png has a good header
    but half its pixel data."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_image(inputs / "a.png", _random_rgb(8, 8, seed=8))
    good = write_image(inputs / "c.png", _random_rgb(24, 24, seed=9)).read_bytes()
    (inputs / "b_truncated.png").write_bytes(good[: len(good) // 2])
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return inputs


def test_unreadable_headers_are_all_named_before_anything_is_written(
    checkpoint: Path, tmp_path: Path
) -> None:
    inputs, out = _folder_with_bad_images(tmp_path), tmp_path / "out"
    (inputs / "empty.jpg").write_bytes(b"")
    with pytest.raises(
        ImageReadError, match=r"2 input image\(s\)[\s\S]*broken.png[\s\S]*empty"
    ) as info:
        upscale_paths(inputs, out, model_path=checkpoint, tile=0, device="cpu")
    assert "replace or remove them, or rerun with --skip-bad" in str(info.value)
    assert not out.exists()
    with pytest.raises(ImageReadError, match=re.escape("broken.png")):
        upscale_paths(inputs / "broken.png", out, model_path=checkpoint, device="cpu")


def test_corrupt_pixel_data_stops_the_run_saying_what_was_written(
    checkpoint: Path, tmp_path: Path
) -> None:
    inputs, out = _folder_with_bad_images(tmp_path), tmp_path / "out"
    (inputs / "broken.png").unlink()
    with pytest.raises(
        ImageReadError, match=r"b_truncated.png.*1 of 3 image\(s\) were written"
    ) as info:
        upscale_paths(inputs, out, model_path=checkpoint, tile=0, device="cpu")
    assert "; replace or remove it, or rerun with --skip-bad" in str(info.value)
    assert str(info.value).endswith("; add --skip-existing to the rerun to keep those written")
    # Whatever was written is complete; no temporary files are left behind.
    assert [p.name for p in out.iterdir()] == ["a.png"]


def test_skip_bad_upscales_every_readable_image(checkpoint: Path, tmp_path: Path) -> None:
    inputs, out = _folder_with_bad_images(tmp_path), tmp_path / "out"
    written = upscale_paths(
        inputs, out, model_path=checkpoint, tile=0, device="cpu", skip_bad=True, progress=False
    )
    assert [p.name for p in written] == ["a.png", "c.png"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", SKIPPED_LIST]
    listed = (out / SKIPPED_LIST).read_text().splitlines()
    # The header scan's skip first, then the one found mid-run.
    assert [line.split("\t")[0] for line in listed] == [
        str(inputs / "broken.png"),
        str(inputs / "b_truncated.png"),
    ]


def test_many_skips_name_the_first_few_count_the_rest_and_survive_a_rerun(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "a.png", _random_rgb(8, 8, seed=14))
    broken = [inputs / f"broken{i}.png" for i in range(SHOWN_SKIPS + 3)]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    common = {"model_path": checkpoint, "tile": 0, "device": "cpu", "progress": False}

    assert [p.name for p in upscale_paths(inputs, out, **common, skip_bad=True)] == ["a.png"]
    printed = capsys.readouterr().out
    assert printed.count("skipping: ") == SHOWN_SKIPS
    assert printed.count("skipping more bad images: only counted from here on") == 1
    listed_in = out / SKIPPED_LIST
    assert printed.endswith(
        f"1 image(s) -> {out}\nskipped {len(broken)} bad image(s); full list in {listed_in}\n"
    )
    lines = listed_in.read_text().splitlines()
    assert [line.split("\t") for line in lines] == [
        [str(path), "corrupt or truncated image (Truncated File Read)"] for path in broken
    ]
    # A resumed run takes the list for no image, writes only the new one and lists anew.
    write_image(inputs / "c.png", _random_rgb(8, 8, seed=15))
    resumed = upscale_paths(inputs, out, **common, skip_bad=True, skip_existing=True)
    assert [path.name for path in resumed] == ["c.png"]
    assert f"1 skipped, already present\nskipped {len(broken)} bad" in capsys.readouterr().out
    assert listed_in.read_text().splitlines() == lines


def test_skip_existing_upscales_only_the_missing_outputs_and_counts_the_rest(
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    for seed, name in enumerate(["a.png", "b.png", "c.png"]):
        write_image(inputs / name, _random_rgb(8, 8, seed=seed))
    done = write_image(out / "b.png", np.zeros((32, 32, 3))).read_bytes()  # an earlier run's
    common = {"model_path": checkpoint, "tile": 0, "device": "cpu", "progress": False}

    written = upscale_paths(inputs, out, **common, skip_existing=True)
    assert [path.name for path in written] == ["a.png", "c.png"]
    assert (out / "b.png").read_bytes() == done
    assert f"2 image(s) -> {out}; 1 skipped, already present" in capsys.readouterr().out

    # Interrupted again: the count is of the images this run had left to do.
    (out / "c.png").unlink()
    monkeypatch.setattr(upscale, "upscale_image", _interrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        upscale_paths(inputs, out, **common, skip_existing=True)
    assert info.value.__notes__ == [
        f"0 of 1 image(s) were written to {out} (2 more were already there), each complete; "
        "run the same command with --skip-existing to write only the rest"
    ]

    monkeypatch.undo()
    assert len(upscale_paths(inputs, out, **common)) == 3  # without the flag: every image again
    assert (out / "b.png").read_bytes() != done


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("output", ["x_x4.png", "folder"])
def test_skip_existing_with_every_output_present_loads_no_model_and_says_so(
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
) -> None:
    source = write_image(tmp_path / "x.png", _random_rgb(8, 8, seed=13))  # one file in
    out = tmp_path / output
    target = out if out.suffix else out / "x.png"
    write_image(target, np.zeros((32, 32, 3)))

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded with nothing to do")

    monkeypatch.setattr(upscale, "load_upscaler", no_model)
    assert upscale_paths(source, out, model_path=checkpoint, skip_existing=True) == []
    assert capsys.readouterr().out == (
        f"all 1 output image(s) are already in {out}; nothing to do (leave out --skip-existing "
        "to write them again)\n"
    )


def test_a_killed_writers_temporary_is_removed_and_a_live_writers_kept(
    checkpoint: Path, tmp_path: Path
) -> None:
    source = write_image(tmp_path / "x.png", _random_rgb(8, 8, seed=12))
    out = tmp_path / "out"
    leftover = image_write_killed_midway(out / "y.png")
    assert leftover.name.startswith(".y.png.")  # hidden, as the outputs' readers expect
    dead_pid = leftover.name.rpartition("-")[2]
    live = out / f".z.png.0123abcd.tmp-{os.getppid()}"  # another run, still writing
    live.write_bytes(b"in progress")
    users = out / f"scan.tmp-{dead_pid}"  # visible: a name of the user's, not a temporary
    users.write_bytes(b"keep")

    upscale_paths(source, out, model_path=checkpoint, tile=0, device="cpu", progress=False)

    assert sorted(path.name for path in out.iterdir()) == sorted([live.name, users.name, "x.png"])


def test_a_checkpoints_folder_given_as_model_names_the_files_it_holds(tmp_path: Path) -> None:
    """Passing distill's checkpoints/ suggested checkpoints/student.pt, which is never there."""
    for name in ("iter_00000003.pt", "best.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(IsADirectoryError) as info:
        require_model_file(tmp_path)
    assert str(info.value) == (
        f"model {tmp_path} is a folder; pass the checkpoint file in it, e.g. "
        f"{tmp_path / 'best.pt'} (it holds best.pt, iter_00000003.pt)"
    )


def test_bad_paths_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    source = write_image(tmp_path / "x.png", _random_rgb(8, 8, seed=9))
    with pytest.raises(FileNotFoundError, match=re.escape("nowhere.png")):
        upscale_paths(tmp_path / "nowhere.png", tmp_path / "o", model_path=checkpoint)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt; train one with `dtkd-pipeline"):
        upscale_paths(source, tmp_path / "o", model_path=tmp_path / "absent.pt")
    with pytest.raises(IsADirectoryError, match=r"is a folder; pass the checkpoint file in it"):
        upscale_paths(source, tmp_path / "o", model_path=tmp_path)
    # Writing <stem>.png next to the inputs would overwrite x.png.
    with pytest.raises(ValueError, match="overwrite"):
        upscale_paths(tmp_path, tmp_path, model_path=checkpoint, device="cpu")
    clash = tmp_path / "clash"
    clash.mkdir()
    write_image(clash / "y.png", _random_rgb(8, 8, seed=10))
    write_image(clash / "y.jpg", _random_rgb(8, 8, seed=11))
    with pytest.raises(ValueError, match="clash"):
        upscale_paths(clash, tmp_path / "o", model_path=checkpoint, device="cpu")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"out\.pgn: \.pgn is not an image format"):
        upscale_paths(source, tmp_path / "out.pgn", model_path=checkpoint, device="cpu")
    assert not (tmp_path / "out.pgn").exists()  # was made as a folder holding x.png
    (tmp_path / "run.v2").mkdir()  # a folder with a dot that exists is still a folder
    upscale_paths(source, tmp_path / "run.v2", model_path=checkpoint, device="cpu")
    assert (tmp_path / "run.v2" / "x.png").is_file()


# ------------------------------------------------------------------------------------- ONNX


def test_onnx_export_matches_pytorch(model: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dtkd_pipeline.student.onnx_export import export_onnx

    path = tmp_path / "student.onnx"
    diff = export_onnx(model, path, tile=16, opset=17)
    assert path.is_file() and diff <= 1e-4
    # Independently: dynamic batch and a size that is not a window multiple.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lr = torch.rand(2, 3, 13, 18, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(lr).numpy()
    got = session.run(None, {"lr": lr.numpy()})[0]
    assert got.shape == (2, 3, 52, 72)
    assert np.abs(got - expected).max() <= 1e-4
    assert not model.training  # the export worked on a copy


def test_an_onnx_write_error_names_the_target_not_its_temporary(
    model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dtkd_pipeline.student.onnx_export import export_onnx

    def disk_full(module: object, args: object, f: str, **options: object) -> None:
        Path(f).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)

    monkeypatch.setattr(torch.onnx, "export", disk_full)
    path = tmp_path / "student.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(OSError) as info:
        export_onnx(model, path, tile=16)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["student.onnx"]
    assert path.read_bytes() == b"the previous export"
