"""Test-set readers: every layout pairs files, loads aligned tensors, and refuses bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dtkd_pipeline.evaluate.metrics import MetricSuite
from dtkd_pipeline.evaluate.testsets import (
    TestSetError,
    load_pair,
    open_test_set,
)
from dtkd_pipeline.images import ImageReadError, to_uint8, write_image
from dtkd_pipeline.resize import bicubic_downscale_x4, imresize
from dtkd_pipeline.stage_files import VAL_DIR

SCALE = 4


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3))


def _write(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Write a random 8-bit image; returns it as uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_uint8(_image(height, width, seed))
    write_image(path, image)
    return image


def _as_uint8(tensor: torch.Tensor) -> np.ndarray:
    return np.round(tensor[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------- layouts


def test_paired_matches_by_stem_and_loads_quantised_tensors(tmp_path: Path) -> None:
    hr = _write(tmp_path / "set" / "hr" / "b.png", 40, 48, seed=1)
    lr = _write(tmp_path / "set" / "lr" / "b.png", 10, 12, seed=2)
    _write(tmp_path / "set" / "hr" / "a.png", 32, 32, seed=3)
    _write(tmp_path / "set" / "lr" / "a.png", 8, 8, seed=4)
    test_set = open_test_set("demo", "paired", tmp_path / "set", SCALE)
    assert (test_set.name, test_set.layout, test_set.root) == ("demo", "paired", tmp_path / "set")
    assert [p.stem for p in test_set] == ["a", "b"]
    pair = test_set.pairs[1]
    assert (pair.hr, pair.lr) == (tmp_path / "set/hr/b.png", tmp_path / "set/lr/b.png")

    lr_t, hr_t = load_pair(pair, SCALE)
    assert lr_t.shape == (1, 3, 10, 12) and hr_t.shape == (1, 3, 40, 48)
    assert lr_t.dtype == hr_t.dtype == torch.float32
    np.testing.assert_array_equal(_as_uint8(hr_t), hr)
    np.testing.assert_array_equal(_as_uint8(lr_t), lr)
    # Exactly 8-bit levels, like saved images.
    torch.testing.assert_close(hr_t, torch.round(hr_t * 255) / 255, atol=0, rtol=0)


def test_paired_reads_the_prepare_stage_val_folder(tmp_path: Path) -> None:
    """data/prepared/val/{hr,lr}: the pipeline's own validation pairs (the "demo" set)."""
    from stages import prepare_data
    from tests.pipeline_helpers import make_hr_images, tiny_params

    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(260, 260), (200, 210)])
    prepared = prepare_data.run(tiny_params(tmp_path, hr_dir))
    test_set = open_test_set("demo", "paired", prepared / VAL_DIR, SCALE)
    [pair] = test_set.pairs
    lr, hr = load_pair(pair, SCALE)
    assert hr.shape == (1, 3, 200, 208) and lr.shape == (1, 3, 50, 52)


def test_paired_suffix_conventions_and_explicit_folders(tmp_path: Path) -> None:
    hr_dir, lr_dir = tmp_path / "DIV2K_valid_HR", tmp_path / "DIV2K_valid_LR_bicubic" / "X4"
    for stem, lr_stem in [
        ("0801", "0801x4"),
        ("0802", "0802_x4"),
        ("baby_HR", "baby_LR"),
        ("box4", "box4x4"),  # "x4" inside the stem: box4x4 -> box4, not "bo"
        ("Head", "Head_lr"),  # decorations match case-insensitively
    ]:
        _write(hr_dir / f"{stem}.png", 16, 20)
        _write(lr_dir / f"{lr_stem}.png", 4, 5)
    test_set = open_test_set("div2k", "paired", None, SCALE, hr_dir=hr_dir, lr_dir=lr_dir)
    assert {p.stem: p.lr.name for p in test_set if p.lr} == {
        "0801": "0801x4.png",
        "0802": "0802_x4.png",
        "baby": "baby_LR.png",
        "box4": "box4x4.png",
        "Head": "Head_lr.png",
    }
    assert {p.stem: p.hr.name for p in test_set}["baby"] == "baby_HR.png"


def test_paired_upper_case_default_folders(tmp_path: Path) -> None:
    _write(tmp_path / "HR" / "x.png", 8, 8)
    _write(tmp_path / "LR" / "x.png", 2, 2)
    assert [p.stem for p in open_test_set("s", "paired", tmp_path, SCALE)] == ["x"]


