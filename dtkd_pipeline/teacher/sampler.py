"""The ResShift teacher: LR image in [0, 1] -> x4 SR image in [0, 1] (reference §2.3, §3).

`Teacher.sample` reproduces upstream's `ResShiftSampler.sample_func` (pad -> bicubic x4 -> VQ
encode -> prior -> T ancestral steps -> VQ decode -> crop -> clamp) and its LR-space chopping.
All images of a batch (and, when chopping, one patch position of all images) run as one network
batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch.nn import functional as F

from dtkd_pipeline.compiled import CompileMode, check_compile_mode, compile_static, run_compiled
from dtkd_pipeline.devices import require_cuda_for
from dtkd_pipeline.teacher.autoencoder import VQModel
from dtkd_pipeline.teacher.config import TeacherConfig
from dtkd_pipeline.teacher.diffusion import EtaSchedule, StepCoefficients, build_schedule
from dtkd_pipeline.teacher.noise import NoiseSource, OfficialNoise, PerSampleNoise, RngMode
from dtkd_pipeline.teacher.tiling import DEFAULT_CHOP_SIZE, chop_grid, default_chop_stride
from dtkd_pipeline.teacher.unet import UNetModelSwin

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
"""fp32: IEEE float32 everywhere (TF32 off on CUDA, whatever the global flags say); tf32: float32
tensors with TF32 tensor-core convolutions and matmuls (CUDA); bf16/fp16: autocast, with GroupNorm
statistics, VQ distances and the diffusion update kept in float32."""
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

MIN_LR_SIDE = 33
"""Reflect padding to a multiple of 64 needs pad < side, so sides of 32 px or less cannot run."""


def teacher_name(config: TeacherConfig, random_weights: bool) -> str:
    """The name a teacher's outputs carry; random weights are named so in every output."""
    return f"resshift-{config.version}" + ("-RANDOM-WEIGHTS" if random_weights else "")


def check_precision(precision: str, device_type: str) -> None:
    """A known precision, and tensor-core math only on CUDA."""
    if precision not in get_args(Precision):
        raise ValueError(f"precision must be one of {list(get_args(Precision))}, got {precision!r}")
    require_cuda_for(precision, device_type, "precision")


def resolve_chop(chop_size: int | None, chop_stride: int | None) -> tuple[int, int]:
    """(chop size, stride) in LR pixels with upstream's defaults, or a ValueError saying why not."""
    chop = DEFAULT_CHOP_SIZE if chop_size is None else int(chop_size)
    stride = default_chop_stride(chop) if chop_stride is None else int(chop_stride)
    if chop < MIN_LR_SIDE or not 0 < stride <= chop:
        raise ValueError(
            f"chop_size={chop} / chop_stride={stride}: need chop_size >= {MIN_LR_SIDE} and "
            "0 < chop_stride <= chop_size"
        )
    return chop, stride


