"""The params.yaml schema: typed, validated, overridable with ``key.sub=value``.

Every knob lives in params.yaml; the models below carry no defaults on purpose, so a value can
only come from that file (or an explicit override) and never from a default hidden in code. The
one exception is a test set's optional `hr_dir`/`lr_dir` (paired layout only), documented in
params.yaml.
Errors name the offending key and the file so a user can fix them without reading this module.
"""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from dtkd_pipeline.compiled import CompileMode
from dtkd_pipeline.evaluate.metrics import Color
from dtkd_pipeline.evaluate.testsets import Layout
from dtkd_pipeline.losses.objective import KdLossKind
from dtkd_pipeline.losses.schedule import KdWeightMode
from dtkd_pipeline.losses.wavelet import deepest_dwt_level
from dtkd_pipeline.teacher.noise import RngMode
from dtkd_pipeline.teacher.sampler import Precision

# Integers and booleans are strict: pydantic's lax mode reads YAML's `true` as the integer 1, a
# quoted "8" as 8, and 1 or "yes" as true, so a mistyped value ran instead of being refused.
# Floats stay lax: YAML 1.1 reads an exponent without a dot (1e-4) as a string, which they parse.
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


def _not_a_boolean(value: Any) -> Any:
    """Lax floats still take strings, but YAML's `true` read as 1.0 is a typo, not a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {value}")
    return value


NotBoolean = BeforeValidator(_not_a_boolean)
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False), NotBoolean]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False), NotBoolean]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), NotBoolean]
Fraction = Annotated[float, Field(ge=0, lt=1), NotBoolean]  # in [0, 1)
# What the generators accept; larger seeds failed deep inside a run. The data loader seeds
# numpy (non-negative only); the teacher seeds torch generators (-2**63 <= seed < 2**64).
Seed = Annotated[StrictInt, Field(ge=0, lt=2**63)]
TeacherSeed = Annotated[StrictInt, Field(ge=-(2**63), lt=2**64)]


class ConfigError(ValueError):
    """A params file that cannot be read or does not fit the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompressionParams(_Section):
    codec: Literal["zstd", "blosc"]
    level: Annotated[StrictInt, Field(ge=1, le=9)]


class DataParams(_Section):
    hr_dir: Path
    lr_dir: Path | None
    scale: Literal[4]
    # <= the teacher's chop size (512, upstream's): a larger tile would be sampled as chopped,
    # overlapping patches, which costs more and gains nothing for a tile.
    lr_tile: Annotated[StrictInt, Field(gt=0, le=512)]
    stride: PositiveInt
    small_images: Literal["pad", "skip"]
    val_images: PositiveInt  # distill validates on them
    shard_size: PositiveInt
    compression: CompressionParams
    skip_bad: StrictBool
    workers: PositiveInt
    prepared_dir: Path

    @field_validator("lr_tile")
    @classmethod
    def _tile_fits_teacher(cls, value: int) -> int:
        # ResShift's UNet needs latents (= LR tiles) that are multiples of 64 to avoid padding,
        # so every tile runs in one batch with no per-tile reflect padding.
        if value % 64:
            raise ValueError(
                f"must be a multiple of 64 (ResShift works on 64-px LR blocks), got {value}"
            )
        return value