@pytest.mark.parametrize("root_of", ["realsr", "camera", "test4"])
def test_realsr_pairs_and_downscales_hr_sized_lr(tmp_path: Path, root_of: str) -> None:
    realsr = tmp_path / "RealSR(V3)"
    canon = realsr / "Canon" / "Test" / "4"
    nikon = realsr / "Nikon" / "Test" / "4"
    hr_same = _write(canon / "Canon_001_HR.png", 42, 38, seed=1)
    lr_same = _write(canon / "Canon_001_LR4.png", 42, 38, seed=2)  # pre-upsampled: HR size
    _write(nikon / "Nikon_050_HR.png", 40, 36, seed=3)
    lr_small = _write(nikon / "Nikon_050_LR4.png", 10, 9, seed=4)  # true LR size: used as is
    root = {"realsr": realsr, "camera": realsr / "Canon", "test4": canon}[root_of]
    test_set = open_test_set("realsr", "realsr", root, SCALE)
    stems = ["Canon_001", "Nikon_050"] if root_of == "realsr" else ["Canon_001"]
    assert [p.stem for p in test_set] == stems

    lr, hr = load_pair(test_set.pairs[0], SCALE)
    assert hr.shape == (1, 3, 40, 36) and lr.shape == (1, 3, 10, 9)
    np.testing.assert_array_equal(_as_uint8(hr), hr_same[:40, :36])
    expected = to_uint8(imresize(lr_same[:40, :36].astype(np.float64) / 255, 1 / 4))
    np.testing.assert_array_equal(_as_uint8(lr), expected)
    if root_of == "realsr":
        lr, hr = load_pair(test_set.pairs[1], SCALE)
        np.testing.assert_array_equal(_as_uint8(lr), lr_small)


def test_imagenet_test_layout(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / "gt" / f"ILSVRC2012_val_{i:08d}.png", 256, 256, seed=i)
        _write(tmp_path / "lq" / f"ILSVRC2012_val_{i:08d}.png", 64, 64, seed=10 + i)
    test_set = open_test_set("imagenet", "imagenet-test", tmp_path, SCALE)
    assert len(test_set) == 3
    lr, hr = load_pair(test_set.pairs[0], SCALE)
    assert lr.shape == (1, 3, 64, 64) and hr.shape == (1, 3, 256, 256)


def test_hr_only_makes_lr_like_the_prepare_stage(tmp_path: Path) -> None:
    hr_image = _write(tmp_path / "Set5" / "baby.png", 43, 50)
    _write(tmp_path / "Set5" / "bird.png", 24, 24)
    test_set = open_test_set("set5", "hr-only", tmp_path / "Set5", SCALE)
    assert [(p.stem, p.lr) for p in test_set] == [("baby", None), ("bird", None)]
    lr, hr = load_pair(test_set.pairs[0], SCALE)
    expected_lr, expected_hr = bicubic_downscale_x4(hr_image.astype(np.float64) / 255)
    np.testing.assert_array_equal(_as_uint8(hr), to_uint8(expected_hr))
    np.testing.assert_array_equal(_as_uint8(lr), to_uint8(expected_lr))
    assert lr.shape == (1, 3, 10, 12) and hr.shape == (1, 3, 40, 48)


# ---------------------------------------------------------------------------------- errors


def test_missing_folder_and_empty_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        open_test_set("s", "hr-only", tmp_path / "nowhere", SCALE)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "lr")):
        _write(tmp_path / "hr" / "a.png", 8, 8)
        open_test_set("s", "paired", tmp_path, SCALE)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(TestSetError, match=r"no images in .*empty"):
        open_test_set("s", "hr-only", tmp_path / "empty", SCALE)
    with pytest.raises(FileNotFoundError, match="no Test/4 folder"):
        open_test_set("s", "realsr", tmp_path / "empty", SCALE)
    with pytest.raises(FileNotFoundError, match="gt"):
        open_test_set("s", "imagenet-test", tmp_path / "empty", SCALE)
    with pytest.raises(ValueError, match="unknown layout"):
        open_test_set("s", "div2k", tmp_path, SCALE)
    with pytest.raises(ValueError, match="paired layout only"):
        open_test_set("s", "hr-only", tmp_path, SCALE, hr_dir=tmp_path)


@pytest.mark.parametrize("layout", ["paired", "realsr", "imagenet-test", "hr-only"])
def test_a_set_path_that_is_a_file_is_called_a_file_with_its_key(
    tmp_path: Path, layout: str
) -> None:
    """It was reported as a folder that "does not exist", sending the user to look for it."""
    archive = tmp_path / "Set5.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(TestSetError) as caught:
        open_test_set("s", layout, archive, SCALE, params_key="evaluate.sets.2")
    message = str(caught.value)
    assert f"{archive} (from evaluate.sets.2.path) is a file, not a folder" in message
    assert "point evaluate.sets.2.path at the test set's folder" in message
    assert "does not exist" not in message


def test_an_explicit_hr_or_lr_dir_that_is_a_file_names_that_key(tmp_path: Path) -> None:
    _write(tmp_path / "hr" / "a.png", 8, 8)
    (tmp_path / "lr.txt").write_text("not a folder")
    with pytest.raises(TestSetError, match=r"lr\.txt \(from evaluate\.sets\.0\.lr_dir\) is a file"):
        open_test_set(
            "s", "paired", None, SCALE, tmp_path / "hr", tmp_path / "lr.txt",
            params_key="evaluate.sets.0",
        )  # fmt: skip


