"""SR image-quality metrics through pyiqa, offline, with the SR papers' conventions.

* ``psnr`` and ``ssim`` are computed by default on the Y channel of BT.601 YCbCr with ``scale``
  pixels cropped from every border (BasicSR/SwinIR convention; keys ``psnr_y``/``ssim_y``), or on
  RGB with ``color="rgb"`` (keys ``psnr``/``ssim``, same border crop). pyiqa's own default for
  ``psnry``/``ssim`` is the Y of YIQ, which gives different numbers, so the colour space is passed
  explicitly. pyiqa's SSIM module rounds Y·255 to integers first (MATLAB's uint8 ``rgb2ycbcr``),
  which lowers SSIM-Y by ~0.001 against SwinIR's and BasicSR's float Y, so ``ssim`` on Y feeds
  pyiqa's SSIM function the unrounded Y (:class:`FloatYSSIM`) and PSNR-Y and SSIM-Y share one
  convention; pyiqa's PSNR adds 1e-8 to the MSE (kept).
* ``lpips`` (full-reference, AlexNet v0.1, whole image), ``musiq`` (KonIQ-10k), ``niqe`` and
  ``clipiqa`` (no-reference, on the SR image only) use pyiqa's defaults, as ResShift reports them.

Nothing is ever downloaded: :data:`METRICS` lists each metric's weight files with the folder under
``torch.hub.get_dir()`` (``$TORCH_HOME/hub``) they must be in, and :class:`MetricSuite` checks
them before building any metric. pyiqa fixes its own cache folder when it is first imported, so
its files are handed over by explicit path (``pretrained_model_path=``), computed when the suite is
built; torchvision backbones and CLIP look under ``torch.hub.get_dir()`` themselves, at call time.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.error import URLError

import torch
from torch import nn
from tqdm.auto import tqdm

from dtkd_pipeline.images import as_saved_8bit
from dtkd_pipeline.progress import hidden_unless

__all__ = [
    "METRICS",
    "FloatYSSIM",
    "FullReferenceMetrics",
    "MetricSpec",
    "MetricSuite",
    "MetricUnavailableError",
    "MetricWeightsError",
    "MissingWeight",
    "WeightFile",
    "evaluate_pairs",
    "missing_metric_weights",
    "result_key",
]

Color = Literal["y", "rgb"]

# pyiqa's get_url_from_name(): hf_hub_url(repo_id="chaofengc/IQA-PyTorch-Weights", filename=...).
# An HF_ENDPOINT mirror replaces the host when pyiqa downloads; the file name stays the same.
PYIQA_WEIGHTS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric loads: ``torch.hub.get_dir() / folder / filename``, and where to get it.

    ``pass_as``: the pyiqa keyword that receives this file's path explicitly, for files that
    pyiqa would otherwise look for in the cache folder it fixed at import time. ``None``: the
    loading library (torchvision, CLIP) finds the file under ``torch.hub.get_dir()`` itself.
    """

    filename: str
    folder: str  # "pyiqa" (pyiqa's own), "checkpoints" (torchvision), "clip" (pyiqa's CLIP loader)
    url: str
    pass_as: str | None = None
    note: str = ""

    def path(self) -> Path:
        """The expected location, from ``TORCH_HOME`` as it is now (``torch.hub.get_dir()``)."""
        return Path(torch.hub.get_dir()) / self.folder / self.filename


@dataclass(frozen=True)
class MetricSpec:
    """How to build one metric with pyiqa, and what it needs offline."""

    name: str
    pyiqa_name: str
    kwargs: Mapping[str, Any]
    full_reference: bool
    lower_is_better: bool
    weights: tuple[WeightFile, ...] = ()
    color_option: bool = False  # honours ``color`` and crops ``crop_border`` (psnr, ssim)
    needs_clip: bool = False  # imports openai-clip (pkg_resources: needs setuptools<82)


def _pyiqa_file(filename: str) -> WeightFile:
    return WeightFile(filename, "pyiqa", PYIQA_WEIGHTS_URL + filename, "pretrained_model_path")


