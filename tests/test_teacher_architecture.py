"""Network topology and config parsing: official key lists, shapes and parameter counts."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml

from dtkd_pipeline.teacher import (
    TeacherConfigError,
    build_teacher_networks,
    resolve_config,
    swin,
)
from dtkd_pipeline.teacher.config import config_from_dict, preset_path, resolve_interpolations
from dtkd_pipeline.teacher.swin import SwinTransformerBlock, official_attention_mask

REFERENCE_DOC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "resshift.md"
UNET_PARAMETERS = 118_593_583
VQ_PARAMETERS = 55_322_782


def _appendix(title: str) -> list[tuple[str, tuple[int, ...]]]:
    if not REFERENCE_DOC.is_file():
        pytest.skip(f"reference spec {REFERENCE_DOC} not present")
    section = REFERENCE_DOC.read_text().split(title, 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    rows = []
    for line in block.strip().splitlines():
        key, shape = line.split("\t")[:2]
        rows.append((key, tuple(int(n) for n in re.findall(r"\d+", shape))))
    return rows


def _keys_and_shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in module.state_dict().items()]


@pytest.fixture(scope="module")
def full_width_v1() -> tuple[torch.nn.Module, torch.nn.Module]:
    return build_teacher_networks("v1")


def test_unet_state_dict_matches_appendix_a(full_width_v1) -> None:
    unet, _ = full_width_v1
    expected = _appendix("## Appendix A")
    assert len(expected) == 564
    assert _keys_and_shapes(unet) == expected
    assert sum(p.numel() for p in unet.parameters()) == UNET_PARAMETERS
    assert sum(1 for _ in unet.buffers()) == 24


def test_vq_state_dict_matches_appendix_b(full_width_v1) -> None:
    _, vq = full_width_v1
    expected = _appendix("## Appendix B")
    assert len(expected) == 205
    assert _keys_and_shapes(vq) == expected
    assert sum(p.numel() for p in vq.parameters()) == VQ_PARAMETERS


@pytest.mark.parametrize("preset", ["v2", "v3"])
def test_other_presets_have_the_same_architecture(preset: str, full_width_v1) -> None:
    unet, vq = build_teacher_networks(preset)
    assert _keys_and_shapes(unet) == _keys_and_shapes(full_width_v1[0])
    assert _keys_and_shapes(vq) == _keys_and_shapes(full_width_v1[1])


def test_presets_steps_and_interpolation() -> None:
    assert resolve_config("v1").diffusion.steps == 15
    assert resolve_config("v2").diffusion.steps == 15
    v3 = resolve_config("v3")
    assert (v3.diffusion.steps, v3.diffusion.min_noise_level) == (4, 0.2)
    assert v3.unet.out_channels == 3  # `${autoencoder.params.embed_dim}` resolved without omegaconf
    assert v3.version == "v3"


def test_config_interpolations_resolve_and_cycles_or_missing_keys_are_named() -> None:
    tree = {"a": {"b": 3, "s": "x-${a.b}"}, "c": "${a.b}", "d": "${c}"}
    assert resolve_interpolations(tree) == {"a": {"b": 3, "s": "x-3"}, "c": 3, "d": 3}
    with pytest.raises(TeacherConfigError, match="cycle"):
        resolve_interpolations({"a": "${b}", "b": "${a}"})
    with pytest.raises(TeacherConfigError, match="missing"):
        resolve_interpolations({"a": "${nope.x}"})


def test_the_official_format_fixture_config_gives_its_network_widths(
    resshift_parity_dir: Path,
) -> None:
    config = resolve_config(resshift_parity_dir / "config.yaml")
    assert (config.unet.model_channels, config.unet.swin_embed_dim, config.autoencoder.ch) == (
        32,
        64,
        32,
    )
    assert config.unet_ckpt_path == "unet.pth"


def test_unsupported_config_is_rejected() -> None:
    tree = yaml.safe_load(preset_path("v1").read_text())
    tree["model"]["params"]["lq_size"] = 128
    with pytest.raises(TeacherConfigError, match="lq_size"):
        config_from_dict(tree)
    with pytest.raises(TeacherConfigError, match="preset"):
        resolve_config("v9")


def test_shift_mask_blocks_only_the_last_window_row_as_upstream_does() -> None:
    """Only the last window-row is masked, split by token column (reference §5.2)."""
    mask = official_attention_mask(16, 16, window=8, shift=4)  # 2×2 windows
    assert mask.shape == (4, 64, 64)
    assert torch.count_nonzero(mask[:2]) == 0  # first window-row: unmasked
    column = torch.arange(64) % 8
    blocked = (column[:, None] < 4) != (column[None, :] < 4)
    for window in (2, 3):
        assert torch.equal(mask[window] == -100.0, blocked)
    assert torch.count_nonzero(official_attention_mask(16, 16, window=8, shift=0)) == 0


def test_teacher_shift_mask_cache_tells_apart_sizes_that_share_a_height() -> None:
    """16×32 has twice the windows of 16×16: a mask cached for 16×16 and reused there would
    mask the wrong window-row in half the windows, with no error."""
    torch.manual_seed(0)
    block = SwinTransformerBlock(64, 16, num_heads=2, window=8, shift=4, mlp_ratio=2.0).eval()
    warmed = copy.deepcopy(block)  # same weights, its own (still empty) mask cache
    wide = torch.randn(1, 64, 16, 32)
    with torch.no_grad():
        warmed(torch.randn(1, 64, 16, 16))
        torch.testing.assert_close(warmed(wide), block(wide), rtol=0, atol=1e-6)


def test_compiled_swin_block_is_traced_once() -> None:
    """Filling the shift-mask cache inside a traced call failed the graph's guard on the cache
    at the next call: one more full compilation of the teacher's UNet (minutes on a GPU)."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    block = SwinTransformerBlock(64, 16, num_heads=2, window=8, shift=4, mlp_ratio=2.0).eval()
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, dynamic=False)
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        first = compiled(x)
        torch.testing.assert_close(compiled(x), first, rtol=0, atol=0)
        torch.testing.assert_close(first, block(x), rtol=0, atol=1e-6)
    assert counter.frame_count == 1