class TeacherParams(_Section):
    version: str = Field(
        description="ResShift preset (v1, v2, v3) or path to an official YAML config"
    )
    unet_weights: str
    autoencoder_weights: str
    weights_dir: Path | None
    random_weights: StrictBool
    steps: PositiveInt
    seed: TeacherSeed
    rng: RngMode
    precision: Precision
    batch_size: PositiveInt
    # The CUDA-graph modes are not offered: at a teacher batch of 64 the GPU is busy 95 % of the
    # time already (docs/performance.md), and their buffer reuse has not been checked on a GPU.
    compile: Literal["default", "max-autotune-no-cudagraphs"] | None
    dwt: StrictBool
    store: Path
    preview: Path
    preview_tiles: PositiveInt

    @field_validator("version")
    @classmethod
    def _preset_or_config_file(cls, value: str) -> str:
        """Found when params load, not when the teacher is first built (after prepare-data)."""
        from dtkd_pipeline.teacher.config import PRESETS

        if value not in PRESETS and not Path(value).is_file():
            raise ValueError(
                f"{value!r} is neither a ResShift preset ({', '.join(PRESETS)}) nor an existing "
                "official-format YAML config file: name a preset, or fix the path (relative "
                "paths are read from the folder the command runs in)"
            )
        return value

    @model_validator(mode="after")
    def _fits_the_version(self) -> TeacherParams:
        """Weights and step count that do not fit teacher.version, both named at once (changing
        the version usually needs both changed): refused when params load, not when
        cache-teacher starts (after prepare-data, under dvc repro)."""
        problems = [self._weights_problem(), self._steps_problem()]
        if any(problems):
            raise ValueError("; ".join(problem for problem in problems if problem))
        return self

    def _weights_problem(self) -> str | None:
        """A preset with another preset's registered UNet runs silently wrong weights."""
        from dtkd_pipeline.teacher.config import VERSION_WEIGHTS

        meant = VERSION_WEIGHTS.get(self.version)
        registered = set(VERSION_WEIGHTS.values())
        wrong = self.unet_weights in registered and self.unet_weights != meant
        if meant is not None and wrong and not self.random_weights:
            return (
                f"teacher.unet_weights {self.unet_weights!r} are not the weights of "
                f"teacher.version {self.version}: set teacher.unet_weights={meant}"
            )
        return None

    def _steps_problem(self) -> str | None:
        """ResShift checkpoints work only at the step count they were trained for."""
        from dtkd_pipeline.teacher.config import PRESETS, TeacherConfigError, resolve_config

        try:
            trained = resolve_config(self.version).diffusion.steps
        except TeacherConfigError:  # a config file's content is checked when the teacher is built
            return None
        if self.steps == trained:
            return None
        presets = ", ".join(f"{name}: {resolve_config(name).diffusion.steps}" for name in PRESETS)
        source = "preset" if self.version in PRESETS else "config (its diffusion.params.steps)"
        return (
            f"teacher.steps {self.steps} is not the step count of teacher.version "
            f"{self.version}: that ResShift {source} was trained for {trained} steps, and its "
            f"checkpoints work only at that count (presets {presets}); set teacher.steps "
            f"(cache-teacher --steps) to {trained}"
        )

    @field_validator("preview")
    @classmethod
    def _png(cls, value: Path) -> Path:
        if value.suffix.lower() != ".png":
            raise ValueError(f"{value} is written as PNG: give it a name ending in .png")
        return value


def _discrete_wavelet(value: str) -> str:
    import pywt

    if value not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"unknown discrete wavelet {value!r}; see pywt.wavelist(kind='discrete')")
    return value


class KDLossParams(_Section):
    kind: KdLossKind
    levels: Annotated[StrictInt, Field(ge=1, le=4)]
    wavelet: str
    weights: dict[Literal["lf", "mf", "hf"], NonNegativeFloat]
    final_weight: NonNegativeFloat
    schedule: KdWeightMode

    @field_validator("weights")
    @classmethod
    def _all_groups(cls, value: dict[str, float]) -> dict[str, float]:
        missing = {"lf", "mf", "hf"} - set(value)
        if missing:
            raise ValueError(f"needs lf, mf and hf; missing {sorted(missing)}")
        return value

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, value: str) -> str:
        return _discrete_wavelet(value)