def test_unmatched_files_are_listed(tmp_path: Path) -> None:
    for i in range(14):
        _write(tmp_path / "hr" / f"img{i:02d}.png", 8, 8)
    _write(tmp_path / "lr" / "img00.png", 2, 2)
    _write(tmp_path / "lr" / "stray.png", 2, 2)
    with pytest.raises(TestSetError) as caught:
        open_test_set("s", "paired", tmp_path, SCALE)
    message = str(caught.value)
    assert "13 HR with no LR" in message and "img01.png" in message and "img10.png" in message
    assert "img11.png" not in message and "and 3 more" in message  # ten names at most
    assert "1 LR with no HR" in message and "stray.png" in message
    assert "and 3 more; 1 LR with no HR in" in message and "stray.png; " in message  # one list

    realsr = tmp_path / "RealSR" / "Canon" / "Test" / "4"
    _write(realsr / "Canon_001_HR.png", 8, 8)
    _write(realsr / "Canon_002_LR4.png", 8, 8)
    with pytest.raises(TestSetError, match=r"Canon_001_HR\.png.*Canon_002_LR4\.png"):
        open_test_set("r", "realsr", tmp_path / "RealSR", SCALE)


def test_an_unreadable_image_is_named_with_what_to_do_and_the_key_to_change(
    tmp_path: Path,
) -> None:
    """It was named, but with no advice: a bad header when the set opens, bad pixel data (behind a
    good header) when the pair loads."""
    _write(tmp_path / "hr" / "a.png", 32, 32)
    (tmp_path / "hr" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageReadError) as caught:
        open_test_set("s5", "hr-only", tmp_path / "hr", SCALE, params_key="evaluate.sets.1")
    assert str(caught.value).startswith(f"test set 's5': {tmp_path / 'hr' / 'b.png'}: ")
    assert str(caught.value).endswith(
        "; replace or remove the file, or point evaluate.sets.1.path at a good copy of the set"
    )

    whole = (tmp_path / "hr" / "a.png").read_bytes()
    (tmp_path / "hr" / "b.png").write_bytes(whole[: len(whole) // 2])  # good header, cut short
    test_set = open_test_set("s5", "hr-only", tmp_path / "hr", SCALE, params_key="evaluate.sets.1")
    test_set.load(test_set.pairs[0], SCALE)
    with pytest.raises(ImageReadError, match=r"b\.png: corrupt or truncated") as caught:
        test_set.load(test_set.pairs[1], SCALE)
    assert "replace or remove the file, or point evaluate.sets.1.path at" in str(caught.value)


def test_read_advice_names_the_explicit_folders_that_replace_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "HRs" / "a.png", 8, 8)
    _write(tmp_path / "LRs" / "a.png", 2, 2)
    paired = open_test_set(
        "d", "paired", tmp_path, SCALE, tmp_path / "HRs", tmp_path / "LRs", params_key="k"
    )
    assert paired.read_advice.endswith("point k.hr_dir / k.lr_dir at a good copy of the set")
    hr_only = open_test_set("h", "hr-only", tmp_path / "HRs", SCALE, params_key="k")
    assert hr_only.read_advice.endswith("point k.path at a good copy of the set")


def test_ambiguous_names_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "hr" / "a.png", 8, 8)
    _write(tmp_path / "lr" / "a_x4.png", 2, 2)
    _write(tmp_path / "lr" / "ax4.png", 2, 2)
    with pytest.raises(TestSetError, match="more than one"):
        open_test_set("s", "paired", tmp_path, SCALE)


def test_images_too_small_for_the_metrics_are_named_before_any_model_runs(
    tmp_path: Path,
) -> None:
    """SSIM-Y needs its 11-px window inside the image less 4-px borders: 19 px per side."""
    suite = MetricSuite(["psnr", "ssim"], scale=SCALE)
    assert suite.min_hr_side[0] == 19
    _write(tmp_path / "hr" / "big.png", 64, 64)
    _write(tmp_path / "hr" / "small.png", 16, 22)  # 16 rows: SSIM's window would not fit
    with pytest.raises(TestSetError, match=r"small\.png: 22x16 is smaller than 19 px per side"):
        open_test_set("s", "hr-only", tmp_path / "hr", SCALE, min_hr_side=suite.min_hr_side)
    assert MetricSuite(["psnr"], scale=SCALE).min_hr_side[0] == 9
    open_test_set("s", "hr-only", tmp_path / "hr", SCALE, min_hr_side=(9, "PSNR"))


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _write(tmp_path / "hr" / "a.png", 42, 40)  # modcrop -> 40x40 (height x width)
    _write(tmp_path / "lr" / "a.png", 11, 10)
    pattern = r"hr/a\.png is 40x40 .*lr/a\.png is 10x11"
    with pytest.raises(TestSetError, match=pattern):
        open_test_set("s", "paired", tmp_path, SCALE)
    # Without the early header check, loading reports the same problem.
    test_set = open_test_set("s", "paired", tmp_path, SCALE, check_sizes=False)
    with pytest.raises(ValueError, match=pattern):
        load_pair(test_set.pairs[0], SCALE)
    # A modcropped HR of exactly 4x the LR is accepted (42 -> 40 rows).
    _write(tmp_path / "lr" / "a.png", 10, 10)
    lr, hr = load_pair(open_test_set("s", "paired", tmp_path, SCALE).pairs[0], SCALE)
    assert hr.shape[-2:] == (40, 40) and lr.shape[-2:] == (10, 10)
