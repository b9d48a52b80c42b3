"""Teacher.sample behaviour: per-sample noise, chopping geometry, steps and input validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from dtkd_pipeline.devices import DeviceError
from dtkd_pipeline.teacher import Teacher, load_teacher, per_sample_seed, random_teacher
from dtkd_pipeline.teacher.noise import OfficialNoise, PerSampleNoise
from dtkd_pipeline.teacher.tiling import chop_grid, chop_starts, default_chop_stride

TINY_T2 = Path(__file__).parent / "data" / "resshift_tiny_t2.yaml"


@pytest.fixture(scope="module")
def tiny_teacher(resshift_parity_dir: Path) -> Teacher:
    return load_teacher(
        resshift_parity_dir / "config.yaml",
        unet=resshift_parity_dir / "unet.pth",
        autoencoder=resshift_parity_dir / "vq_basic.pth",
    )


def test_per_sample_noise_does_not_depend_on_batch() -> None:
    device = torch.device("cpu")
    shape = torch.Size((4, 3, 8, 8))
    batch = PerSampleNoise(seed=5, sample_ids=[3, 9, 12, 40], device=device)
    alone = PerSampleNoise(seed=5, sample_ids=[12], device=device)
    for _ in range(3):  # successive draws (prior, then one per step)
        assert torch.equal(batch.draw(shape)[2:3], alone.draw(torch.Size((1, 3, 8, 8))))
    assert per_sample_seed(5, 12) != per_sample_seed(5, 13) != per_sample_seed(6, 12)
    assert per_sample_seed(5, 12, patch_index=1) != per_sample_seed(5, 12)


def test_per_sample_noise_is_seeded_by_the_documented_sha256_recipe() -> None:
    """README "Reproducibility" fixes the derivation: a resumed cache mixes two noise streams in
    one store if it ever changes, and no provenance field would notice."""
    top_bit_cleared = 0
    for tile in range(32):
        for seed, patch in ((12345, 0), (-7, 3)):
            key = f"dtkd-resshift-noise/{seed}/{tile}/{patch}".encode()
            raw = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
            top_bit_cleared += raw >= 2**63
            expected = raw & (2**63 - 1)
            assert per_sample_seed(seed, tile, patch) == expected
            # The tile's generator is seeded with exactly that number.
            drawn = PerSampleNoise(seed, [tile], torch.device("cpu"), patch).draw(
                torch.Size((1, 3, 4, 4))
            )
            reference = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(expected))
            assert torch.equal(drawn, reference)
    assert top_bit_cleared  # the masking was exercised, not only the byte order


def test_per_sample_tile_same_alone_and_in_batch(tiny_teacher: Teacher) -> None:
    lr = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = [10, 11, 12, 13]
    batch = tiny_teacher.sample(lr, seed=7, rng="per-sample", sample_ids=ids)
    alone = tiny_teacher.sample(lr[2:3], seed=7, rng="per-sample", sample_ids=[12])
    assert batch.shape == (4, 3, 256, 256)
    assert batch.min().item() >= 0.0 and batch.max().item() <= 1.0
    # The noise is identical; oneDNN may pick a different conv algorithm for batch 4 than for
    # batch 1 (ulp-level differences), which a rare VQ code flip can amplify locally.
    u8_batch = (batch[2:3] * 255).round()
    u8_alone = (alone * 255).round()
    assert (u8_batch - u8_alone).abs().le(1).float().mean().item() > 0.99
    assert (batch[2:3] - alone).abs().mean().item() < 2e-3
    # A different sample id gets different noise, hence a clearly different output.
    other = tiny_teacher.sample(lr[2:3], seed=7, rng="per-sample", sample_ids=[99])
    assert (other - alone).abs().mean().item() > 10 * (batch[2:3] - alone).abs().mean().item()


def test_chop_geometry_matches_upstream() -> None:
    assert chop_starts(112, 64, 48) == [0, 48]
    assert chop_starts(64, 64, 48) == [0]
    assert chop_starts(1000, 512, 448) == [0, 448, 488]
    assert default_chop_stride(512) == 448
    assert default_chop_stride(256) == 224
    assert default_chop_stride(64) == 48
    grid = chop_grid(112, 112, 64, 48)
    assert [(p.top, p.left) for p in grid] == [(0, 0), (0, 48), (48, 0), (48, 48)]
    wide = chop_grid(40, 200, 64, 48)  # one axis shorter than chop: full extent, non-square patch
    assert {(p.height, p.width) for p in wide} == {(40, 64)}


def test_steps_other_than_trained_t_rejected(tiny_teacher: Teacher) -> None:
    lr = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"trained for a fixed number of steps.*T=15"):
        tiny_teacher.sample(lr, steps=4)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 32, 64), r"32×64 is too small.*at least 33 px"),
        ((1, 3, 64, 20), r"64×20 is too small"),
        ((1, 1, 64, 64), r"1 channels.*RGB.*repeating"),
        ((1, 4, 64, 64), r"4 channels.*drop alpha"),
        ((3, 64, 64), r"B×3×h×w"),
    ],
)
def test_bad_lr_input_rejected(tiny_teacher: Teacher, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_teacher.sample(torch.rand(shape))


def test_bad_lr_range_and_dtype_rejected(tiny_teacher: Teacher) -> None:
    with pytest.raises(ValueError, match="divide uint8"):
        tiny_teacher.sample(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        tiny_teacher.sample(torch.full((1, 3, 64, 64), 255.0))
    with pytest.raises(ValueError, match="sample_ids"):
        tiny_teacher.sample(torch.rand(2, 3, 64, 64), sample_ids=[1])
    with pytest.raises(ValueError, match="rng"):
        tiny_teacher.sample(torch.rand(1, 3, 64, 64), rng="global")


def test_tensor_core_precisions_need_cuda(resshift_parity_dir: Path) -> None:
    for precision in ("bf16", "tf32"):
        with pytest.raises(DeviceError, match=rf"precision={precision} needs a CUDA device"):
            random_teacher(resshift_parity_dir / "config.yaml", precision=precision)


def test_unknown_compile_mode_is_refused(resshift_parity_dir: Path) -> None:
    with pytest.raises(ValueError, match="compile mode must be one of"):
        random_teacher(resshift_parity_dir / "config.yaml", compile_mode="fastest")  # type: ignore[arg-type]


def _tiny(directory: Path, **speed: object) -> Teacher:
    return load_teacher(
        directory / "config.yaml",
        unet=directory / "unet.pth",
        autoencoder=directory / "vq_basic.pth",
        **speed,  # type: ignore[arg-type]
    )


def test_channels_last_samples_the_same_images(resshift_parity_dir: Path) -> None:
    lr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    plain = _tiny(resshift_parity_dir).sample(lr, seed=9)
    nhwc = _tiny(resshift_parity_dir, channels_last=True)
    assert next(nhwc.unet.parameters()).dim() == 1 or any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        for p in nhwc.unet.parameters()
    )
    assert_same_images_up_to_rounding(nhwc.sample(lr, seed=9), plain)


def assert_same_images_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Only the summation order differs. Over 15 steps of a random-weight teacher that grows from
    float32 rounding (median 5e-5) and now and then flips a near-tied VQ code (a hard argmin),
    moving a small patch (measured: 1.5 % of pixels off by more than one uint8 level)."""
    diff = (actual - expected).abs()
    assert diff.median().item() < 5e-4
    assert (diff > 1 / 255).float().mean().item() < 0.05