class DistillParams(_Section):
    student: str
    iterations: PositiveInt
    batch_size: PositiveInt
    patch_size: PositiveInt
    lr: PositiveFloat
    betas: tuple[Fraction, Fraction]
    weight_decay: NonNegativeFloat
    milestones: list[PositiveInt]
    gamma: PositiveFloat
    grad_clip: NonNegativeFloat
    ema_decay: Fraction
    drop_path: Fraction
    kd: KDLossParams
    augment: StrictBool
    shuffle_buffer: PositiveInt
    patches_per_tile: PositiveInt
    num_workers: NonNegativeInt
    precision: Literal["fp32", "bf16"]
    compile: StrictBool
    seed: Seed
    log_every: PositiveInt
    val_every: PositiveInt
    checkpoint_every: PositiveInt
    keep_last: PositiveInt
    out_dir: Path

    @field_validator("student")
    @classmethod
    def _known_student(cls, value: str) -> str:
        from dtkd_pipeline.student import available_students

        if value not in available_students():
            raise ValueError(f"unknown student {value!r}; available: {available_students()}")
        return value

    @field_validator("patch_size")
    @classmethod
    def _patch_multiple_of_window(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (SwinIR window size), got {value}")
        return value

    @model_validator(mode="after")
    def _milestones_sorted(self) -> DistillParams:
        steps = list(self.milestones)
        if any(a >= b for a, b in itertools.pairwise(steps)):
            # MultiStepLR applies gamma once per listing: [100, 100] would mean gamma**2 at 100.
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones}")
        return self


class TestSetParams(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    layout: Layout
    path: Path
    hr_dir: Path | None = Field(default=None, description="paired layout: explicit HR folder")
    lr_dir: Path | None = Field(default=None, description="paired layout: explicit LR folder")

    @model_validator(mode="after")
    def _folders_for_paired_only(self) -> TestSetParams:
        if self.layout != "paired" and (self.hr_dir is not None or self.lr_dir is not None):
            raise ValueError(
                f"test set {self.name!r}: hr_dir/lr_dir apply to the paired layout only, not "
                f"{self.layout!r}; drop them or use layout: paired"
            )
        return self


class EvaluatedModelsParams(_Section):
    bicubic: StrictBool
    teacher: StrictBool
    one_step: str | None
    students: dict[str, list[Path]]

    @field_validator("students")
    @classmethod
    def _runs_given(cls, value: dict[str, list[Path]]) -> dict[str, list[Path]]:
        blank = [label for label in value if not label.strip()]
        if blank:
            raise ValueError(f"student label {blank[0]!r} is blank; give each student a name")
        empty = [label for label, runs in value.items() if not runs]
        if empty:
            raise ValueError(f"student(s) {empty} list no checkpoint; give at least one per label")
        from dtkd_pipeline.evaluate.contenders import RESERVED_LABELS  # torch: when params load

        taken = sorted(set(value) & set(RESERVED_LABELS))
        if taken:
            raise ValueError(
                f"student label(s) {taken} name built-in rows ({', '.join(RESERVED_LABELS)}), "
                "whose results they would be averaged with; rename them"
            )
        return value

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvaluatedModelsParams:
        if not (self.bicubic or self.teacher or self.one_step or self.students):
            raise ValueError(
                "no model to evaluate: enable bicubic or teacher, or list students or one_step"
            )
        return self


class ComparisonParams(_Section):
    images: list[str]
    crop: Annotated[StrictInt, Field(ge=16)]


class EfficiencyParams(_Section):
    enabled: StrictBool
    lr_size: Annotated[StrictInt, Field(ge=8)]
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)]
    precisions: Annotated[list[Literal["fp32", "bf16", "fp16"]], Field(min_length=1)]
    warmup: NonNegativeInt
    runs: PositiveInt
    teacher: StrictBool
    student_compile: CompileMode | None

    @field_validator("batch_sizes", "precisions")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repeated)}, which would be timed twice")
        return value

    @model_validator(mode="after")
    def _teacher_fits_lr_size(self) -> EfficiencyParams:
        from dtkd_pipeline.teacher import MIN_LR_SIDE  # torch: only when params load

        if self.enabled and self.teacher and self.lr_size < MIN_LR_SIDE:
            raise ValueError(
                f"lr_size {self.lr_size} is too small for the teacher (it needs at least "
                f"{MIN_LR_SIDE} px per side): raise lr_size or set teacher=false"
            )
        return self


