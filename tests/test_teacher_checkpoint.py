"""Checkpoint loading: accepted layouts, and clear errors for wrong or damaged files."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch

from dtkd_pipeline.teacher import TeacherCheckpointError, load_teacher


def _load(directory: Path, unet: Path, vq: Path):
    return load_teacher(directory / "config.yaml", unet=unet, autoencoder=vq)


@pytest.fixture(scope="module")
def unet_state(resshift_parity_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(resshift_parity_dir / "unet.pth", weights_only=True)


def test_wrapped_and_prefixed_checkpoints_load(
    resshift_parity_dir: Path, unet_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    reference = _load(
        resshift_parity_dir, resshift_parity_dir / "unet.pth", resshift_parity_dir / "vq_basic.pth"
    )
    variants = {
        "state_dict.pth": {"state_dict": unet_state},
        "ddp.pth": {f"module.{k}": v for k, v in unet_state.items()},
        "compiled.pth": {f"_orig_mod.{k}": v for k, v in unet_state.items()},
        "both.pth": {"state_dict": {f"module._orig_mod.{k}": v for k, v in unet_state.items()}},
        # derived buffers are recomputed, so a file without them (or with stale ones) still loads
        "no_buffers.pth": {
            k: v
            for k, v in unet_state.items()
            if not k.endswith(("attn_mask", "relative_position_index"))
        },
    }
    expected = reference.unet.state_dict()
    for name, state in variants.items():
        path = tmp_path / name
        torch.save(state, path)
        teacher = _load(resshift_parity_dir, path, resshift_parity_dir / "vq_basic.pth")
        loaded = teacher.unet.state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name


def test_vq_file_passed_as_unet(resshift_parity_dir: Path) -> None:
    vq = resshift_parity_dir / "vq_basic.pth"
    with pytest.raises(TeacherCheckpointError) as info:
        _load(resshift_parity_dir, vq, vq)
    message = str(info.value)
    assert "vq_basic.pth" in message
    assert "looks like a VQGAN" in message and "passed as the UNet" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert isinstance(info.value, ValueError)


def test_unet_file_passed_as_autoencoder(resshift_parity_dir: Path) -> None:
    unet = resshift_parity_dir / "unet.pth"
    with pytest.raises(TeacherCheckpointError, match=r"ResShift UNet .* passed as the autoencoder"):
        _load(resshift_parity_dir, unet, unet)


def test_width_mismatch_names_shapes(resshift_parity_dir: Path) -> None:
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(
            "v1",
            unet=resshift_parity_dir / "unet.pth",
            autoencoder=resshift_parity_dir / "vq_basic.pth",
        )
    message = str(info.value)
    assert "shape mismatches" in message
    assert "input_blocks.0.0.weight (checkpoint (32, 6, 3, 3) vs model (160, 6, 3, 3))" in message
    assert "different config" in message and "unet.pth" in message


def test_a_checkpoint_missing_keys_lists_the_missing_and_unexpected_ones(
    resshift_parity_dir: Path, unet_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    partial = dict(unet_state)
    del partial["out.2.weight"]
    partial["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(TeacherCheckpointError, match=r"1 missing keys: out\.2\.weight.*extra"):
        _load(resshift_parity_dir, path, resshift_parity_dir / "vq_basic.pth")


def test_a_truncated_checkpoint_is_named_as_truncated(
    resshift_parity_dir: Path, tmp_path: Path
) -> None:
    data = (resshift_parity_dir / "unet.pth").read_bytes()
    path = tmp_path / "resshift_realsrx4_s15_v1.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(TeacherCheckpointError) as info:
        _load(resshift_parity_dir, path, resshift_parity_dir / "vq_basic.pth")
    message = str(info.value)
    assert "resshift_realsrx4_s15_v1.pth" in message
    assert "truncated or corrupt" in message and "download it again" in message


def test_a_page_saved_as_checkpoint_is_called_corrupt_not_unsafe(
    resshift_parity_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "resshift_realsrx4_s15_v1.pth"
    path.write_bytes(b"<!DOCTYPE html><html><body>rate limited</body></html>")
    with pytest.raises(TeacherCheckpointError) as info:
        _load(resshift_parity_dir, path, resshift_parity_dir / "vq_basic.pth")
    message = str(info.value)
    assert "not a torch.save file" in message and "download it again" in message
    assert "weights_only" not in message and "Python objects" not in message


def test_missing_file_and_no_path(resshift_parity_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TeacherCheckpointError, match="does not exist"):
        _load(resshift_parity_dir, tmp_path / "nope.pth", resshift_parity_dir / "vq_basic.pth")
    with pytest.raises(TeacherCheckpointError, match="no UNet checkpoint given"):
        load_teacher("v1")


def test_non_tensor_pickle_refused(resshift_parity_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "object.pth"
    torch.save({"trained_on": datetime.date(2024, 3, 13)}, path)
    with pytest.raises(
        TeacherCheckpointError, match=r"object\.pth contains Python objects other than tensors"
    ):
        _load(resshift_parity_dir, path, resshift_parity_dir / "vq_basic.pth")


def test_errors_name_the_params_key_by_default_and_the_callers_label_when_given(
    resshift_parity_dir: Path, tmp_path: Path
) -> None:
    """Each caller names what its user set: params keys for the stages, options for the CLI."""
    page = tmp_path / "page.pth"
    page.write_bytes(b"<html>rate limited</html>")
    vq = resshift_parity_dir / "vq_basic.pth"
    config = resshift_parity_dir / "config.yaml"
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(config, unet=page, autoencoder=vq)
    assert str(info.value).startswith("teacher.unet_weights: ")
    assert "point teacher.unet_weights at the official" in str(info.value)
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(config, unet=resshift_parity_dir / "unet.pth", autoencoder=page)
    assert str(info.value).startswith("teacher.autoencoder_weights: ")
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(config, unet=vq, autoencoder=vq, unet_source="--unet")
    assert str(info.value).startswith("--unet: ") and "passed as the UNet" in str(info.value)
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(
            config,
            unet=resshift_parity_dir / "unet.pth",
            autoencoder=page,
            autoencoder_source="--autoencoder",
        )
    assert str(info.value).startswith("--autoencoder: ")
    assert "point --autoencoder at the official" in str(info.value)
    assert "teacher." not in str(info.value)
    # No file given: the config's own key named it.
    with pytest.raises(TeacherCheckpointError) as info:
        load_teacher(config)  # its autoencoder.ckpt_path, vq_<case>.pth, is a template
    assert str(info.value).startswith(f"autoencoder.ckpt_path in {config}: ")