@dataclass
class Teacher:
    """A ready-to-sample ResShift teacher plus the provenance a cache needs to record.

    Build it with `load_teacher` (official checkpoints) or `random_teacher` /
    `Teacher.from_networks` (random weights, for tests and benchmarks only; `name` then ends in
    "-RANDOM-WEIGHTS").
    """

    unet: UNetModelSwin = field(repr=False)
    autoencoder: VQModel = field(repr=False)
    config: TeacherConfig = field(repr=False)
    name: str
    device: torch.device
    precision: Precision
    random_weights: bool
    checkpoint_sha256: dict[str, str | None] = field(default_factory=dict)
    channels_last: bool = False
    """NHWC activations and weights: the layout cuDNN's tensor-core convolutions run natively."""
    compile_mode: CompileMode | None = None
    """torch.compile the UNet, VQ encoder and decoder (compiled per input shape at first use)."""
    schedule: EtaSchedule = field(init=False, repr=False)
    _coefficients: StepCoefficients = field(init=False, repr=False)
    _networks: tuple[Callable[..., torch.Tensor], ...] | None = field(
        init=False, repr=False, default=None
    )

    def __post_init__(self) -> None:
        check_precision(self.precision, self.device.type)
        check_compile_mode(self.compile_mode)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for net in (self.unet, self.autoencoder):
            net.to(self.device, memory_format=memory_format).eval().requires_grad_(False)
        self.schedule = build_schedule(self.config.diffusion)
        self._coefficients = StepCoefficients.from_schedule(self.schedule, self.device)

    @classmethod
    def from_networks(
        cls,
        unet: UNetModelSwin,
        autoencoder: VQModel,
        config: TeacherConfig,
        device: str | torch.device = "cpu",
        precision: Precision = "fp32",
        random_weights: bool = True,
        name: str | None = None,
        channels_last: bool = False,
        compile_mode: CompileMode | None = None,
    ) -> Teacher:
        """Wrap already-built networks; by default they are treated (and named) as random."""
        return cls(
            unet=unet,
            autoencoder=autoencoder,
            config=config,
            name=name or teacher_name(config, random_weights),
            device=torch.device(device),
            precision=precision,
            random_weights=random_weights,
            channels_last=channels_last,
            compile_mode=compile_mode,
        )

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def steps(self) -> int:
        """The trained number of diffusion steps T (15 for v1/v2, 4 for v3)."""
        return self.config.diffusion.steps

    @property
    def scale(self) -> int:
        return self.config.diffusion.sf

    def provenance(self) -> dict[str, Any]:
        """What produced an output: record this next to anything the teacher writes."""
        return {
            "teacher": self.name,
            "version": self.version,
            "steps": self.steps,
            "kappa": self.config.diffusion.kappa,
            "scale": self.scale,
            "random_weights": self.random_weights,
            "checkpoint_sha256": dict(self.checkpoint_sha256),
            "config_source": self.config.source,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile_mode": self.compile_mode,
            "device": str(self.device),
            "torch": torch.__version__,
        }

    # ----------------------------------------------------------------------------------- sampling

    @torch.inference_mode()
    def sample(
        self,
        lr: torch.Tensor,
        seed: int = 12345,
        rng: RngMode = "per-sample",
        sample_ids: Sequence[int] | torch.Tensor | None = None,
        chop_size: int | None = None,
        chop_stride: int | None = None,
        steps: int | None = None,
        one_step: bool = False,
        stream: OfficialNoise | None = None,
        on_step: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """Super-resolve B×3×h×w LR in [0, 1] to B×3×4h×4w in [0, 1] = clamp(x, -1, 1)·0.5 + 0.5.

        rng="official": one generator seeded with `seed` at the start of this call, drawn exactly as
          upstream's sampler does (1 + T draws of shape B×3×H×W per patch, patches in row-major
          order, the stream continuing across patches): bit-exact with upstream on CPU in fp32.
          With `stream`, that stream is continued instead (`seed` is unused), as upstream's
          seeded-once script continues it from image to image (see `noise_shapes` to skip ahead).
        rng="per-sample": row k's noise comes from its own generator seeded from
          (seed, sample_ids[k], patch index) (see `noise.per_sample_seed`), so a tile's output
          does not depend on the batch it is in. `sample_ids` defaults to 0..B-1.
        chop_size / chop_stride are in LR pixels with upstream's semantics: images with a side above
          chop_size (default 512, the upstream CLI default) are split into chop_size patches at
          stride chop_stride (default: upstream's auto stride, 512->448, 256->224, 64->48, else 7/8
          of chop_size), each run separately, and averaged uniformly.
        steps must be None or the trained T: ResShift checkpoints only work for their own T.
        one_step=True runs a single UNet call from the prior at t = T-1 and decodes its x0
          prediction: how SinSR's one-step model (distilled from v1, same UNet) samples, and the
          cost of one teacher step. With the multi-step weights it is only a cost reference.
        on_step is called after every UNet call (`unet_calls` of them), e.g. a progress bar's
          update: a large image on a CPU runs for hours.
        """
        if rng not in ("official", "per-sample"):
            raise ValueError(f"rng must be 'official' or 'per-sample', got {rng!r}")
        self._check_steps(steps)
        self._check_lr(lr)
        batch, _, height, width = lr.shape
        ids = self._check_sample_ids(sample_ids, batch)  # used by rng="per-sample" only
        chop, stride = resolve_chop(chop_size, chop_stride)

        y0 = (lr.to(self.device, torch.float32) - 0.5) / 0.5
        if stream is not None and (rng != "official" or stream.device != self.device):
            raise ValueError("a noise stream is continued with rng='official' on its own device")
        official = None
        if rng == "official":
            official = stream if stream is not None else OfficialNoise(seed, self.device)

        def noise_for(patch_index: int) -> NoiseSource:
            if official is not None:  # one stream, continuing across patches
                return official
            return PerSampleNoise(seed, ids, self.device, patch_index)

        if height <= chop and width <= chop:
            result = self._sample_func(y0, noise_for(0), one_step, on_step)
        else:
            result = self._sample_chopped(y0, chop, stride, noise_for, one_step, on_step)
        return result.clamp(-1.0, 1.0) * 0.5 + 0.5

    def _sample_chopped(
        self,
        y0: torch.Tensor,
        chop: int,
        stride: int,
        noise_for: Callable[[int], NoiseSource],
        one_step: bool,
        on_step: Callable[[], object] | None,
    ) -> torch.Tensor:
        """Upstream's chopping: each chop x chop LR patch sampled on its own, the SR patches
        averaged uniformly where they overlap (in [-1, 1], before the final clamp)."""
        batch, _, height, width = y0.shape
        sf = self.scale
        total = torch.zeros(batch, 3, height * sf, width * sf, device=self.device)
        count = torch.zeros_like(total)
        for patch in chop_grid(height, width, chop, stride):
            rows = slice(patch.top, patch.top + patch.height)
            cols = slice(patch.left, patch.left + patch.width)
            out = self._sample_func(y0[:, :, rows, cols], noise_for(patch.index), one_step, on_step)
            sr_rows = slice(patch.top * sf, (patch.top + patch.height) * sf)
            sr_cols = slice(patch.left * sf, (patch.left + patch.width) * sf)
            total[:, :, sr_rows, sr_cols] += out
            count[:, :, sr_rows, sr_cols] += 1
        return total / count

    def noise_shapes(
        self,
        batch: int,
        height: int,
        width: int,
        chop_size: int | None = None,
        chop_stride: int | None = None,
    ) -> list[torch.Size]:
        """The shapes of the noise draws one multi-step `sample` call makes, in order.

        Drawing them from an official stream advances it exactly as that call would, so a run
        that skips images (a resumed cache) still gives every later image its own noise.
        """
        chop, stride = resolve_chop(chop_size, chop_stride)
        ae = self.config.autoencoder
        down = 2 ** (len(ae.ch_mult) - 1)
        shapes = []
        for patch in chop_grid(height, width, chop, stride):
            latent_h = self._padded(patch.height) * self.scale // down
            latent_w = self._padded(patch.width) * self.scale // down
            shapes += [torch.Size((batch, ae.embed_dim, latent_h, latent_w))] * (1 + self.steps)
        return shapes

    def unet_calls(
        self,
        height: int,
        width: int,
        chop_size: int | None = None,
        chop_stride: int | None = None,
        one_step: bool = False,
    ) -> int:
        """UNet calls one `sample` call makes on an LR image of height x width (the steps of
        every chopped patch)."""
        chop, stride = resolve_chop(chop_size, chop_stride)
        return len(chop_grid(height, width, chop, stride)) * (1 if one_step else self.steps)

    def _padded(self, side: int) -> int:
        """An LR side after `_sample_func`'s padding to a multiple of lq_size."""
        offset = self.config.padding_offset
        return math.ceil(side / offset) * offset

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision in ("fp32", "tf32"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    @contextlib.contextmanager
    def _math_mode(self) -> Iterator[None]:
        """Autocast for bf16/fp16, and TF32 on exactly when precision says so.

        PyTorch's defaults differ by op (cuDNN convolutions TF32 on, matmuls off), so "fp32" would
        otherwise silently mean TF32 convolutions on CUDA.
        """
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = cudnn.allow_tf32, matmul.allow_tf32
        allow = self.precision != "fp32"
        cudnn.allow_tf32 = matmul.allow_tf32 = allow
        try:
            with self._autocast():
                yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved

    def _network_calls(self) -> tuple[Callable[..., torch.Tensor], ...]:
        """(unet, encode, decode), compiled on first use when `compile_mode` is set."""
        if self._networks is None:
            calls: tuple[Callable[..., torch.Tensor], ...] = (
                self.unet,
                self.autoencoder.encode,
                self.autoencoder.decode,
            )
            self._networks = tuple(compile_static(c, self.compile_mode) for c in calls)
        return self._networks

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _call(self, network: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        """One network call (CUDA-graph outputs copied out of the graph's pool), as float32."""
        return run_compiled(network, self.compile_mode, *args).float()

    def _sample_func(
        self,
        y0: torch.Tensor,
        noise: NoiseSource,
        one_step: bool = False,
        on_step: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """One upstream `sample_func` call on LR in [-1, 1]; returns the SR result in [-1, 1]."""
        coeff = self._coefficients
        scale_factor = self.config.diffusion.scale_factor
        height, width = y0.shape[-2:]
        # Right/bottom reflect padding to a multiple of lq_size (upstream sampler.py:130-138).
        pad_h = self._padded(height) - height
        pad_w = self._padded(width) - width
        if pad_h or pad_w:
            y0 = F.pad(y0, (0, pad_w, 0, pad_h), mode="reflect")

        unet, encode, decode = self._network_calls()
        lq = self._layout(y0)
        with self._math_mode():
            y_up = F.interpolate(y0, scale_factor=self.scale, mode="bicubic")
            z_y = self._call(encode, self._layout(y_up)) * scale_factor
            z = z_y + coeff.prior_std * noise.draw(z_y.shape)
            for i in reversed(range(self.steps)):
                x_in = self._layout(z / coeff.input_std[i])
                x0_hat = self._call(unet, x_in, coeff.timesteps[i : i + 1], lq)
                if on_step is not None:
                    on_step()
                if one_step:  # SinSR: the x0 prediction at t = T-1 is the result
                    z = x0_hat
                    break
                mean = coeff.coef1[i] * z + coeff.coef2[i] * x0_hat
                step_noise = noise.draw(z.shape)  # drawn at every step, the last one unused
                z = mean + coeff.noise_std[i] * step_noise if i > 0 else mean
            sr = self._call(decode, self._layout((1 / scale_factor) * z))
        return sr[:, :, : height * self.scale, : width * self.scale].clamp_(-1.0, 1.0)

    # ------------------------------------------------------------------------------ validation

    def _check_steps(self, steps: int | None) -> None:
        if steps is not None and steps != self.steps:
            raise ValueError(
                f"steps={steps} is not supported by {self.name}: ResShift checkpoints are trained "
                f"for a fixed number of steps (T={self.steps} here; 15 for v1/v2, 4 for v3) "
                "and the schedule cannot be respaced. Pass steps=None or the trained T."
            )

    @staticmethod
    def _check_lr(lr: torch.Tensor) -> None:
        if not isinstance(lr, torch.Tensor) or lr.ndim != 4:
            shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
            raise ValueError(f"LR input must be a B×3×h×w tensor, got {shape}")
        if lr.shape[1] != 3:
            raise ValueError(
                f"LR input has {lr.shape[1]} channels (shape {tuple(lr.shape)}); the teacher needs "
                "RGB: convert grayscale by repeating the channel and drop alpha (see "
                "dtkd_pipeline.images)"
            )
        if not lr.is_floating_point():
            raise ValueError(
                f"LR input must be a float tensor in [0, 1], got dtype {lr.dtype}: divide uint8 "
                "images by 255"
            )
        height, width = lr.shape[-2:]
        if min(height, width) < MIN_LR_SIDE:
            raise ValueError(
                f"LR tile {height}×{width} is too small: ResShift reflect-pads each side to a "
                f"multiple of 64, which needs at least {MIN_LR_SIDE} px per side. Use LR tiles of "
                "at least 33 px (64 px or more is best), e.g. crop a larger tile or pad the image."
            )
        low, high = lr.aminmax()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"LR input values span [{low.item():.3g}, {high.item():.3g}]; expected [0, 1] "
                "(divide 8-bit images by 255)"
            )

    @staticmethod
    def _check_sample_ids(sample_ids: Sequence[int] | torch.Tensor | None, batch: int) -> list[int]:
        if sample_ids is None:
            return list(range(batch))
        ids = [
            int(v)
            for v in (sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else sample_ids)
        ]
        if len(ids) != batch:
            raise ValueError(f"got {len(ids)} sample_ids for a batch of {batch}")
        return ids
