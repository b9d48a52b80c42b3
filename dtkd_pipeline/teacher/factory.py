"""Building the teacher: networks from a config, official checkpoints, or random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtkd_pipeline.compiled import CompileMode
from dtkd_pipeline.teacher.autoencoder import VQModel
from dtkd_pipeline.teacher.checkpoint import TeacherCheckpointError, load_network_weights
from dtkd_pipeline.teacher.config import TeacherConfig, resolve_config
from dtkd_pipeline.teacher.sampler import Precision, Teacher
from dtkd_pipeline.teacher.unet import UNetModelSwin
from dtkd_pipeline.weights import file_sha256

ConfigLike = str | Path | TeacherConfig | dict[str, Any]


def build_teacher_networks(config: ConfigLike) -> tuple[UNetModelSwin, VQModel]:
    """UNetModelSwin and VQGAN f4 for a preset ("v1"/"v2"/"v3"), YAML path or parsed config.

    Randomly initialised (upstream's init scheme); no weights are loaded.
    """
    parsed = resolve_config(config)
    return UNetModelSwin(parsed.unet), VQModel(parsed.autoencoder)


# What names a given checkpoint file unless the caller says otherwise: the params keys that the
# pipeline stages read the files from.
UNET_SOURCE = "teacher.unet_weights"
AUTOENCODER_SOURCE = "teacher.autoencoder_weights"


def _checkpoint_source(
    given: str | Path | None, source: str, key: str, config: TeacherConfig
) -> str:
    """What named the file: `source` for a given path, else the config's own `key`."""
    if given is not None:
        return source
    return f"{key} in {config.source or f'config {config.version!r}'}"


def _checkpoint_path(
    given: str | Path | None, from_config: str | None, config: TeacherConfig, kind: str
) -> Path:
    if given is not None:
        return Path(given)
    if from_config:
        path = Path(from_config)
        if not path.is_absolute() and config.source is not None:
            beside_config = Path(config.source).parent / path
            if beside_config.exists() or not path.exists():
                path = beside_config
        return path
    raise TeacherCheckpointError(
        f"no {kind} checkpoint given and config {config.version!r} names none: pass "
        f"{'unet' if kind == 'UNet' else 'autoencoder'}=PATH (official files: "
        "resshift_realsrx4_s15_v1.pth / _v2.pth / resshift_realsrx4_s4_v3.pth and "
        "autoencoder_vq_f4.pth)"
    )


def load_teacher(
    config: ConfigLike,
    unet: str | Path | None = None,
    autoencoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    channels_last: bool = False,
    compile_mode: CompileMode | None = None,
    *,
    unet_source: str = UNET_SOURCE,
    autoencoder_source: str = AUTOENCODER_SOURCE,
) -> Teacher:
    """Build the teacher from a config and official checkpoint files (strict, prefix-tolerant).

    Paths default to the config's `model.ckpt_path` / `autoencoder.ckpt_path` (relative paths are
    looked up beside the config file first). The sha256 of each file is recorded for provenance.
    `unet_source` / `autoencoder_source` name what the user set to choose `unet` / `autoencoder`
    (a params key, a CLI option); a missing, unreadable or misfitting file is reported under it.
    """
    parsed = resolve_config(config)
    unet_path = _checkpoint_path(unet, parsed.unet_ckpt_path, parsed, "UNet")
    vq_path = _checkpoint_path(autoencoder, parsed.autoencoder_ckpt_path, parsed, "autoencoder")
    unet_named = _checkpoint_source(unet, unet_source, "model.ckpt_path", parsed)
    vq_named = _checkpoint_source(autoencoder, autoencoder_source, "autoencoder.ckpt_path", parsed)
    unet_model, vq_model = build_teacher_networks(parsed)
    load_network_weights(unet_model, unet_path, "unet", parsed.version, unet_named)
    load_network_weights(vq_model, vq_path, "autoencoder", parsed.version, vq_named)
    teacher = Teacher.from_networks(
        unet_model,
        vq_model,
        parsed,
        device=device,
        precision=precision,
        random_weights=False,
        channels_last=channels_last,
        compile_mode=compile_mode,
    )
    teacher.checkpoint_sha256 = {
        "unet": file_sha256(unet_path),
        "autoencoder": file_sha256(vq_path),
    }
    return teacher


def random_teacher(
    config: ConfigLike,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    channels_last: bool = False,
    compile_mode: CompileMode | None = None,
) -> Teacher:
    """A teacher with random weights (tests and speed benchmarks only), named "...-RANDOM-WEIGHTS".

    Initialisation uses its own RNG state (seeded with `seed`), leaving the global one untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model, vq_model = build_teacher_networks(config)
        # The UNet's zero-initialised convolutions (output layer, residual branches) are what
        # training fills in; left at zero, it predicts 0 for every input and every tile would
        # come out the same image, hiding tile-order or noise-seeding bugs from the tests.
        for module in unet_model.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.any():
                module.reset_parameters()
    teacher = Teacher.from_networks(
        unet_model,
        vq_model,
        resolve_config(config),
        device=device,
        precision=precision,
        random_weights=True,
        channels_last=channels_last,
        compile_mode=compile_mode,
    )
    teacher.checkpoint_sha256 = {"unet": None, "autoencoder": None}
    return teacher
