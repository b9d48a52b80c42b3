"""Readers for the SR test-set layouts people have, all giving the same :class:`TestSet`.

Layouts (``open_test_set(name, layout, path, scale)``):

``paired``
    An HR and an LR folder, images matched by file stem: ``path/hr`` + ``path/lr`` by default
    (``HR``/``LR`` also accepted), or explicit ``hr_dir``/``lr_dir`` (used as given, not relative
    to ``path``). Reads the pipeline's own ``data/prepared/val`` (the "demo" set). Names pair as
    ``dtkd_pipeline.pairing`` says (DIV2K's ``0801.png`` ↔ ``0801x4.png``, Set5-style
    ``baby_HR.png`` ↔ ``baby_LR.png``); a file left without a partner is an error.
``realsr``
    RealSR (Cai et al., ICCV 2019): ``<root>/{Canon,Nikon}/Test/{scale}/<Name>_HR.png`` and
    ``<Name>_LR{scale}.png``; ``root`` may be the RealSR folder, one camera folder, or a
    ``Test/{scale}`` folder. The RealSR README says versions 1-2 store LR at the HR resolution and
    version 3 at the true LR resolution, while many copies of V3 in circulation hold LR images
    pre-upsampled to the HR size. So an LR image is used as it is when it is 1/scale of its HR,
    and is bicubic-downscaled by ``scale`` (MATLAB imresize, as the prepare stage makes LR) only
    when it has exactly the HR size; the networks take true-resolution LR. Numbers on such
    re-downscaled LR are not comparable with papers that fed a different LR version.
``imagenet-test``
    ResShift's ImageNet-Test: ``<root>/gt/*.png`` (256×256) and ``<root>/lq/*.png`` (64×64),
    matched by stem.
``hr-only``
    A folder of HR images (Set5, Urban100, ...); the LR is made exactly as the prepare stage makes
    it: ``modcrop`` to a multiple of the scale, then MATLAB bicubic (``bicubic_downscale_x4``).

Every layout crops HR at the bottom/right to a multiple of the scale (``modcrop``) and then
requires HR = scale × LR exactly. Loaded images are quantised to 8 bit, as saved images are.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from dtkd_pipeline.images import (
    ImageReadError,
    list_images,
    probe_image,
    read_image,
    to_uint8,
    unreadable_advice,
)
from dtkd_pipeline.pairing import PairingError, listing, naming_rule, pair_by_stem
from dtkd_pipeline.resize import bicubic_downscale_x4, imresize, modcrop

__all__ = [
    "LAYOUTS",
    "TestPair",
    "TestSet",
    "TestSetError",
    "load_pair",
    "open_test_set",
]

Layout = Literal["paired", "realsr", "imagenet-test", "hr-only"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
_REALSR_CAMERAS = ("Canon", "Nikon")
_UNKEYED = ("the set's path", "its hr_dir", "its lr_dir")  # without the set's params key


class TestSetError(ValueError):
    """A test set that cannot be used as it is: empty, unmatched files, or sizes that disagree."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class TestPair:
    """One test image: ``hr`` and its LR file (``None``: LR made by MATLAB bicubic from HR).

    ``lr_may_be_upsampled``: the LR may be stored at the HR size (RealSR); if it is, it is
    bicubic-downscaled by the scale when loaded.
    """

    __test__ = False

    stem: str
    hr: Path
    lr: Path | None
    lr_may_be_upsampled: bool = False