class BandsParams(_Section):
    enabled: StrictBool
    source: Literal["cache"] | Path
    levels: Annotated[StrictInt, Field(ge=1, le=4)]
    wavelet: str
    max_tiles: NonNegativeInt
    batch_size: PositiveInt

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, value: str) -> str:
        return _discrete_wavelet(value)


class EvaluateParams(_Section):
    sets: Annotated[list[TestSetParams], Field(min_length=1)]
    models: EvaluatedModelsParams
    metrics: Annotated[
        list[Literal["psnr", "ssim", "lpips", "musiq", "niqe", "clipiqa"]], Field(min_length=1)
    ]
    color: Color
    skip_unavailable: StrictBool
    teacher_seeds: Annotated[list[TeacherSeed], Field(min_length=1)]
    teacher_chop: Annotated[StrictInt, Field(ge=64)]
    student_tile: NonNegativeInt
    student_overlap: NonNegativeInt
    comparison: ComparisonParams
    efficiency: EfficiencyParams
    bands: BandsParams
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
    metrics_dir: Path
    plots_dir: Path
    out_dir: Path

    @model_validator(mode="after")
    def _overlap_inside_tile(self) -> EvaluateParams:
        if self.student_tile and self.student_overlap >= self.student_tile:
            raise ValueError(
                f"student_overlap ({self.student_overlap}) must be smaller than student_tile "
                f"({self.student_tile}); or set student_tile=0 for whole images"
            )
        return self

    @field_validator("teacher_seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"repeats a seed, which would count one run twice: {value}")
        return value

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, value: list[TestSetParams]) -> list[TestSetParams]:
        names = [item.name for item in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"test set names must be unique, repeated: {duplicates}")
        return value


class ReportParams(_Section):
    baseline: str | None
    paper_deltas: dict[str, dict[str, FiniteFloat]]
    out_dir: Path


