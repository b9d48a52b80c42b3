"""Multi-level 2-D DWT subbands and the frequency-group-weighted decomposed DWT distillation loss.

Subband layout (the contract with the teacher cache)
----------------------------------------------------
`dwt_subbands(x, levels=J)` returns a dict, coarsest first, of name -> tensor:

    "LL{J}", "LH{J}", "HL{J}", "HH{J}", "LH{J-1}", "HL{J-1}", "HH{J-1}", ..., "LH1", "HL1", "HH1"

e.g. for J=2: LL2, LH2, HL2, HH2, LH1, HL1, HH1. Each tensor keeps the leading dims of `x`
(B×C for images) and has the spatial size of its level: H/2^j × W/2^j for Haar on even sizes.
Names follow pytorch_wavelets' "LH, HL, HH" order and map to PyWavelets as

    LL_J = cA_J,  LH_j = cH_j (horizontal detail),  HL_j = cV_j (vertical),  HH_j = cD_j (diagonal)

so `pywt.wavedec2(x, wavelet, mode, level=J)` = [LL_J, (LH_J, HL_J, HH_J), ..., (LH1, HL1, HH1)].
Stage one stores each entry as its own float16 array `dwt/<name>` of shape N×3×h_j×w_j
(for Haar and images in [0, 1], |LL_J| <= 2^J and |details| <= 2^(j-1), well inside float16 range).

Cropping cached subbands
------------------------
For Haar, the subbands of an image crop whose offsets and size are multiples of 2^J equal the
same crop of the full image's subbands (level j cropped at offset/2^j). `crop_subbands` does this,
which lets stage two take random patches out of cached teacher tiles without recomputing the DWT.
Longer filters overlap neighbouring pixels, so for them crops of cached subbands differ at borders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ptwt
import pywt
import torch
from torch import nn

ORIENTATIONS = ("LH", "HL", "HH")  # pywt cH, cV, cD
# ptwt boundary modes; each has the PyWavelets mode of the same name ("zero" == pywt "zero").
BOUNDARY_MODES = ("zero", "constant", "symmetric", "reflect", "periodic")
DEFAULT_MODE = "zero"  # exact gradients for every wavelet (see libraries.md §3.4); Haar ignores it


def subband_names(levels: int) -> tuple[str, ...]:
    """Names of the subbands of a `levels`-level decomposition, coarsest first."""
    _check_levels(levels)
    names = [f"LL{levels}"]
    for level in range(levels, 0, -1):
        names.extend(f"{orientation}{level}" for orientation in ORIENTATIONS)
    return tuple(names)


def deepest_dwt_level(width: int, height: int, wavelet: str) -> int:
    """PyWavelets' maximum DWT level for a ``width`` x ``height`` image and this wavelet's filter
    length: deeper, the coarsest subbands are all boundary padding (ptwt decomposes any depth
    without a word)."""
    return pywt.dwt_max_level(min(width, height), wavelet)


def subband_level(name: str) -> int:
    """Decomposition level encoded in a subband name: "HL2" -> 2."""
    return int(name[2:])


def dwt_subbands(
    x: torch.Tensor, levels: int = 2, wavelet: str = "haar", mode: str = DEFAULT_MODE
) -> dict[str, torch.Tensor]:
    """Named `levels`-level 2-D DWT subbands over the last two dims of `x` (layout: module doc).

    Differentiable. Runs in the dtype of `x`, also under autocast (which would otherwise lower
    the convolutions' precision): pass fp32 to cache subbands, then store them as float16.
    """
    _check_levels(levels)
    _check_wavelet(wavelet, mode)
    with torch.autocast(x.device.type, enabled=False):
        coefficients = ptwt.wavedec2(x, wavelet, mode=mode, level=levels)
    subbands = {f"LL{levels}": coefficients[0]}
    for index, details in enumerate(coefficients[1:]):
        level = levels - index
        for orientation, band in zip(ORIENTATIONS, details, strict=True):
            subbands[f"{orientation}{level}"] = band
    return subbands


def crop_subbands(
    subbands: Mapping[str, torch.Tensor], top: int, left: int, height: int, width: int
) -> dict[str, torch.Tensor]:
    """Crop each level-j subband at (top, left, height, width) / 2^j (image-pixel coordinates).

    Exact for Haar (see module doc). All four numbers must be multiples of 2^J (J: coarsest level).
    """
    coarsest = max(subband_level(name) for name in subbands)
    step = 2**coarsest
    if any(value % step for value in (top, left, height, width)) or height <= 0 or width <= 0:
        raise ValueError(
            f"crop (top={top}, left={left}, height={height}, width={width}) must be positive and "
            f"a multiple of {step} to align with {coarsest}-level subbands"
        )
    cropped = {}
    for name, band in subbands.items():
        factor = 2 ** subband_level(name)
        rows = slice(top // factor, (top + height) // factor)
        cols = slice(left // factor, (left + width) // factor)
        cropped[name] = band[..., rows, cols]
    return cropped


def group_weights(
    levels: int, weights: Sequence[float] = (1.0, 2.0, 1.0), uniform: bool = False
) -> dict[str, float]:
    """Weight per subband: LL_J -> w_LF, level-J details -> w_MF, finer details -> w_HF.

    With `uniform=True` every subband weighs 1 (the ablation over J = 1..4).
    """
    names = subband_names(levels)
    if uniform:
        return dict.fromkeys(names, 1.0)
    low, mid, high = _check_weights(weights)
    table = {}
    for name in names:
        if name.startswith("LL"):
            table[name] = low
        else:
            table[name] = mid if subband_level(name) == levels else high
    return table


class DecomposedDWTLoss(nn.Module):
    """L = w_LF·mean|ΔLL_J| + w_MF·Σ_{level-J details} mean|Δb| + w_HF·Σ_{finer details} mean|Δb|.

    Δ is student − teacher per subband. Computed in fp32 (fp64 inputs stay fp64) with autocast
    disabled, because low-precision subband differences of small details are noisy. The teacher
    side may be given as precomputed subbands (e.g. cached float16 and cropped with the patch).
    """

    def __init__(
        self,
        levels: int = 2,
        wavelet: str = "haar",
        weights: Sequence[float] = (1.0, 2.0, 1.0),
        *,
        uniform: bool = False,
        mode: str = DEFAULT_MODE,
    ) -> None:
        super().__init__()
        _check_wavelet(wavelet, mode)
        self.levels = levels
        self.wavelet = wavelet
        self.mode = mode
        self.uniform = uniform
        self.subband_weights = group_weights(levels, weights, uniform)

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, wavelet={self.wavelet!r}, mode={self.mode!r}, "
            f"weights={self.subband_weights}"
        )

    def subband_terms(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None = None,
        teacher_subbands: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unweighted mean|Δb| per subband name (for logging band-wise errors)."""
        if teacher is None and teacher_subbands is None:
            raise ValueError("give the teacher output or its precomputed subbands")
        with torch.autocast(student.device.type, enabled=False):
            student = _at_least_fp32(student)
            if teacher_subbands is None:
                assert teacher is not None
                # The DWT is linear: one transform of the difference instead of one per image
                # halves the loss's cost (same values up to float rounding).
                difference = student - teacher.to(student.dtype)
                deltas = dwt_subbands(difference, self.levels, self.wavelet, self.mode)
            else:
                student_bands = dwt_subbands(student, self.levels, self.wavelet, self.mode)
                teacher_bands = _checked_teacher_subbands(teacher_subbands, student_bands)
                deltas = {
                    name: band - teacher_bands[name].to(band.dtype)
                    for name, band in student_bands.items()
                }
            return {name: deltas[name].abs().mean() for name in self.subband_weights}

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None = None,
        teacher_subbands: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        terms = self.subband_terms(student, teacher, teacher_subbands)
        return sum(self.subband_weights[name] * term for name, term in terms.items())


def _checked_teacher_subbands(
    teacher_subbands: Mapping[str, torch.Tensor], student_bands: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    missing = [name for name in student_bands if name not in teacher_subbands]
    if missing:
        raise ValueError(
            f"teacher subbands lack {missing}; got {sorted(teacher_subbands)}, need "
            f"{list(student_bands)}"
        )
    for name, band in student_bands.items():
        if teacher_subbands[name].shape != band.shape:
            raise ValueError(
                f"teacher subband {name} has shape {tuple(teacher_subbands[name].shape)}, the "
                f"student's has {tuple(band.shape)} (was the cached subband cropped with the "
                "patch?)"
            )
    return teacher_subbands


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")


def _check_wavelet(wavelet: str, mode: str) -> None:
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(
            f"unknown discrete wavelet {wavelet!r}; see pywt.wavelist(kind='discrete')"
        )
    if mode not in BOUNDARY_MODES:
        raise ValueError(f"unknown boundary mode {mode!r}; choose one of {BOUNDARY_MODES}")


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(w) for w in weights)
    if len(values) != 3 or any(not (w >= 0.0 and w < float("inf")) for w in values):
        raise ValueError(
            f"weights must be three finite non-negative numbers (LF, MF, HF), got {weights!r}"
        )
    return values  # type: ignore[return-value]
