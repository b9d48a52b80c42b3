"""Official-format ResShift YAML configs: parsing, `${...}` interpolation and the v1/v2/v3 presets.

Only the inference-relevant blocks are read: `model.params` (UNetModelSwin), `autoencoder.params`
(VQModelTorch f4) and `diffusion.params` (create_gaussian_diffusion). Training blocks are ignored.
The journal config writes `out_channels: ${autoencoder.params.embed_dim}` (an omegaconf
interpolation); `resolve_interpolations` resolves such references without omegaconf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PRESETS: dict[str, str] = {"v1": "v1.yaml", "v2": "v1.yaml", "v3": "v3.yaml"}
"""Preset name -> bundled config; v2 shares the v1 config (reference §1: only weights differ)."""
# Each preset's official checkpoints, by their names in the weights registry (weights.py).
VERSION_WEIGHTS: dict[str, str] = {
    "v1": "resshift-realsr-v1",
    "v2": "resshift-realsr-v2",
    "v3": "resshift-realsr-v3",
}
AUTOENCODER_WEIGHTS = "resshift-vq-f4"  # one VQGAN for every preset

_REFERENCE = re.compile(r"\$\{([^${}]+)\}")


class TeacherConfigError(ValueError):
    """A ResShift config is missing a field, has an unsupported value, or cannot be resolved."""


@dataclass(frozen=True)
class UNetConfig:
    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    num_head_channels: int
    swin_depth: int
    swin_embed_dim: int
    window_size: int
    mlp_ratio: float
    lq_size: int


@dataclass(frozen=True)
class AutoencoderConfig:
    embed_dim: int
    n_embed: int
    z_channels: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    resolution: int
    attn_resolutions: tuple[int, ...]


@dataclass(frozen=True)
class DiffusionConfig:
    sf: int
    steps: int
    kappa: float
    etas_end: float
    min_noise_level: float
    power: float
    scale_factor: float


@dataclass(frozen=True)
class TeacherConfig:
    """Everything the teacher needs from a ResShift config, plus where it came from."""

    version: str  # preset name ("v1"/"v2"/"v3") or the config file's stem
    unet: UNetConfig
    autoencoder: AutoencoderConfig
    diffusion: DiffusionConfig
    unet_ckpt_path: str | None = None
    autoencoder_ckpt_path: str | None = None
    source: str | None = None  # the YAML file it was read from (None for in-memory dicts)

    @property
    def padding_offset(self) -> int:
        # sampler.py pads every sample_func input to a multiple of lq_size (reference §3.3).
        return self.unet.lq_size


def resolve_interpolations(tree: dict[str, Any]) -> dict[str, Any]:
    """Replace `${dotted.path}` references with the values they point to (recursive, cycle-safe)."""

    def lookup(path: str, stack: tuple[str, ...]) -> Any:
        if path in stack:
            raise TeacherConfigError(f"config interpolation cycle: {' -> '.join((*stack, path))}")
        node: Any = tree
        for part in path.strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise TeacherConfigError(
                    f"config interpolation ${{{path}}} points to a missing key"
                )
            node = node[part]
        return resolve(node, (*stack, path))

    def resolve(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {key: resolve(value, stack) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value, stack) for value in node]
        if isinstance(node, str):
            whole = _REFERENCE.fullmatch(node.strip())
            if whole:  # a bare reference keeps the referenced value's type (int stays int)
                return lookup(whole.group(1), stack)
            return _REFERENCE.sub(lambda m: str(lookup(m.group(1), stack)), node)
        return node

    return resolve(tree, ())


def _section(tree: dict[str, Any], dotted: str) -> dict[str, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TeacherConfigError(f"ResShift config has no `{dotted}` block")
        node = node[part]
    if not isinstance(node, dict):
        raise TeacherConfigError(f"ResShift config `{dotted}` must be a mapping")
    return node


def _get(block: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key in block and block[key] is not None:
        return block[key]
    if default is ...:
        raise TeacherConfigError(f"ResShift config `{where}.{key}` is missing")
    return default


def _as_tuple(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in (value if isinstance(value, list | tuple) else [value]))


def _parse_unet(params: dict[str, Any]) -> UNetConfig:
    where = "model.params"
    levels = len(_as_tuple(_get(params, "channel_mult", where)))
    num_res_blocks = _as_tuple(_get(params, "num_res_blocks", where))
    if len(num_res_blocks) == 1:
        num_res_blocks = num_res_blocks * levels
    config = UNetConfig(
        image_size=int(_get(params, "image_size", where)),
        in_channels=int(_get(params, "in_channels", where)),
        model_channels=int(_get(params, "model_channels", where)),
        out_channels=int(_get(params, "out_channels", where)),
        attention_resolutions=_as_tuple(_get(params, "attention_resolutions", where)),
        channel_mult=_as_tuple(_get(params, "channel_mult", where)),
        num_res_blocks=num_res_blocks,
        num_head_channels=int(_get(params, "num_head_channels", where)),
        swin_depth=int(_get(params, "swin_depth", where)),
        swin_embed_dim=int(_get(params, "swin_embed_dim", where)),
        window_size=int(_get(params, "window_size", where)),
        mlp_ratio=float(_get(params, "mlp_ratio", where)),
        lq_size=int(_get(params, "lq_size", where)),
    )
    _refuse_unsupported_unet_options(params)
    if config.lq_size != config.image_size:
        raise TeacherConfigError(
            f"model.params.lq_size={config.lq_size} != image_size={config.image_size}: the LR "
            "feature extractor of the x2 configs is not supported (x4 real-SR configs only)"
        )
    if len(config.num_res_blocks) != levels:
        raise TeacherConfigError("model.params.num_res_blocks must have one entry per channel_mult")
    if config.swin_embed_dim % config.num_head_channels:
        raise TeacherConfigError(
            "model.params.swin_embed_dim must be a multiple of num_head_channels"
        )
    return config


def _refuse_unsupported_unet_options(params: dict[str, Any]) -> None:
    """Refuse UNetModelSwin switches this port does not implement (absent ones take their
    upstream defaults)."""
    unsupported = {
        "cond_lq": (bool(params.get("cond_lq", True)), True),
        "cond_mask": (bool(params.get("cond_mask", False)), False),
        "use_scale_shift_norm": (bool(params.get("use_scale_shift_norm", True)), True),
        "resblock_updown": (bool(params.get("resblock_updown", False)), False),
        "conv_resample": (bool(params.get("conv_resample", True)), True),
        "dims": (int(params.get("dims", 2)), 2),
        "patch_norm": (bool(params.get("patch_norm", False)), False),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise TeacherConfigError(
                f"model.params.{key}={value} is not supported: this port covers the real-world x4 "
                f"SR UNetModelSwin ({key}={expected})"
            )


def _parse_autoencoder(params: dict[str, Any]) -> AutoencoderConfig:
    dd = _section(params, "ddconfig")
    where = "autoencoder.params.ddconfig"
    if bool(dd.get("double_z", False)):
        raise TeacherConfigError(f"{where}.double_z=True is not a VQGAN config")
    return AutoencoderConfig(
        embed_dim=int(_get(params, "embed_dim", "autoencoder.params")),
        n_embed=int(_get(params, "n_embed", "autoencoder.params")),
        z_channels=int(_get(dd, "z_channels", where)),
        in_channels=int(_get(dd, "in_channels", where)),
        out_ch=int(_get(dd, "out_ch", where)),
        ch=int(_get(dd, "ch", where)),
        ch_mult=_as_tuple(_get(dd, "ch_mult", where)),
        num_res_blocks=int(_get(dd, "num_res_blocks", where)),
        resolution=int(_get(dd, "resolution", where, 256)),
        attn_resolutions=_as_tuple(_get(dd, "attn_resolutions", where, [])),
    )


def _parse_diffusion(params: dict[str, Any]) -> DiffusionConfig:
    where = "diffusion.params"
    schedule = _get(params, "schedule_name", where)
    if schedule != "exponential":
        raise TeacherConfigError(
            f"{where}.schedule_name={schedule!r}: only 'exponential' is ported"
        )
    predict = _get(params, "predict_type", where, "xstart")
    if predict != "xstart":
        raise TeacherConfigError(f"{where}.predict_type={predict!r}: only 'xstart' is ported")
    steps = int(_get(params, "steps", where))
    respacing = params.get("timestep_respacing")
    if respacing not in (None, steps, str(steps)):
        raise TeacherConfigError(
            f"{where}.timestep_respacing={respacing!r}: ResShift checkpoints are trained for a "
            "fixed number of steps; respacing is not supported"
        )
    for flag in ("normalize_input", "latent_flag"):
        if not bool(params.get(flag, True)):
            raise TeacherConfigError(f"{where}.{flag}=False is not supported")
    kwargs = params.get("schedule_kwargs") or {}
    return DiffusionConfig(
        sf=int(_get(params, "sf", where, 4)),
        steps=steps,
        kappa=float(_get(params, "kappa", where)),
        etas_end=float(_get(params, "etas_end", where)),
        min_noise_level=float(_get(params, "min_noise_level", where)),
        power=float(_get(kwargs, "power", f"{where}.schedule_kwargs")),
        scale_factor=float(_get(params, "scale_factor", where, 1.0)),
    )


def config_from_dict(
    tree: dict[str, Any], version: str = "custom", source: str | None = None
) -> TeacherConfig:
    """Build a TeacherConfig from an already-loaded official-format YAML tree."""
    tree = resolve_interpolations(tree)
    model = _section(tree, "model")
    autoencoder = _section(tree, "autoencoder")
    return TeacherConfig(
        version=version,
        unet=_parse_unet(_section(tree, "model.params")),
        autoencoder=_parse_autoencoder(_section(tree, "autoencoder.params")),
        diffusion=_parse_diffusion(_section(tree, "diffusion.params")),
        unet_ckpt_path=model.get("ckpt_path"),
        autoencoder_ckpt_path=autoencoder.get("ckpt_path"),
        source=source,
    )


def load_config_file(path: str | Path, version: str | None = None) -> TeacherConfig:
    """Read an official-format ResShift YAML config from disk."""
    path = Path(path)
    if not path.is_file():
        raise TeacherConfigError(
            f"ResShift config {path} not found: pass a preset name ({', '.join(PRESETS)}) or the "
            "path to an official-format YAML config"
        )
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TeacherConfigError(f"ResShift config {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise TeacherConfigError(f"ResShift config {path} must be a YAML mapping")
    return config_from_dict(tree, version=version or path.stem, source=str(path))


def preset_path(name: str) -> Path:
    """Path of a bundled preset config (v1, v2 or v3)."""
    if name not in PRESETS:
        raise TeacherConfigError(f"unknown ResShift preset {name!r}; choose one of {list(PRESETS)}")
    return Path(str(resources.files("dtkd_pipeline.teacher") / "configs" / PRESETS[name]))


def resolve_config(config: str | Path | TeacherConfig | dict[str, Any]) -> TeacherConfig:
    """Accept a preset name, a YAML path, a parsed TeacherConfig or a raw YAML tree."""
    if isinstance(config, TeacherConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, str) and config in PRESETS:
        return load_config_file(preset_path(config), version=config)
    return load_config_file(config)