@dataclass(frozen=True)
class TestSet:
    """A named test set: its layout, where it was read from, and its pairs sorted by stem.

    ``read_advice``: what to do about an image of the set that cannot be read (which settings
    to point at a good copy of the set).
    """

    __test__ = False

    name: str
    layout: str
    root: Path
    pairs: list[TestPair]
    read_advice: str = unreadable_advice("the file")

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[TestPair]:
        return iter(self.pairs)

    def load(self, pair: TestPair, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`load_pair`, with pixel data corrupt behind a good header reported as the
        set's image, saying what to do."""
        try:
            return load_pair(pair, scale)
        except ImageReadError as error:
            raise _unreadable(self.name, error, self.read_advice) from error


# ---------------------------------------------------------------------------------- opening


def open_test_set(
    name: str,
    layout: str,
    path: str | os.PathLike[str] | None,
    scale: int,
    hr_dir: str | os.PathLike[str] | None = None,
    lr_dir: str | os.PathLike[str] | None = None,
    check_sizes: bool = True,
    min_hr_side: tuple[int, str] = (0, ""),
    params_key: str | None = None,
    remedy: str | None = None,
) -> TestSet:
    """List and pair a test set's files (see the module docstring for the layouts).

    ``check_sizes`` reads every image header (not the pixels) so a size mismatch is reported now,
    before any model runs, rather than in the middle of an evaluation. ``min_hr_side`` is
    (pixels, who needs them): the smallest HR side (after cropping to a multiple of ``scale``)
    the metrics can score, e.g. ``MetricSuite.min_hr_side``. ``params_key`` is the params entry
    the set comes from (e.g. ``evaluate.sets.0``): errors about its folders name its keys.
    ``remedy`` replaces "point the key at a good copy" in the advice for unreadable images, for
    a set no params key gives (the validation images prepare-data writes).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"test set {name!r}: unknown layout {layout!r}; use one of {LAYOUTS}")
    if scale < 1:
        raise ValueError(f"test set {name!r}: scale must be a positive integer, got {scale}")
    if layout != "paired" and (hr_dir is not None or lr_dir is not None):
        raise ValueError(
            f"test set {name!r}: hr_dir/lr_dir apply to the paired layout only, not {layout!r}"
        )
    if path is None and not (layout == "paired" and hr_dir is not None and lr_dir is not None):
        raise ValueError(f"test set {name!r}: give its path (or hr_dir and lr_dir for 'paired')")
    root = Path(path) if path is not None else Path(str(hr_dir)).parent
    keys = _FolderKeys.of(params_key)
    read_advice = unreadable_advice(
        "the file", remedy or f"point {keys.used(layout, hr_dir, lr_dir)} at a good copy of the set"
    )
    if layout == "paired":
        pairs = _open_paired(name, root, scale, hr_dir, lr_dir, keys)
    elif layout == "realsr":
        pairs = _open_realsr(name, root, scale, keys)
    elif layout == "imagenet-test":
        root = _folder(name, root, layout, keys.path)
        gt = _folder(name, root / "gt", layout, keys.path)
        lq = _folder(name, root / "lq", layout, keys.path)
        pairs = _match_by_stem(name, _images(name, gt), _images(name, lq), gt, lq, scale)
    else:
        folder = _folder(name, root, layout, keys.path)
        pairs = [TestPair(p.stem, p, None) for p in _images(name, folder)]
        _check_unique_stems(name, pairs, folder)
    if check_sizes:
        for pair in pairs:
            try:
                _check_pair_size(pair, scale, min_hr_side)
            except ImageReadError as error:
                raise _unreadable(name, error, read_advice) from error
    return TestSet(name, layout, root, sorted(pairs, key=lambda p: p.stem), read_advice)


def _unreadable(name: str, error: ImageReadError, advice: str) -> ImageReadError:
    return ImageReadError(f"test set {name!r}: {error}; {advice}")


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class _FolderKeys:
    """How errors name the settings that give a set's folders (params keys when known)."""

    path: str
    hr_dir: str
    lr_dir: str

    @classmethod
    def of(cls, params_key: str | None) -> _FolderKeys:
        if params_key is None:
            return cls(*(f"{what} in params.yaml (evaluate.sets)" for what in _UNKEYED))
        return cls(f"{params_key}.path", f"{params_key}.hr_dir", f"{params_key}.lr_dir")

    def used(self, layout: str, hr_dir: object, lr_dir: object) -> str:
        """The settings that gave the set's images (explicit hr_dir/lr_dir replace the path)."""
        explicit = [key for key, given in ((self.hr_dir, hr_dir), (self.lr_dir, lr_dir)) if given]
        path = [] if layout == "paired" and len(explicit) == 2 else [self.path]
        return " / ".join(path + explicit)


def _folder(name: str, folder: Path, layout: str, key: str) -> Path:
    """`folder` when it is one; `key` names the setting that gave it (or the folder above it)."""
    if folder.exists() and not folder.is_dir():
        raise TestSetError(
            f"test set {name!r} ({layout}): {folder} (from {key}) is a file, not a folder; "
            f"point {key} at the test set's folder (unpack the file first if it is an archive)"
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"test set {name!r} ({layout}): folder {folder} does not exist; check {key} or "
            "download/unpack the test set there"
        )
    return folder


def _images(name: str, folder: Path) -> list[Path]:
    found = list_images(folder)
    if not found:
        raise TestSetError(
            f"test set {name!r}: no images in {folder} (looked for .png/.jpg/.webp/.tif/.bmp); "
            "point the set's path at the folder that holds them"
        )
    return found


def _open_paired(
    name: str,
    root: Path,
    scale: int,
    hr_dir: str | os.PathLike[str] | None,
    lr_dir: str | os.PathLike[str] | None,
    keys: _FolderKeys,
) -> list[TestPair]:
    if not (hr_dir and lr_dir):  # the set's path holds the default hr/ or lr/ folder
        root = _folder(name, root, "paired", keys.path)
    hr_folder = (
        _folder(name, Path(hr_dir), "paired", keys.hr_dir)
        if hr_dir
        else _folder(name, _default_dir(root, "hr"), "paired", keys.path)
    )
    lr_folder = (
        _folder(name, Path(lr_dir), "paired", keys.lr_dir)
        if lr_dir
        else _folder(name, _default_dir(root, "lr"), "paired", keys.path)
    )
    hr_files, lr_files = _images(name, hr_folder), _images(name, lr_folder)
    return _match_by_stem(name, hr_files, lr_files, hr_folder, lr_folder, scale)


def _default_dir(root: Path, kind: str) -> Path:
    for candidate in (root / kind, root / kind.upper()):
        if candidate.is_dir():
            return candidate
    return root / kind  # reported as missing by _folder


def _match_by_stem(
    name: str,
    hr_files: list[Path],
    lr_files: list[Path],
    hr_folder: Path,
    lr_folder: Path,
    scale: int,
) -> list[TestPair]:
    """Pair HR/LR files by name (`dtkd_pipeline.pairing`); refuse leftovers."""
    try:
        matched = pair_by_stem(hr_files, lr_files, hr_folder, lr_folder, scale)
    except PairingError as error:
        raise TestSetError(f"test set {name!r}: {error}") from None
    if matched.unmatched_hr or matched.unmatched_lr:
        raise TestSetError(
            f"test set {name!r}: unmatched files: "
            + _joined(
                listing(matched.unmatched_hr, hr_folder, "HR with no LR"),
                listing(matched.unmatched_lr, lr_folder, "LR with no HR"),
                f"{naming_rule(scale)}, or remove the extra files",
            )
        )
    pairs = [TestPair(stem, hr, lr) for stem, hr, lr in matched.pairs]
    _check_unique_stems(name, pairs, hr_folder)
    return pairs


def _check_unique_stems(name: str, pairs: list[TestPair], where: Path) -> None:
    seen: dict[str, Path] = {}
    for pair in pairs:
        if pair.stem in seen:
            raise TestSetError(
                f"test set {name!r}: {seen[pair.stem]} and {pair.hr} (under {where}) give the same "
                f"image name {pair.stem!r}; results are keyed by name, so rename one"
            )
        seen[pair.stem] = pair.hr


def _open_realsr(name: str, root: Path, scale: int, keys: _FolderKeys) -> list[TestPair]:
    root = _folder(name, root, "realsr", keys.path)
    test_dirs = _realsr_test_dirs(root, scale)
    if not test_dirs:
        raise FileNotFoundError(
            f"test set {name!r} (realsr): no Test/{scale} folder under {root}; point path at the "
            f"RealSR folder (holding {'/'.join(_REALSR_CAMERAS)}/Test/{scale}/), a camera folder, "
            f"or a Test/{scale} folder with *_HR.png and *_LR{scale}.png files"
        )
    pairs: list[TestPair] = []
    hr_suffix, lr_suffix = "_hr", f"_lr{scale}"
    for folder in test_dirs:
        hr: dict[str, Path] = {}
        lr: dict[str, Path] = {}
        other: list[Path] = []
        for path in _images(name, folder):
            lowered = path.stem.lower()
            if lowered.endswith(hr_suffix):
                hr[path.stem[: -len(hr_suffix)]] = path
            elif lowered.endswith(lr_suffix):
                lr[path.stem[: -len(lr_suffix)]] = path
            else:
                other.append(path)
        unmatched = [hr[s] for s in hr.keys() - lr.keys()] + [lr[s] for s in lr.keys() - hr.keys()]
        if unmatched or other:
            raise TestSetError(
                f"test set {name!r} (realsr): unmatched files: "
                + _joined(
                    listing(unmatched, folder, f"*_HR / *_LR{scale} without a partner"),
                    listing(other, folder, f"neither *_HR nor *_LR{scale}"),
                    f"every <Name>_HR.png needs a <Name>_LR{scale}.png beside it",
                )
            )
        pairs += [TestPair(s, hr[s], lr[s], lr_may_be_upsampled=True) for s in sorted(hr)]
    _check_unique_stems(name, pairs, root)
    return pairs


def _realsr_test_dirs(root: Path, scale: int) -> list[Path]:
    """The ``Test/{scale}`` folders under ``root`` (RealSR, camera, Test or Test/{scale} folder)."""
    size = str(scale)
    if root.name == size:
        return [root]
    if root.name.lower() == "test" and (root / size).is_dir():
        return [root / size]
    tests = ("Test", "test")
    for test in tests:  # a camera folder
        if (root / test / size).is_dir():
            return [root / test / size]
    found = []
    for camera in _REALSR_CAMERAS:
        candidates = [root / camera / test / size for test in tests]
        found += [folder for folder in candidates if folder.is_dir()][:1]
    return found


# ---------------------------------------------------------------------------------- loading


def load_pair(pair: TestPair, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr, hr)``: 1×3×h×w and 1×3×(scale·h)×(scale·w) float32 in [0, 1], 8-bit quantised.

    HR is modcropped to a multiple of ``scale``; a missing LR is made by MATLAB bicubic exactly
    as the prepare stage makes it; a RealSR LR stored at the HR size is bicubic-downscaled.
    """
    hr_full = read_image(pair.hr).rgb
    hr = modcrop(hr_full, scale)
    if pair.lr is None:
        lr = _bicubic_lr(hr, scale)
    else:
        lr = read_image(pair.lr).rgb
        if pair.lr_may_be_upsampled and lr.shape[:2] == hr_full.shape[:2]:
            lr = _bicubic_lr(modcrop(lr, scale), scale)
    _require_scale(pair, scale, (hr.shape[0], hr.shape[1]), (lr.shape[0], lr.shape[1]))
    return _tensor(lr), _tensor(hr)


def _bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The prepare stage's LR (``bicubic_downscale_x4``); other scales the same imresize by 1/s."""
    if scale == 4:
        return bicubic_downscale_x4(hr)[0]
    return imresize(modcrop(hr, scale), 1 / scale)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    quantised = to_uint8(rgb).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(quantised.transpose(2, 0, 1)))[None]


