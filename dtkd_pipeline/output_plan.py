"""Where the outputs of a command that maps images to images go (``upscale``, ``teacher-sr``).

One image in: the output is a file when it has an image extension, else a folder. A folder in:
the output is a folder. Every plan is checked before any model loads: name clashes, outputs over
inputs, and output locations under a file are refused, each saying what to change. Outputs are
written whole, so a rerun with ``--skip-existing`` may take an existing one as done.
"""

from __future__ import annotations

from pathlib import Path

from dtkd_pipeline.atomic import remove_dead_hidden_temporaries, require_writable_location
from dtkd_pipeline.images import IMAGE_EXTENSIONS, list_images

__all__ = [
    "images_summary",
    "interrupted_images_note",
    "nothing_to_do_note",
    "outputs_to_write",
    "plan_outputs",
    "remove_killed_writes",
]


def _path_for(source: Path, out_dir: Path, suffix: str = "") -> Path:
    """``out_dir/<stem><suffix>.png``: PNG keeps 16-bit samples and alpha."""
    return out_dir / f"{source.stem}{suffix}.png"


def plan_outputs(inputs: Path, out: Path, suffix: str = "") -> list[tuple[Path, Path]]:
    """(input image, output file) pairs for ``inputs`` (a file or a folder) and ``out``."""
    if not inputs.exists():
        raise FileNotFoundError(f"input not found: {inputs}")
    require_writable_location(out, "output")  # an existing folder written in, or file replaced
    if inputs.is_file():
        pairs = [(inputs, _single_target(inputs, out, suffix))]
    else:
        if out.suffix.lower() in IMAGE_EXTENSIONS or (out.exists() and not out.is_dir()):
            raise NotADirectoryError(
                f"input {inputs} is a folder, so the output {out} must be a folder too"
            )
        sources = list_images(inputs)
        if not sources:
            raise FileNotFoundError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {inputs}"
            )
        pairs = [(source, _path_for(source, out, suffix)) for source in sources]
    _check_plan(pairs)
    return pairs


def remove_killed_writes(pairs: list[tuple[Path, Path]]) -> None:
    """Remove the hidden temporaries that writers killed mid-image (SIGKILL, power loss) left in
    the output folders of ``pairs``; a live writer's (another run's) stay."""
    for folder in dict.fromkeys(target.parent for _, target in pairs):
        remove_dead_hidden_temporaries(folder)


def outputs_to_write(
    pairs: list[tuple[Path, Path]], skip_existing: bool
) -> tuple[list[tuple[Path, Path]], int]:
    """The pairs still to write, and how many were left out because their output file exists
    (only with ``skip_existing``; every output is written whole, so one that exists is done)."""
    if not skip_existing:
        return pairs, 0
    todo = [(source, target) for source, target in pairs if not target.is_file()]
    return todo, len(pairs) - len(todo)


def images_summary(written: int, present: int, out: Path) -> str:
    """The last line of a run: what it wrote, and what ``--skip-existing`` found already there."""
    skipped = f"; {present} skipped, already present" if present else ""
    return f"{written} image(s) -> {out}{skipped}"


def nothing_to_do_note(present: int, out: Path) -> str:
    """A ``--skip-existing`` run whose every output is already there."""
    return (
        f"all {present} output image(s) are already in {out}; nothing to do (leave out "
        "--skip-existing to write them again)"
    )


def interrupted_images_note(written: int, total: int, out: Path, present: int = 0) -> str:
    """What an interrupted run left in ``out``: each image is written whole (atomically), so those
    there are complete and a rerun with ``--skip-existing`` writes only the rest. ``total`` counts
    this run's images; ``present`` those it skipped as already there."""
    already = f" ({present} more were already there)" if present else ""
    return (
        f"{written} of {total} image(s) were written to {out}{already}, each complete; run the "
        "same command with --skip-existing to write only the rest"
    )


def _single_target(source: Path, out: Path, suffix: str) -> Path:
    if out.suffix.lower() in IMAGE_EXTENSIONS:
        if out.is_dir():
            raise ValueError(f"output {out} is a folder; name a file or another folder")
        return out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    if out.suffix and not out.exists():  # "x.pgn" is a typo far more often than a folder
        raise ValueError(
            f"output {out}: {out.suffix} is not an image format "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); to write into a new folder of "
            "that name, create it first"
        )
    return _path_for(source, out, suffix)


def _check_plan(pairs: list[tuple[Path, Path]]) -> None:
    """Refuse (input, output) pairs that write two inputs to one file or an output over an input."""
    by_target: dict[Path, list[Path]] = {}
    for source, target in pairs:
        by_target.setdefault(target, []).append(source)
    clashes = {target: sources for target, sources in by_target.items() if len(sources) > 1}
    if clashes:
        target, sources = next(iter(clashes.items()))
        raise ValueError(
            f"{len(clashes)} output name clash(es), e.g. {', '.join(map(str, sources))} "
            f"would all be written to {target}; rename the inputs or choose another output folder"
        )
    inputs = {source.resolve() for source, _ in pairs}
    for source, target in pairs:
        if target.resolve() in inputs:
            raise ValueError(
                f"output {target} would overwrite the input {source}; choose another output folder"
            )