# File names and URLs from pyiqa 0.1.16: archs/lpips_arch.py (default_model_urls['0.1_alex'];
# its alexnet() always loads torchvision's IMAGENET1K_V1 weights), archs/musiq_arch.py
# ('koniq10k', the 'musiq' default), archs/niqe_arch.py ('url', version 'original'),
# archs/clip_model.py (_MODELS['RN50'], downloaded to get_dir()/clip, the CLIPIQA default).
METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        "psnr": MetricSpec(
            "psnr",
            "psnr",
            MappingProxyType({}),
            full_reference=True,
            lower_is_better=False,
            color_option=True,
        ),
        "ssim": MetricSpec(
            "ssim",
            "ssim",
            MappingProxyType({}),
            full_reference=True,
            lower_is_better=False,
            color_option=True,
        ),
        "lpips": MetricSpec(
            "lpips",
            "lpips",
            MappingProxyType({"net": "alex", "version": "0.1"}),
            full_reference=True,
            lower_is_better=True,
            weights=(
                WeightFile(
                    "alexnet-owt-7be5be79.pth",
                    "checkpoints",
                    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                ),
                _pyiqa_file("LPIPS_v0.1_alex-df73285e.pth"),
            ),
        ),
        "musiq": MetricSpec(
            "musiq",
            "musiq",
            MappingProxyType({}),
            full_reference=False,
            lower_is_better=False,
            weights=(_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth"),),
        ),
        "niqe": MetricSpec(
            "niqe",
            "niqe",
            MappingProxyType({}),
            full_reference=False,
            lower_is_better=True,
            weights=(_pyiqa_file("niqe_modelparameters.mat"),),
        ),
        "clipiqa": MetricSpec(
            "clipiqa",
            "clipiqa",
            MappingProxyType({}),
            full_reference=False,
            lower_is_better=False,
            weights=(
                WeightFile(
                    "RN50.pt",
                    "clip",
                    "https://openaipublic.azureedge.net/clip/models/"
                    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
                    note="its sha256 must equal the hex folder in the URL, or CLIP re-downloads it",
                ),
            ),
            needs_clip=True,
        ),
    }
)


SSIM_WINDOW = 11  # the Gaussian window side of SSIM (sigma 1.5), in BasicSR and pyiqa alike
VALIDATION_METRICS = ("psnr", "ssim")  # on Y, border cropped by the scale (distill validation)


def min_scored_side(metrics: Iterable[str], crop_border: int) -> tuple[int, str]:
    """(pixels, which metric needs them): the smallest image side these metrics can score.
    SSIM's 11x11 'valid' window must fit inside the border-cropped image."""
    names = set(metrics)
    if "ssim" in names:
        return SSIM_WINDOW + 2 * crop_border, (
            f"SSIM (its {SSIM_WINDOW}-px window after cropping {crop_border} px borders)"
        )
    if "psnr" in names and crop_border:
        return 2 * crop_border + 1, f"PSNR (after cropping {crop_border} px borders)"
    return 0, ""


class FloatYSSIM(nn.Module):
    """SSIM-Y as SwinIR and BasicSR compute it: BT.601 Y·255 in float64, unrounded, border cropped,
    11×11 Gaussian (σ 1.5) 'valid' windows, through pyiqa's SSIM function."""

    def __init__(self, crop_border: int) -> None:
        super().__init__()
        self.crop_border = crop_border

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        from pyiqa.archs.ssim_arch import ssim
        from pyiqa.utils.color_util import rgb2ycbcr

        c = self.crop_border
        if c:
            sr, gt = sr[..., c:-c, c:-c], gt[..., c:-c, c:-c]

        def luma(image: torch.Tensor) -> torch.Tensor:
            return rgb2ycbcr(image.double())[:, :1] * 255

        return ssim(luma(sr), luma(gt), data_range=255.0)


# ------------------------------------------------------------------------- availability checks


@dataclass(frozen=True)
class MissingWeight:
    """A weight file a metric needs that is not where it must be."""

    metric: str
    filename: str
    expected_path: Path
    url: str


class MetricUnavailableError(RuntimeError):
    """A metric cannot run here (a package cannot be imported, or its weights are missing)."""


class MetricWeightsError(MetricUnavailableError):
    """Weight files are missing; the message lists each file, where to put it and its URL."""

    def __init__(
        self, missing: Sequence[MissingWeight], other: Mapping[str, str] | None = None
    ) -> None:
        self.missing = list(missing)
        self.other = dict(other or {})
        lines = [
            f"metric weights missing (nothing is downloaded): place these {len(self.missing)} "
            f"file(s) as shown, or pass --skip-unavailable (evaluate.skip_unavailable: true) to "
            f"record these metrics as skipped and compute the others:"
        ]
        lines += [f"  {m.metric}: {m.expected_path}  <- {m.url}{_note(m)}" for m in self.missing]
        lines.append(
            f"The folders are under torch.hub.get_dir() = {torch.hub.get_dir()} "
            "($TORCH_HOME/hub); set TORCH_HOME to use another cache."
        )
        lines += [f"Also unavailable: {name}: {reason}" for name, reason in self.other.items()]
        super().__init__("\n".join(lines))