class Params(_Section):
    data: DataParams
    teacher: TeacherParams
    distill: DistillParams
    evaluate: EvaluateParams
    report: ReportParams

    @model_validator(mode="after")
    def _baseline_is_evaluated(self) -> Params:
        known = {"bicubic", *self.evaluate.models.students}
        if self.report.baseline is not None and self.report.baseline not in known:
            raise ValueError(
                f"report.baseline {self.report.baseline!r} is not an evaluated model; use "
                f"'bicubic' or a label of evaluate.models.students ({sorted(known)})"
            )
        return self

    @model_validator(mode="after")
    def _paper_deltas_name_evaluated_sets_and_metrics(self) -> Params:
        from dtkd_pipeline.evaluate.metrics import result_key  # torch: only when params load

        sets = [item.name for item in self.evaluate.sets]
        keys = [result_key(name, self.evaluate.color) for name in self.evaluate.metrics]
        for set_name, deltas in self.report.paper_deltas.items():
            if set_name not in sets:
                raise ValueError(
                    f"report.paper_deltas names set {set_name!r}, which evaluate.sets lacks; "
                    f"use one of {sets}"
                )
            unknown = sorted(set(deltas) - set(keys))
            if unknown:
                raise ValueError(
                    f"report.paper_deltas.{set_name}: {unknown} are not metric columns; with "
                    f"evaluate.metrics and evaluate.color as set, use {keys}"
                )
        return self

    @model_validator(mode="after")
    def _outputs_apart_from_each_other_and_the_inputs(self) -> Params:
        """Stages replace their output folders whole: two that nest, or an input inside one,
        would be deleted by a stage (or clobber another stage's results)."""
        outputs = {
            "data.prepared_dir": self.data.prepared_dir,
            "teacher.store": self.teacher.store,
            "teacher.preview": self.teacher.preview,
            "distill.out_dir": self.distill.out_dir,
            "evaluate.metrics_dir": self.evaluate.metrics_dir,
            "evaluate.plots_dir": self.evaluate.plots_dir,
            "evaluate.out_dir": self.evaluate.out_dir,
            "report.out_dir": self.report.out_dir,
        }
        inputs = {"data.hr_dir": self.data.hr_dir, "data.lr_dir": self.data.lr_dir}
        absolute = {key: Path(os.path.abspath(path)) for key, path in outputs.items()}
        for a, b in itertools.combinations(absolute, 2):
            if absolute[a].is_relative_to(absolute[b]) or absolute[b].is_relative_to(absolute[a]):
                raise ValueError(
                    f"{a} ({outputs[a]}) and {b} ({outputs[b]}) overlap; each stage replaces "
                    "its output folder whole, so give them separate folders"
                )
        for name, path in inputs.items():
            if path is None:
                continue
            images = Path(os.path.abspath(path))
            for key, folder in absolute.items():
                if images.is_relative_to(folder):
                    raise ValueError(
                        f"{name} ({path}) lies inside {key} ({outputs[key]}), which that stage "
                        f"replaces whole: move the images or choose another {key}"
                    )
                if folder.is_relative_to(images):
                    raise ValueError(
                        f"{key} ({outputs[key]}) lies inside {name} ({path}), a dependency of "
                        f"the prepare stage: DVC refuses an output inside a dependency (and "
                        f"an image written there would be read as training data); choose "
                        f"another {key}"
                    )
        return self

    @model_validator(mode="after")
    def _student_scale_is_data_scale(self) -> Params:
        from dtkd_pipeline.student import student_config  # torch: only when params load

        upscale = student_config(self.distill.student).upscale
        if upscale != self.data.scale:
            raise ValueError(
                f"distill.student {self.distill.student!r} upscales x{upscale} but data.scale is "
                f"{self.data.scale}: choose an x{self.data.scale} student"
            )
        return self

    @model_validator(mode="after")
    def _patch_fits_tile(self) -> Params:
        if self.distill.patch_size > self.data.lr_tile:
            raise ValueError(
                f"distill.patch_size ({self.distill.patch_size}) must not exceed data.lr_tile "
                f"({self.data.lr_tile}): patches are cropped inside cached tiles"
            )
        return self

    @model_validator(mode="after")
    def _tiles_leave_no_gaps(self) -> Params:
        # Here, not in DataParams, so the message names the keys in full.
        data = self.data
        if data.stride > data.lr_tile:
            raise ValueError(
                f"data.stride ({data.stride}) exceeds data.lr_tile ({data.lr_tile}), which leaves "
                "strips between tiles that are never trained on: set data.stride to at most "
                "data.lr_tile (smaller overlaps tiles)"
            )
        return self

    @model_validator(mode="after")
    def _kd_depth_fits_patch(self) -> Params:
        """ptwt decomposes any depth silently; past pywt's maximum level every coefficient of the
        coarsest subbands is boundary padding, so the loss would weigh padding, not the image."""
        kd = self.distill.kd
        # pixel_l1 and fft ignore levels; the DTCWT's at most 4 halvings fit any patch (>= 32 px).
        if kd.kind not in ("dwt", "dwt_uniform"):
            return self
        _require_dwt_depth(
            "distill.kd.levels",
            kd.levels,
            kd.wavelet,
            self.distill.patch_size * self.data.scale,
            "HR patch (distill.patch_size x data.scale)",
            "raise distill.patch_size",
        )
        return self

    @model_validator(mode="after")
    def _band_depth_fits_tile(self) -> Params:
        """As for the KD loss: past pywt's maximum level the coarsest subbands of a cached tile are
        all boundary padding, so the band chart would show padding, not the image."""
        bands = self.evaluate.bands
        if not bands.enabled or bands.source != "cache":  # a folder's image sizes are not known yet
            return self
        _require_dwt_depth(
            "evaluate.bands.levels",
            bands.levels,
            bands.wavelet,
            self.data.lr_tile * self.data.scale,
            "HR tile (data.lr_tile x data.scale)",
            "choose a shorter wavelet",
        )
        return self


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in a mapping (YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one section", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, like dvc exp -S."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section of params")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(
                f"override {item!r}: unknown key {key!r} (check spelling in params.yaml)"
            )
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({problem}); quote it or "
                "close its brackets, e.g. -S 'distill.milestones=[100, 160]'"
            ) from None
    return raw


