"""prepare-data tiles HR images into aligned LR/HR stores, splits validation, refuses bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dtkd_pipeline.atomic import OUTPUT_MARKER, OutputFolderError
from dtkd_pipeline.cache import HR, LR, TILE_OFFSET, TILE_SOURCE, TileStore
from dtkd_pipeline.cli import app
from dtkd_pipeline.images import ImageReadError, read_image, to_uint8, write_image
from dtkd_pipeline.resize import bicubic_downscale_x4
from dtkd_pipeline.skipped import SHOWN_SKIPS, SKIPPED_LIST
from dtkd_pipeline.stage_files import TRAIN_STORE
from stages import prepare_data
from tests.lock_helpers import file_snapshot, output_locked_by_child
from tests.pipeline_helpers import REPO_ROOT, make_hr_images, tiny_params


def test_tiles_are_aligned_with_bicubic_lr_of_their_source(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    paths = make_hr_images(hr_dir, [(300, 260), (256, 256), (200, 210)])
    params = tiny_params(tmp_path, hr_dir)
    prepared = prepare_data.run(params)

    with TileStore.open(prepared / TRAIN_STORE) as store:
        assert store.missing_shards() == []
        # 300x260 HR -> 75x65 LR -> starts {0, 11} x {0, 1}: 4 tiles; 256x256 -> 64x64: 1 tile
        assert store.n_tiles == 5
        tiles = store.read_tiles(range(store.n_tiles))
        assert store.provenance["sources"] == [paths[0].name, paths[1].name]
    for lr_tile, hr_tile, source, (y, x) in zip(
        tiles[LR], tiles[HR], tiles[TILE_SOURCE], tiles[TILE_OFFSET], strict=True
    ):
        lr, hr = bicubic_downscale_x4(read_image(paths[source]).rgb)
        np.testing.assert_array_equal(
            lr_tile, to_uint8(lr[y : y + 64, x : x + 64]).transpose(2, 0, 1)
        )
        np.testing.assert_array_equal(
            hr_tile, to_uint8(hr[4 * y : 4 * y + 256, 4 * x : 4 * x + 256]).transpose(2, 0, 1)
        )
    val = sorted(p.name for p in (prepared / "val" / "lr").iterdir())
    assert val == ["img02.png"]
    assert read_image(prepared / "val" / "hr" / "img02.png").rgb.shape == (200, 208, 3)


def test_train_store_provenance_records_scale_tile_size_and_sources(tmp_path: Path) -> None:
    """DESIGN's cache contract: the prepared store says how its tiles were cut."""
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    prepared = prepare_data.run(tiny_params(tmp_path, hr_dir, ["data.stride=32"]))
    with TileStore.open(prepared / TRAIN_STORE) as store:
        recorded = {
            key: store.provenance.get(key) for key in ("scale", "lr_tile", "stride", "sources")
        }
    assert recorded == {"scale": 4, "lr_tile": 64, "stride": 32, "sources": ["img00.png"]}


def test_small_images_padded_or_skipped(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(160, 300), (256, 256), (100, 100)])
    padded = prepare_data.run(tiny_params(tmp_path / "a", hr_dir))
    with TileStore.open(padded / TRAIN_STORE) as store:
        assert store.n_tiles == 2 + 1  # 40x75 LR padded to 64x75 -> 2 tiles
    skipped = prepare_data.run(tiny_params(tmp_path / "b", hr_dir, ["data.small_images=skip"]))
    with TileStore.open(skipped / TRAIN_STORE) as store:
        assert store.n_tiles == 1


def test_images_that_fill_under_half_a_tile_are_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (80, 120), (160, 300), (256, 256)])
    prepare_data.run(tiny_params(tmp_path, hr_dir))
    note = capsys.readouterr().out
    # 20x30 LR fills 15 % of a 64-px tile; 40x75 fills 62 %: only the first is named.
    assert "note: 1 image(s) fill less than half of a 64-px LR tile" in note
    assert "img01.png" in note and "img02.png" not in note