def result_key(name: str, color: str) -> str:
    """The result key of metric ``name``: ``psnr_y``/``ssim_y`` on Y, else the name."""
    return f"{name}_y" if METRICS[name].color_option and color == "y" else name


def _note(missing: MissingWeight) -> str:
    notes = [w.note for w in METRICS[missing.metric].weights if w.filename == missing.filename]
    return f"  ({notes[0]})" if notes and notes[0] else ""


def _specs(names: Iterable[str]) -> list[MetricSpec]:
    names = list(names)  # read twice below; a generator would be empty the second time
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    return [METRICS[name] for name in dict.fromkeys(names)]


def missing_metric_weights(names: Iterable[str]) -> list[MissingWeight]:
    """The weight files of ``names`` that are absent, located from ``TORCH_HOME`` as it is now."""
    return [
        MissingWeight(spec.name, weight.filename, weight.path(), weight.url)
        for spec in _specs(names)
        for weight in spec.weights
        if not weight.path().is_file()
    ]


def _import_problem(module: str) -> str | None:
    """Why ``module`` cannot be imported (with the fix), or None when it can."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' deprecation warning from openai-clip
            importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == "pkg_resources":
            return (
                f"{module} cannot be imported: openai-clip 1.0.1 imports pkg_resources, which "
                "setuptools 82 removed (openai/CLIP#528); install 'setuptools<82'"
            )
        package = {"clip": "openai-clip", "pyiqa": "dtkd-pipeline[eval] (pyiqa)"}.get(module)
        return f"{module} cannot be imported ({err}); install {package or err.name}"
    except Exception as err:  # any import-time failure makes the metric unusable, not the run
        return f"{module} cannot be imported ({type(err).__name__}: {err})"
    return None


# ---------------------------------------------------------------------------------- the suite


class MetricSuite:
    """A set of metrics built once and applied image by image; see the module docstring.

    Weight files and imports are checked before any metric is built. With ``skip_unavailable``
    an unusable metric is left out and its reason recorded in :attr:`skipped`; otherwise
    :class:`MetricWeightsError` (missing files) or :class:`MetricUnavailableError` is raised.
    ``crop_border`` (default ``scale``) applies to psnr and ssim only.
    """

    def __init__(
        self,
        names: Iterable[str],
        scale: int,
        color: Color = "y",
        device: torch.device | str = "cpu",
        skip_unavailable: bool = False,
        crop_border: int | None = None,
    ) -> None:
        if color not in ("y", "rgb"):
            raise ValueError(f"color must be 'y' or 'rgb', got {color!r}")
        self.specs = _specs(names)
        self.scale = scale
        self.color: Color = color
        self.crop_border = scale if crop_border is None else crop_border
        self.device = torch.device(device)
        self.skipped: dict[str, str] = {}
        self.metrics: dict[str, nn.Module] = {}

        self._record_unusable(skip_unavailable)
        self._build_metrics(skip_unavailable)

    def _record_unusable(self, skip_unavailable: bool) -> None:
        """Find the metrics whose library or weight files are missing: raise, or record them in
        `skipped`. Both kinds are reported together, so one round of fixes is enough."""
        problems = self._import_problems()
        missing = missing_metric_weights(spec.name for spec in self.specs)
        if (problems or missing) and not skip_unavailable:
            if missing:
                raise MetricWeightsError(missing, problems)
            raise MetricUnavailableError(
                "metrics unavailable (pass --skip-unavailable to record them as skipped):\n"
                + "\n".join(f"  {name}: {reason}" for name, reason in problems.items())
            )
        self.skipped.update(problems)
        for item in missing:
            reason = f"weight file missing: {item.expected_path} (from {item.url})"
            earlier = self.skipped.get(item.metric)
            self.skipped[item.metric] = f"{earlier}; {reason}" if earlier else reason

    def _build_metrics(self, skip_unavailable: bool) -> None:
        for spec in self.specs:
            if spec.name in self.skipped:
                continue
            try:
                self.metrics[spec.name] = self._create(spec)
            except Exception as err:  # e.g. a corrupt file, or a library trying to download
                reason = f"pyiqa could not build it ({type(err).__name__}: {err})"
                if isinstance(err, URLError):  # a file exists but was refused (e.g. checksum)
                    reason += "; it tried to download: replace its weight file(s) " + ", ".join(
                        str(weight.path()) for weight in spec.weights
                    )
                if not skip_unavailable:
                    raise MetricUnavailableError(f"metric {spec.name}: {reason}") from err
                self.skipped[spec.name] = reason

    def _import_problems(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        pyiqa_problem = _import_problem("pyiqa")
        clip_problem = None
        if pyiqa_problem is None and any(spec.needs_clip for spec in self.specs):
            clip_problem = _import_problem("clip")
        for spec in self.specs:
            reason = pyiqa_problem or (clip_problem if spec.needs_clip else None)
            if reason:
                problems[spec.name] = reason
        return problems

    def _create(self, spec: MetricSpec) -> nn.Module:
        import pyiqa  # late: a slow import, and only needed once metrics are actually built

        if spec.name == "ssim" and self.color == "y":
            return FloatYSSIM(self.crop_border).to(self.device).eval()
        kwargs = dict(spec.kwargs)
        if spec.color_option:
            kwargs["test_y_channel"] = self.color == "y"
            kwargs["crop_border"] = self.crop_border
            if self.color == "y":
                kwargs["color_space"] = "ycbcr"
        for weight in spec.weights:
            if weight.pass_as:
                kwargs[weight.pass_as] = str(weight.path())
        metric = pyiqa.create_metric(spec.pyiqa_name, device=self.device, as_loss=False, **kwargs)
        return metric.eval()

    @property
    def min_hr_side(self) -> tuple[int, str]:
        """`min_scored_side` of the metrics this suite runs."""
        return min_scored_side(self.metrics, self.crop_border)

    def key(self, name: str) -> str:
        return result_key(name, self.color)

    @property
    def keys(self) -> list[str]:
        """Result keys of the metrics that run, in the order given."""
        return [self.key(spec.name) for spec in self.specs if spec.name in self.metrics]

    @property
    def full_reference(self) -> bool:
        """Whether any metric that runs needs the ground truth."""
        return any(METRICS[name].full_reference for name in self.metrics)

    @torch.no_grad()
    def scores(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-image scores, each of shape (N,), for SR (and GT) images N×3×H×W in [0, 1]."""
        sr = sr.detach().to(self.device, torch.float32).clamp(0, 1)
        if self.full_reference:
            if gt is None:
                raise ValueError(f"metrics {self.keys} include full-reference ones: give gt")
            if gt.shape != sr.shape:
                raise ValueError(f"sr {tuple(sr.shape)} and gt {tuple(gt.shape)} differ in shape")
            gt = gt.detach().to(self.device, torch.float32).clamp(0, 1)
        out: dict[str, torch.Tensor] = {}
        for name, metric in self.metrics.items():
            value = metric(sr, gt) if METRICS[name].full_reference else metric(sr)
            out[self.key(name)] = value.reshape(sr.shape[0], -1)[:, 0].double().cpu()
        return out

    def __call__(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> dict[str, float]:
        """Scores of one image (N = 1) as floats, keyed by :meth:`key`."""
        if sr.ndim != 4 or sr.shape[0] != 1:
            raise ValueError(f"expected one image 1x3xHxW, got shape {tuple(sr.shape)}")
        return {key: float(value[0]) for key, value in self.scores(sr, gt).items()}


# ------------------------------------------------------------------- validation during training


class FullReferenceMetrics:
    """PSNR-Y and SSIM-Y of SR images against ground truth, both N x 3 x H x W in [0, 1]."""

    def __init__(self, scale: int, device: torch.device | str = "cpu") -> None:
        self.suite = MetricSuite(VALIDATION_METRICS, scale=scale, color="y", device=device)
        self.device = self.suite.device

    def __call__(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """Batch means, keys ``psnr_y`` and ``ssim_y``."""
        return {key: float(value.mean()) for key, value in self.suite.scores(sr, gt).items()}


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    metrics: FullReferenceMetrics,
    device: torch.device,
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Mean metrics of ``model`` (LR [0,1] -> SR) over (LR, HR) pairs, one whole image at a time.

    Pairs come from `testsets.load_pair` (decoded once by the caller, reused every validation).
    ``progress`` counts the images on a bar that goes when they are done (under the training
    bar: whole images take seconds each on a CPU); one image gets none.
    """
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    shown = progress and len(pairs) >= 2
    bar = tqdm(pairs, desc="validation", unit="img", leave=False, **hidden_unless(shown))
    for lr, hr in bar:
        sr = as_saved_8bit(model(lr.to(device)))
        for key, value in metrics(sr, hr).items():
            totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return {key: value / len(pairs) for key, value in totals.items()}
