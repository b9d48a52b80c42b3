"""Pair HR and LR image files by name, for the prepare stage's LR folder and the test-set readers.

Stems are matched exactly first. Files left over are then matched after dropping one trailing
decoration, case-insensitively: ``_x{scale}``, ``x{scale}``, ``_LR`` or ``_HR``, so DIV2K's
``0801.png`` ↔ ``0801x4.png`` and Set5-style ``baby_HR.png`` ↔ ``baby_LR.png`` pair up. A name
pairs only if exactly one file on the other side matches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_LISTED = 10  # file names shown in one error message


class PairingError(ValueError):
    """Names that pair ambiguously; the message names the files and says how to fix them."""


@dataclass(frozen=True)
class StemPairs:
    """HR/LR files paired by name: `pairs` holds (shared name, HR path, LR path), sorted by name.

    Two pairs can share a name (a.png ↔ a.png and a_HR.png ↔ a_LR.png); callers keying results
    by name must check.
    """

    pairs: list[tuple[str, Path, Path]]
    unmatched_hr: list[Path]
    unmatched_lr: list[Path]


def _decorations(scale: int) -> tuple[str, ...]:
    # Longest first, so "_x4" is stripped whole rather than leaving a trailing "_".
    return (f"_x{scale}", "_lr", "_hr", f"x{scale}")


def naming_rule(scale: int) -> str:
    """One sentence on how LR files must be named, for error messages."""
    return (
        "LR files must have the HR file's stem, optionally with one of "
        f"{', '.join(_decorations(scale))} appended"
    )


def _keys(stem: str, scale: int) -> set[str]:
    """The stem, and the stem without one trailing decoration."""
    keys = {stem}
    lowered = stem.lower()
    for decoration in _decorations(scale):
        if lowered.endswith(decoration) and len(stem) > len(decoration):
            keys.add(stem[: -len(decoration)])
            break
    return keys


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    """Files keyed by stem; two files with one stem (a.png, a.jpg) make pairing ambiguous."""
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise PairingError(
                f"{found[path.stem].name} and {path.name} in {folder} share a stem, so pairing "
                "by name is ambiguous; keep one of them"
            )
        found[path.stem] = path
    return found


def listing(paths: list[Path], folder: Path, what: str) -> str:
    """'3 HR with no LR in folder: a.png, b.png, c.png', at most MAX_LISTED names ('' for none;
    join several with '; ')."""
    if not paths:
        return ""
    names = sorted(p.name for p in paths)
    return f"{len(names)} {what} in {folder}: {abbreviated(names)}"


def abbreviated(names: list[str]) -> str:
    """'a, b and 3 more': the first MAX_LISTED names, then how many were left out."""
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def pair_by_stem(
    hr_files: list[Path], lr_files: list[Path], hr_folder: Path, lr_folder: Path, scale: int
) -> StemPairs:
    """Pair by exact stem, then by stem without a decoration; leftovers are returned, not raised."""
    hr_by_stem = _by_stem(hr_files, hr_folder)
    lr_by_stem = _by_stem(lr_files, lr_folder)
    exact = sorted(hr_by_stem.keys() & lr_by_stem.keys())
    pairs = [(stem, hr_by_stem.pop(stem), lr_by_stem.pop(stem)) for stem in exact]

    hr_by_key: dict[str, list[str]] = {}
    for stem in hr_by_stem:
        for key in _keys(stem, scale):
            hr_by_key.setdefault(key, []).append(stem)
    claimed: dict[str, str] = {}  # HR stem -> the LR stem that matched it
    ambiguous: list[str] = []
    for lr_stem in sorted(lr_by_stem):
        candidates = sorted({hr for key in _keys(lr_stem, scale) for hr in hr_by_key.get(key, [])})
        if len(candidates) > 1 or (candidates and candidates[0] in claimed):
            others = [*candidates, *(claimed[c] for c in candidates if c in claimed)]
            ambiguous.append(f"{lr_stem} ~ {', '.join(others)}")
        elif candidates:
            claimed[candidates[0]] = lr_stem
    if ambiguous:
        raise PairingError(
            f"these names match more than one file in {hr_folder} / {lr_folder}: "
            f"{'; '.join(ambiguous[:MAX_LISTED])}; rename them so stems are unique"
        )
    for hr_stem, lr_stem in claimed.items():
        name = min(_keys(hr_stem, scale) & _keys(lr_stem, scale), key=len)
        pairs.append((name, hr_by_stem.pop(hr_stem), lr_by_stem.pop(lr_stem)))
    return StemPairs(sorted(pairs), list(hr_by_stem.values()), list(lr_by_stem.values()))