def _check_pair_size(pair: TestPair, scale: int, min_hr_side: tuple[int, str]) -> None:
    """The size check of :func:`load_pair`, from image headers only."""
    hr_full = _header_size(pair.hr)
    hr = (hr_full[0] - hr_full[0] % scale, hr_full[1] - hr_full[1] % scale)
    side, who = min_hr_side
    if min(hr) < max(side, scale):
        needed = f"{side} px per side for {who}" if side > scale else f"the scale ({scale})"
        raise TestSetError(
            f"{pair.hr}: {hr_full[1]}x{hr_full[0]} is smaller than {needed}; leave the image out "
            "of the test set"
        )
    if pair.lr is None:
        return
    lr = _header_size(pair.lr)
    if pair.lr_may_be_upsampled and lr == hr_full:
        return  # downscaled from the modcropped size when loaded: always exactly HR / scale
    _require_scale(pair, scale, hr, lr)


def _require_scale(pair: TestPair, scale: int, hr: tuple[int, int], lr: tuple[int, int]) -> None:
    if hr != (lr[0] * scale, lr[1] * scale) or min(hr) == 0:
        raise TestSetError(
            f"test set pair {pair.stem!r}: HR {pair.hr} is {hr[1]}x{hr[0]} (width x height, after "
            f"cropping to a multiple of {scale}) but LR {pair.lr} is {lr[1]}x{lr[0]}; HR must be "
            f"exactly {scale}x the LR. Fix or remove the pair, or check the scale"
        )


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) as read_image will return it (EXIF rotation applied), without decoding."""
    header = probe_image(path)
    return header.height, header.width