def test_corrupt_image_fails_before_writing_anything(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256), (256, 256)])
    (hr_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (hr_dir / "notes.jpg").write_text("not an image")
    params = tiny_params(tmp_path, hr_dir)
    with pytest.raises(ImageReadError) as info:
        prepare_data.run(params)
    message = str(info.value)
    assert "broken.png" in message and "notes.jpg" in message and "--skip-bad" in message
    assert "replace or remove them, or rerun with --skip-bad (data.skip_bad: true)" in message
    assert not params.data.prepared_dir.exists()
    assert not list(tmp_path.glob("prepared*"))


def test_a_run_failing_on_bad_images_leaves_no_folder_it_made(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    (hr_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    prepared = tmp_path / "runs" / "today" / "prepared"
    params = tiny_params(tmp_path, hr_dir, [f"data.prepared_dir={prepared}"])
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        prepare_data.run(params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr", "params.yaml"]


def test_skip_bad_skips_and_continues(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256), (256, 256)])
    (hr_dir / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    prepared = prepare_data.run(tiny_params(tmp_path, hr_dir), skip_bad=True)
    with TileStore.open(prepared / TRAIN_STORE) as store:
        assert store.provenance["sources"] == ["img00.png", "img01.png"]


def test_skip_bad_names_the_first_few_counts_the_rest_and_lists_all_beside_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    broken = [hr_dir / f"a_broken{i}.png" for i in range(SHOWN_SKIPS + 2)]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    params = tiny_params(tmp_path, hr_dir)
    prepared = prepare_data.run(params, skip_bad=True)

    out = capsys.readouterr().out
    assert out.count("skipping: ") == SHOWN_SKIPS
    assert out.count("skipping more bad images: only counted from here on") == 1
    listed_in = prepared / SKIPPED_LIST
    assert f"; skipped {len(broken)} bad image(s); full list in {listed_in}" in out
    lines = listed_in.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in broken]
    assert all(line.split("\t")[1] for line in lines)  # each with its reason
    # A DVC checkout (no marker) holding the list is still this stage's own folder to replace.
    (prepared / OUTPUT_MARKER).unlink()
    prepare_data.run(params, skip_bad=True)


def test_images_too_small_to_tile_or_to_validate_on_are_reported_with_the_bad_ones(
    tmp_path: Path,
) -> None:
    """A 3-px image has no LR pixel at x4 (tiling crashed); a validation image needs 19 px per
    side for SSIM-Y (distill's validation crashed)."""
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    write_image(hr_dir / "img00_tiny.png", np.zeros((3, 3, 3)))
    write_image(hr_dir / "img99_val.png", np.zeros((16, 64, 3)))  # the last: validation
    params = tiny_params(tmp_path, hr_dir)
    with pytest.raises(ImageReadError) as info:
        prepare_data.run(params)
    message = str(info.value)
    assert "2 image(s) could not be read" in message
    assert "img00_tiny.png: 0x0 (cropped to a multiple of 4)" in message
    assert "images need at least 4 px" in message
    assert "img99_val.png: 64x16" in message and "validation images need at least 19" in message
    # Skipping them leaves no validation image: refused, not a run distill cannot validate.
    with pytest.raises(ImageReadError, match=r"no validation image left.*data\.val_images"):
        prepare_data.run(params, skip_bad=True)
    assert not params.data.prepared_dir.exists()


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    params = tiny_params(tmp_path, hr_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    leftover = params.data.prepared_dir.with_name(f"prepared.tmp-{int(dead.stdout)}")
    (leftover / "train.zarr").mkdir(parents=True)  # what SIGKILL mid-run leaves behind
    prepare_data.run(params)
    assert sorted(p.name for p in tmp_path.glob("prepared*")) == ["prepared"]


def test_every_image_unreadable_names_the_cause(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (hr_dir / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageReadError) as info:
        prepare_data.run(tiny_params(tmp_path, hr_dir), skip_bad=True)
    assert "was unreadable" in str(info.value) and "small_images" not in str(info.value)


def test_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="holds no images"):
        prepare_data.run(tiny_params(tmp_path, empty))
    with pytest.raises(ImageReadError, match="not a folder"):
        prepare_data.run(tiny_params(tmp_path, tmp_path / "nowhere"))


def test_validation_split_must_leave_training_images(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256)])
    with pytest.raises(ImageReadError, match="val_images"):
        prepare_data.run(tiny_params(tmp_path, hr_dir))


def test_paired_lr_folder_is_used_and_unpaired_images_are_reported(tmp_path: Path) -> None:
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    paths = make_hr_images(hr_dir, [(256, 256), (256, 320)])
    lr_dir.mkdir()
    for path in paths:
        lr, _ = bicubic_downscale_x4(read_image(path).rgb)
        write_image(lr_dir / path.name, 1.0 - lr)  # inverted: proves the folder is read
    prepared = prepare_data.run(tiny_params(tmp_path / "a", hr_dir, [f"data.lr_dir={lr_dir}"]))
    with TileStore.open(prepared / TRAIN_STORE) as store:
        tile = store.read_tile(0, LR)
    expected = to_uint8(1.0 - bicubic_downscale_x4(read_image(paths[0]).rgb)[0])
    np.testing.assert_array_equal(tile, expected[:64, :64].transpose(2, 0, 1))

    (lr_dir / paths[0].name).unlink()
    with pytest.raises(ImageReadError, match=r"img00.png: no LR image for it .* _x4"):
        prepare_data.run(tiny_params(tmp_path / "b", hr_dir, [f"data.lr_dir={lr_dir}"]))


def test_div2k_style_lr_names_pair_with_their_hr_and_ambiguous_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DIV2K names 0001.png's LR 0001x4.png; prepare pairs them as the test-set readers do, and
    names LR files that no HR image claims."""
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    paths = make_hr_images(hr_dir, [(256, 256), (256, 320)])
    lr_dir.mkdir()
    for path in paths:
        lr, _ = bicubic_downscale_x4(read_image(path).rgb)
        write_image(lr_dir / f"{path.stem}x4.png", 1.0 - lr)
    prepared = prepare_data.run(tiny_params(tmp_path / "a", hr_dir, [f"data.lr_dir={lr_dir}"]))
    with TileStore.open(prepared / TRAIN_STORE) as store:
        tile = store.read_tile(0, LR)
    expected = to_uint8(1.0 - bicubic_downscale_x4(read_image(paths[0]).rgb)[0])
    np.testing.assert_array_equal(tile, expected[:64, :64].transpose(2, 0, 1))

    write_image(lr_dir / "stray_x4.png", np.zeros((64, 64, 3)))
    prepare_data.run(tiny_params(tmp_path / "c", hr_dir, [f"data.lr_dir={lr_dir}"]))
    note = capsys.readouterr().out
    assert "ignoring 1 LR files with no HR image in" in note and "stray_x4.png" in note

    write_image(lr_dir / f"{paths[0].stem}_x4.png", np.zeros((64, 64, 3)))
    with pytest.raises(ImageReadError, match=r"data.lr_dir: .*match more than one file"):
        prepare_data.run(tiny_params(tmp_path / "b", hr_dir, [f"data.lr_dir={lr_dir}"]))
    assert not (tmp_path / "b" / "prepared").exists()


def test_a_prepared_dir_no_stage_wrote_is_refused_before_work(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    foreign = tmp_path / "my-folder"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    params = tiny_params(tmp_path, hr_dir, [f"data.prepared_dir={foreign}"])
    with pytest.raises(OutputFolderError, match=r"data\.prepared_dir: .*my-folder holds files"):
        prepare_data.run(params)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]

    prepared = prepare_data.run(tiny_params(tmp_path, hr_dir))  # its own output: replaced
    prepare_data.run(tiny_params(tmp_path, hr_dir))
    assert (prepared / OUTPUT_MARKER).is_file()
    # A DVC checkout restores the folder without the (.dvcignore'd) marker: still its own...
    (prepared / OUTPUT_MARKER).unlink()
    prepare_data.run(tiny_params(tmp_path, hr_dir))
    # ...but not once someone else's file sits beside the store.
    (prepared / OUTPUT_MARKER).unlink()
    (prepared / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="holds files no stage"):
        prepare_data.run(tiny_params(tmp_path, hr_dir))
    assert (prepared / "notes.txt").read_text() == "keep me"


def test_validation_images_sharing_a_name_are_refused_before_one_overwrites_the_other(
    tmp_path: Path,
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    write_image(hr_dir / "zz.jpg", read_image(hr_dir / "img00.png").rgb)
    write_image(hr_dir / "zz.png", read_image(hr_dir / "img01.png").rgb)
    params = tiny_params(tmp_path, hr_dir, ["data.val_images=2"])
    with pytest.raises(ImageReadError, match=r"zz\.jpg and zz\.png .* share the name 'zz'"):
        prepare_data.run(params)
    assert not params.data.prepared_dir.exists()


def test_a_link_to_a_missing_image_is_reported_not_silently_dropped(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256), (256, 256)])
    (hr_dir / "moved.png").symlink_to(tmp_path / "elsewhere" / "moved.png")
    with pytest.raises(ImageReadError, match=r"moved\.png: a link to .*elsewhere.*does not exist"):
        prepare_data.run(tiny_params(tmp_path, hr_dir))


def test_ctrl_c_leaves_the_prepared_folder_as_it_was_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    prepared = prepare_data.run(tiny_params(tmp_path, hr_dir))
    before = sorted(p.relative_to(prepared) for p in prepared.rglob("*"))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_data, "_write_val", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        prepare_data.run(tiny_params(tmp_path, hr_dir))
    (note,) = raised.value.__notes__  # printed by the CLI
    assert f"{prepared} is as it was" in note
    assert sorted(p.relative_to(prepared) for p in prepared.rglob("*")) == before
    assert not list(tmp_path.glob("prepared.tmp-*"))


def test_a_prepared_dir_under_a_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    (tmp_path / "notes.txt").write_text("a file")
    params = tiny_params(tmp_path, hr_dir, [f"data.prepared_dir={tmp_path / 'notes.txt' / 'p'}"])
    with pytest.raises(OutputFolderError, match=r"data\.prepared_dir: .*notes\.txt is a file"):
        prepare_data.run(params)


def test_a_run_while_another_holds_the_prepared_dir_is_refused_and_touches_nothing(
    tmp_path: Path,
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    params = tiny_params(tmp_path, hr_dir)
    prepared = prepare_data.run(params)
    before = file_snapshot(prepared)
    with output_locked_by_child(prepared, "data.prepared_dir") as holder_pid:
        result = CliRunner().invoke(
            app,
            ["prepare-data", "--params", str(tmp_path / "params.yaml"),
             "-S", f"data.hr_dir={hr_dir}", "-S", f"data.prepared_dir={prepared}"],
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert f"data.prepared_dir: {prepared} is being written by another run" in result.output
        assert f"(PID {holder_pid} holds {tmp_path / '.prepared.dtkd-lock'})" in result.output
        assert "wait for that run to finish or stop it" in result.output
        assert file_snapshot(prepared) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            ".prepared.dtkd-lock", "hr", "params.yaml", "prepared"
        ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr", "params.yaml", "prepared"]


def test_a_run_completes_while_a_concurrent_one_is_refused_and_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hr_dir = tmp_path / "hr"
    make_hr_images(hr_dir, [(256, 256), (256, 256)])
    params = tiny_params(tmp_path, hr_dir)
    second_run = [
        sys.executable, "-c", "from dtkd_pipeline.cli import main; main()", "prepare-data",
        "--params", str(tmp_path / "params.yaml"),
        "-S", f"data.hr_dir={hr_dir}", "-S", f"data.prepared_dir={params.data.prepared_dir}",
    ]  # fmt: skip
    refusals: list[subprocess.CompletedProcess[str]] = []
    write_val = prepare_data._write_val

    def write_val_while_another_run_starts(*args: Any) -> None:
        refusals.append(subprocess.run(second_run, cwd=REPO_ROOT, capture_output=True, text=True))
        write_val(*args)

    monkeypatch.setattr(prepare_data, "_write_val", write_val_while_another_run_starts)
    prepared = prepare_data.run(params)

    [refused] = refusals
    assert refused.returncode == 1, refused.stderr
    assert f"PID {os.getpid()} holds {tmp_path / '.prepared.dtkd-lock'}" in refused.stderr
    with TileStore.open(prepared / TRAIN_STORE) as store:
        assert store.n_tiles == 1 and store.missing_shards() == []
    assert sorted(p.name for p in (prepared / "val" / "hr").iterdir()) == ["img01.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr", "params.yaml", "prepared"]