def _format_validation_error(error: ValidationError, path: Path, overrides: list[str]) -> str:
    lines = [f"{path}: {error.error_count()} invalid value(s):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top level>"
        # A value set with -S is not in the file: name the override, or the user hunts in vain.
        override = _override_setting(key, overrides) if item["loc"] else None
        origin = f" [set by -S {override}]" if override else ""
        if item["type"] == "missing":
            where = f"the -S {override} value" if override else f"{path}"
            lines.append(f"  {key}: missing; add it to {where} (see the documented params.yaml)")
        elif item["type"] == "extra_forbidden":
            lines.append(
                f"  {key}: unknown key; remove it or check its spelling"
                f"{_colon_hint(item['loc'][-1])}{origin}"
            )
        elif item["type"] == "value_error":  # our validators: the message names key and value
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {message}" if not item["loc"] else f"  {key}: {message}{origin}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r}){origin}")
    return "\n".join(lines)


def _override_setting(key: str, overrides: list[str]) -> str | None:
    """The key of the -S override that set ``key`` or a section holding it, the last applied
    (named without its value, which the message already quotes)."""
    for item in reversed(overrides):
        target = item.partition("=")[0]
        if key == target or key.startswith(target + "."):
            return target
    return None


def _colon_hint(name: str | int) -> str:
    """YAML reads ``{name:demo}`` as the one key 'name:demo': say so, since it looks right."""
    if isinstance(name, str) and ":" in name:
        return f" ({name!r}: YAML needs a space after the colon, as in 'key: value')"
    return ""


def _named_text(path: Path) -> io.StringIO:
    """The file's text as a stream named after it: YAML errors then say `in "params.yaml"`, not
    `in "<unicode string>"`. Decoded whole first, so a bad byte's offset is the file's."""
    stream = io.StringIO(path.read_text(encoding="utf-8"))
    stream.name = str(path)  # what PyYAML's reader reports
    return stream


def load_params(path: str | Path, overrides: list[str] | None = None) -> Params:
    """Read and validate params.yaml; raise ConfigError naming the file and key on any problem."""
    path = Path(path)
    try:
        raw = yaml.load(_named_text(path), Loader=_UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise ConfigError(f"params file {path} not found; pass --params PATH") from exc
    except IsADirectoryError as exc:
        raise ConfigError(
            f"params file {path} is a folder; pass --params path/to/params.yaml"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): pass --params path/to/params.yaml"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, teacher, distill, ...)")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, path, overrides or [])) from exc


def section_dict(section: BaseModel) -> dict[str, Any]:
    """A JSON-friendly dict of a params section, for provenance records."""
    return section.model_dump(mode="json")


def _require_dwt_depth(
    key: str, levels: int, wavelet: str, size: int, what: str, remedy: str
) -> None:
    """Refuse a DWT of ``levels`` deeper than pywt's maximum for a ``size``-px square ``what``."""
    deepest = deepest_dwt_level(size, size, wavelet)
    if levels > deepest:
        raise ValueError(
            f"{key} ({levels}) is deeper than the {size}-px {what} allows for wavelet {wavelet}: "
            f"at most {deepest}. Lower {key} or {remedy}"
        )