@pytest.mark.slow
def test_compiled_teacher_samples_the_same_images(resshift_parity_dir: Path) -> None:
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    plain = _tiny(resshift_parity_dir).sample(lr, seed=2)
    compiled = _tiny(resshift_parity_dir, compile_mode="default")
    first = compiled.sample(lr, seed=2)
    assert_same_images_up_to_rounding(first, plain)  # fused kernels reorder sums too
    assert torch.equal(compiled.sample(lr, seed=2), first)  # the compiled graph is reused


def test_random_teacher_is_named_and_recorded(resshift_parity_dir: Path) -> None:
    state = torch.get_rng_state()
    teacher = random_teacher(resshift_parity_dir / "config.yaml", seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert teacher.random_weights
    assert teacher.name == "resshift-config-RANDOM-WEIGHTS"
    provenance = teacher.provenance()
    assert provenance["random_weights"] is True
    assert provenance["steps"] == 15
    assert provenance["checkpoint_sha256"] == {"unet": None, "autoencoder": None}
    again = random_teacher(resshift_parity_dir / "config.yaml", seed=3)
    first = next(iter(teacher.unet.parameters()))
    assert torch.equal(first, next(iter(again.unet.parameters())))


def test_loaded_teacher_provenance(tiny_teacher: Teacher, resshift_parity_dir: Path) -> None:
    import hashlib

    assert not tiny_teacher.random_weights
    assert tiny_teacher.name == "resshift-config"
    assert tiny_teacher.steps == 15
    digest = hashlib.sha256((resshift_parity_dir / "unet.pth").read_bytes()).hexdigest()
    assert tiny_teacher.checkpoint_sha256["unet"] == digest
    assert len(tiny_teacher.checkpoint_sha256["autoencoder"] or "") == 64


@pytest.mark.slow
def test_full_width_v3_random_teacher_runs() -> None:
    """Full-width journal teacher (4 steps), random weights: shape, range, steps (~15-30 s)."""
    teacher = random_teacher("v3", seed=0)
    assert teacher.name == "resshift-v3-RANDOM-WEIGHTS" and teacher.steps == 4
    out = teacher.sample(torch.rand(1, 3, 48, 64), seed=1)
    assert out.shape == (1, 3, 192, 256)
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    with pytest.raises(ValueError, match="T=4"):
        teacher.sample(torch.rand(1, 3, 48, 64), steps=15)


def test_one_step_decodes_the_first_x0_prediction(tiny_teacher: Teacher) -> None:
    """one_step=True = one UNet call at t = T-1 from the prior (SinSR's sampler), then decode."""
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    calls: list[int] = []
    handle = tiny_teacher.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        one = tiny_teacher.sample(lr, seed=3, rng="per-sample", one_step=True)
        assert len(calls) == 1
        full = tiny_teacher.sample(lr, seed=3, rng="per-sample")
        assert len(calls) == 1 + tiny_teacher.steps
    finally:
        handle.remove()
    assert one.shape == full.shape == (1, 3, 256, 256)
    # Recompute by hand: prior latent, one x0 prediction at the last timestep, decode.
    coeff = tiny_teacher._coefficients
    y0 = (lr - 0.5) / 0.5
    sf = tiny_teacher.config.diffusion.scale_factor
    with torch.inference_mode():
        y_up = torch.nn.functional.interpolate(y0, scale_factor=4, mode="bicubic")
        z_y = tiny_teacher.autoencoder.encode(y_up).float() * sf
        noise = PerSampleNoise(3, [0], torch.device("cpu"), 0)
        z = z_y + coeff.prior_std * noise.draw(z_y.shape)
        last = tiny_teacher.steps - 1
        x0 = tiny_teacher.unet(z / coeff.input_std[last], coeff.timesteps[last:], y0).float()
        expected = tiny_teacher.autoencoder.decode(x0 / sf).float().clamp(-1, 1) * 0.5 + 0.5
    torch.testing.assert_close(one, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("height", "width", "chop"), [(64, 64, None), (100, 70, 64)])
def test_noise_shapes_are_the_draws_a_sample_call_makes(
    height: int, width: int, chop: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = random_teacher(TINY_T2, seed=0)
    drawn: list[torch.Size] = []
    original = OfficialNoise.draw

    def recording(self: OfficialNoise, shape: torch.Size) -> torch.Tensor:
        drawn.append(torch.Size(shape))
        return original(self, shape)

    monkeypatch.setattr(OfficialNoise, "draw", recording)
    teacher.sample(torch.rand(2, 3, height, width), rng="official", chop_size=chop)
    assert drawn == teacher.noise_shapes(2, height, width, chop_size=chop)


@pytest.mark.parametrize(
    ("height", "width", "chop", "one_step"),
    [(64, 64, None, False), (100, 70, 64, False), (100, 70, 64, True)],
)
def test_on_step_reports_every_unet_call_that_unet_calls_predicts(
    height: int, width: int, chop: int | None, one_step: bool
) -> None:
    """teacher-sr's per-image progress bar: its total and its updates must agree."""
    teacher = random_teacher(TINY_T2, seed=0)
    unet_calls, reported = [], []
    teacher.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    lr = torch.rand(1, 3, height, width)
    teacher.sample(lr, chop_size=chop, one_step=one_step, on_step=lambda: reported.append(1))
    assert (
        len(reported)
        == len(unet_calls)
        == teacher.unet_calls(height, width, chop_size=chop, one_step=one_step)
    )
    assert len(unet_calls) > (1 if one_step else teacher.steps) or chop is None


def test_per_sample_noise_differs_between_the_chopped_patches_of_one_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher = random_teacher(TINY_T2, seed=0)
    first_draws: list[torch.Tensor] = []
    original = PerSampleNoise.draw

    def recording(self: PerSampleNoise, shape: torch.Size) -> torch.Tensor:
        noise = original(self, shape)
        if not getattr(self, "_seen", False):  # the prior draw of each patch
            self._seen = True  # type: ignore[attr-defined]
            first_draws.append(noise)
        return noise

    monkeypatch.setattr(PerSampleNoise, "draw", recording)
    teacher.sample(torch.rand(1, 3, 100, 70), rng="per-sample", chop_size=64)
    assert len(first_draws) == len(chop_grid(100, 70, 64, 48)) > 1
    assert not any(
        torch.equal(a, b) for i, a in enumerate(first_draws) for b in first_draws[i + 1 :]
    )


def test_fp32_sampling_turns_tf32_off_and_restores_the_flags() -> None:
    """PyTorch's own defaults differ by op (cuDNN convolutions TF32, matmuls not): "fp32" must
    mean IEEE float32 everywhere. The flags are global, so this is checked on any machine."""
    teacher = random_teacher(TINY_T2, seed=0, precision="fp32")
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = flags[0].allow_tf32, flags[1].allow_tf32
    flags[0].allow_tf32 = flags[1].allow_tf32 = True
    try:
        with teacher._math_mode():
            assert not flags[0].allow_tf32 and not flags[1].allow_tf32
        assert flags[0].allow_tf32 and flags[1].allow_tf32
    finally:
        flags[0].allow_tf32, flags[1].allow_tf32 = saved


def test_a_continued_official_stream_can_skip_images_exactly() -> None:
    """Upstream seeds once and draws image after image: skipping an image's draws without
    running it must leave the stream where running it would."""
    teacher = random_teacher(TINY_T2, seed=0)
    lr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    stream = OfficialNoise(5, cpu)
    teacher.sample(lr[:1], rng="official", stream=stream)
    second = teacher.sample(lr[1:], rng="official", stream=stream)

    skipped = OfficialNoise(5, cpu)
    skipped.skip(teacher.noise_shapes(1, 64, 64))
    assert torch.equal(teacher.sample(lr[1:], rng="official", stream=skipped), second)
    reseeded = teacher.sample(lr[1:], seed=5, rng="official")  # what a fresh call per image gets
    assert not torch.equal(reseeded, second)
    with pytest.raises(ValueError, match="rng='official'"):
        teacher.sample(lr[1:], rng="per-sample", stream=OfficialNoise(5, cpu))
