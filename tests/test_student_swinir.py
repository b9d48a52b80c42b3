"""SwinIR student: architecture facts, official parity, and behaviour at other sizes/scales."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dtkd_pipeline.student import (
    SwinIR,
    available_students,
    build_student,
    load_student_weights,
    student_config,
)
from dtkd_pipeline.student.swinir import shifted_window_mask


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("swinir-s-x4", 929_628), ("swinir-s-x2", 910_152), ("swinir-s-x3", 918_267)],
)
def test_parameter_counts_match_official_builds(name: str, expected: int) -> None:
    model = build_student(name)
    assert _parameter_count(model) == expected
    # The paper's 897K-style figure excludes the 24 relative-position-bias tables.
    tables = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias_table"))
    assert tables == 24 * 225 * 6


def test_state_dict_keys_shapes_dtypes_equal_official(swinir_parity_dir: Path) -> None:
    expected = {}
    for line in (swinir_parity_dir / "keys.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        expected[key] = (shape, dtype)
    state = build_student("swinir-s-x4").state_dict()
    actual = {k: (str(tuple(v.shape)), str(v.dtype)) for k, v in state.items()}
    assert actual == expected


def test_derived_buffers_equal_official_ones(swinir_parity_dir: Path) -> None:
    official = torch.load(swinir_parity_dir / "weights.pth", weights_only=True)["params"]
    own = build_student("swinir-s-x4").state_dict()
    derived = [k for k in own if k.endswith(("attn_mask", "relative_position_index"))]
    assert len(derived) == 36
    for key in derived:
        assert torch.equal(own[key], official[key]), key


def test_parity_with_official_outputs(swinir_parity_dir: Path) -> None:
    """Official forward (internal reflect padding to a multiple of 8, crop, no clamp), fp32 CPU."""
    model = build_student("swinir-s-x4").eval()
    info = load_student_weights(model, swinir_parity_dir / "weights.pth")
    assert info["key"] == "params"
    cases = torch.load(swinir_parity_dir / "io.pt", weights_only=False)
    assert set(cases) == {"x48", "x50x37", "x64", "b2_x40x56"}
    with torch.no_grad():
        for name, case in cases.items():
            output = model(case["in"])
            assert output.shape == case["out"].shape, name
            error = (output - case["out"]).abs().max().item()
            assert error <= 1e-4, f"{name}: max abs error {error:.3g}"


@pytest.mark.parametrize("upscale", [2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
def test_output_is_scale_times_any_input_size_and_finite(
    upscale: int, size: tuple[int, int]
) -> None:
    model = build_student("swinir-tiny-x4", upscale=upscale).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, *size))
    assert output.shape == (2, 3, size[0] * upscale, size[1] * upscale)
    assert torch.isfinite(output).all()


def test_batch_elements_are_independent() -> None:
    model = build_student("swinir-tiny-x4").eval()
    batch = torch.rand(3, 3, 12, 20)
    with torch.no_grad():
        together = model(batch)
        alone = model(batch[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


def test_training_step_backpropagates_into_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4").train()
    output = model(torch.rand(2, 3, 16, 16))
    output.abs().mean().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_shift_mask_is_computed_once_per_size() -> None:
    model = build_student("swinir-tiny-x4").eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))
        model(torch.rand(2, 3, 16, 16))
        model(torch.rand(1, 3, 24, 16))
    assert len(model.mask_cache._masks) == 2


def test_shift_mask_cache_tells_apart_sizes_that_share_a_height() -> None:
    """8×16 has twice the windows of 8×8: a mask cached for 8×8 and reused there would mask
    the wrong token pairs in half the windows, with no error."""
    torch.manual_seed(0)
    model = build_student("swinir-tiny-x4").eval()
    warmed = copy.deepcopy(model)  # same weights, its own (still empty) mask cache
    wide = torch.rand(1, 3, 8, 16)
    with torch.no_grad():
        warmed(torch.rand(1, 3, 8, 8))
        torch.testing.assert_close(warmed(wide), model(wide), rtol=0, atol=1e-6)


def test_shift_mask_values() -> None:
    mask = shifted_window_mask(16, 16, window_size=8, shift_size=4)
    assert mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert (mask[3] != 0).any()


def test_too_small_input_raises_clear_error() -> None:
    model = build_student("swinir-tiny-x4", window_size=8).eval()
    with pytest.raises(ValueError, match="too small"):
        model(torch.rand(1, 3, 3, 3))


def test_named_students_build_and_accept_config_overrides() -> None:
    assert {"swinir-s-x2", "swinir-s-x3", "swinir-s-x4", "swinir-tiny-x4"} <= set(
        available_students()
    )
    config = student_config("swinir-s-x4", depths=[6, 6], num_heads=[6, 6])
    assert config.depths == (6, 6)
    assert isinstance(build_student("swinir-tiny-x4"), SwinIR)
    with pytest.raises(ValueError, match="available"):
        build_student("swinir-huge")
    with pytest.raises(ValueError, match="unknown override"):
        build_student("swinir-s-x4", embed_dims=60)
    with pytest.raises(ValueError, match="divisible"):
        build_student("swinir-s-x4", embed_dim=61)
    with pytest.raises(ValueError, match="upsampler"):
        build_student("swinir-s-x4", upsampler="pixelshuffle")