def test_vq_attention_backends_agree() -> None:
    """The exact bmm path (CPU fp32 parity) and the SDPA path (large tiles, CUDA) agree closely."""
    from dtkd_pipeline.teacher import autoencoder

    torch.manual_seed(0)
    block = autoencoder.AttnBlock(64).eval()
    x = torch.randn(2, 64, 16, 16)
    with torch.inference_mode():
        block.backend = "exact"
        exact = block(x)
        block.backend = "sdpa"
        fused = block(x)
        block.backend = "auto"
        assert torch.equal(block(x), exact)  # CPU fp32, few tokens: the exact path
    assert (exact - fused).abs().max().item() < 1e-5
    big = torch.zeros(1, 64, 129, 128)  # above EXACT_ATTENTION_MAX_TOKENS: SDPA
    assert not block._use_exact(big)


def test_vq_quantize_chunking_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from dtkd_pipeline.teacher import autoencoder

    torch.manual_seed(0)
    quantizer = autoencoder.VectorQuantizer(512, 3)
    z = torch.randn(2, 3, 16, 16) / 256
    whole = quantizer(z)
    monkeypatch.setattr(autoencoder, "QUANTIZE_CHUNK_ROWS", 100)
    assert torch.equal(quantizer(z), whole)
    assert whole.shape == z.shape


def _shifted_block() -> SwinTransformerBlock:
    torch.manual_seed(0)
    block = SwinTransformerBlock(64, 32, num_heads=2, window=8, shift=4, mlp_ratio=2.0).eval()
    # Upstream-sized biases (trained tables reach a few units), so a dropped bias would show.
    block.attn.relative_position_bias_table.data.normal_(0, 2.0)
    return block


def test_half_precision_swin_block_runs_fused_and_float32_keeps_upstream_ops(monkeypatch) -> None:
    block = _shifted_block()
    x = torch.randn(2, 64, 32, 32)
    calls: list[str] = []
    for path in ("attention_sdpa", "attention_ops"):
        original = getattr(swin, path)
        monkeypatch.setattr(swin, path, lambda *a, p=path, f=original: calls.append(p) or f(*a))
    with torch.inference_mode():
        exact = block(x)
        assert set(calls) == {"attention_ops"}
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = block(x)
        assert set(calls) == {"attention_sdpa"}
        calls.clear()
        monkeypatch.setattr(type(block.attn), "fused_half", False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block(x)
        assert set(calls) == {"attention_ops"}
    error = (half.float() - exact).abs()
    assert error.max().item() < 0.1 and error.mean().item() < 0.01  # bf16 rounding only
