"""load_student_weights: official release layouts, our checkpoints, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dtkd_pipeline.student import StudentWeightsError, build_student, load_student_weights


def _tiny(**overrides: object) -> torch.nn.Module:
    return build_student("swinir-tiny-x4", **overrides)


def _filled(value: float) -> dict[str, torch.Tensor]:
    """A tiny-model state dict whose learnable tensors all equal `value`."""
    state = _tiny().state_dict()
    return {
        k: v if k.endswith(("attn_mask", "relative_position_index")) else torch.full_like(v, value)
        for k, v in state.items()
    }


def _assert_loaded(model: torch.nn.Module, value: float) -> None:
    for name, parameter in model.named_parameters():
        assert torch.all(parameter == value), name


@pytest.mark.parametrize(
    ("layout", "expected_key"),
    [
        (lambda sd: {"params": sd}, "params"),
        (lambda sd: {"params_ema": sd}, "params_ema"),
        (lambda sd: sd, None),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, None),
        (lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}}, "params"),
        (lambda sd: {"model": sd, "iteration": 10}, "model"),
        (lambda sd: {"model": sd, "rng": {"numpy": np.random.get_state()}}, "model"),
    ],
    ids=[
        "params",
        "params_ema",
        "plain",
        "module-prefix",
        "params-module-prefix",
        "ours",
        "ours-with-numpy-rng",
    ],
)
def test_accepted_layouts(tmp_path: Path, layout, expected_key: str | None) -> None:
    path = tmp_path / "weights.pth"
    torch.save(layout(_filled(0.5)), path)
    model = _tiny()
    info = load_student_weights(model, path)
    assert info["key"] == expected_key
    assert info["path"] == str(path)
    _assert_loaded(model, 0.5)


def test_ema_is_preferred_unless_key_given(tmp_path: Path) -> None:
    official = tmp_path / "official.pth"
    torch.save({"params": _filled(1.0), "params_ema": _filled(2.0)}, official)
    ours = tmp_path / "ours.pth"
    torch.save({"model": _filled(3.0), "ema": _filled(4.0), "optimizer": {}}, ours)

    model = _tiny()
    assert load_student_weights(model, official)["key"] == "params_ema"
    _assert_loaded(model, 2.0)
    load_student_weights(model, official, key="params")
    _assert_loaded(model, 1.0)
    assert load_student_weights(model, ours)["key"] == "ema"
    _assert_loaded(model, 4.0)
    load_student_weights(model, ours, key="model")
    _assert_loaded(model, 3.0)
    with pytest.raises(StudentWeightsError, match="no entry 'params_ema'"):
        load_student_weights(model, ours, key="params_ema")


def test_derived_buffers_are_ignored_and_kept(tmp_path: Path) -> None:
    """A file saved at another img_size (other attn_mask shape) or without buffers loads."""
    path = tmp_path / "weights.pth"
    torch.save({"params": _filled(0.25)}, path)
    model = _tiny(img_size=32)
    masks_before = {k: v.clone() for k, v in model.state_dict().items() if "attn_mask" in k}
    load_student_weights(model, path)
    _assert_loaded(model, 0.25)
    for key, mask in masks_before.items():
        assert torch.equal(model.state_dict()[key], mask)

    no_buffers = {k: v for k, v in _filled(0.75).items() if not k.endswith(("mask", "index"))}
    torch.save(no_buffers, path)
    load_student_weights(model, path)
    _assert_loaded(model, 0.75)


def test_scale_mismatch_names_file_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "x2.pth"
    torch.save({"params": _tiny(upscale=2).state_dict()}, path)
    with pytest.raises(StudentWeightsError) as error:
        load_student_weights(_tiny(), path)
    message = str(error.value)
    assert str(path) in message
    assert "upsample.0.weight" in message
    assert "shape mismatch" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = _filled(0.5)
    del state["conv_first.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(StudentWeightsError) as error:
        load_student_weights(_tiny(), path)
    message = str(error.value)
    assert "missing key(s): conv_first.weight" in message
    assert "unexpected key(s): extra.weight" in message
    assert isinstance(error.value, ValueError)


def test_a_truncated_checkpoint_is_named_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    torch.save({"params": _filled(0.5)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StudentWeightsError, match=r"truncated\.pth.*truncated or corrupt"):
        load_student_weights(_tiny(), path)


def test_files_that_are_not_weights(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("<html>404 Not Found</html>")  # what a misconfigured mirror serves
    with pytest.raises(
        StudentWeightsError,
        match=r"notes\.pth is not a student checkpoint \(not a torch\.save.*--model",
    ):
        load_student_weights(_tiny(), text)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(StudentWeightsError, match=r"empty\.pth \(0 bytes\).*the file is empty"):
        load_student_weights(_tiny(), empty)

    bare_tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), bare_tensor)
    with pytest.raises(StudentWeightsError, match="expected a dict"):
        load_student_weights(_tiny(), bare_tensor)

    other_dict = tmp_path / "other.pth"
    torch.save({"epoch": 3, "config": {"lr": 1e-4}}, other_dict)
    with pytest.raises(StudentWeightsError, match="unrecognised layout"):
        load_student_weights(_tiny(), other_dict)

    pickled_object = tmp_path / "object.pth"
    torch.save({"params": _filled(0.5), "extra": Path("x")}, pickled_object)
    with pytest.raises(StudentWeightsError, match="for safety"):
        load_student_weights(_tiny(), pickled_object)

    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_student_weights(_tiny(), tmp_path / "absent.pth")
