"""``dtkd-pipeline teacher-sr``: the ResShift teacher on an image file or a folder, PNGs out.

Mirrors the official inference script (one image per call, the official RNG stream, LR-space
chopping for large images, output rounded to 8 bit) with one deliberate difference: the stream is
re-seeded for every image, so an image's result does not depend on which images came before it.
The first image of a run is therefore bit-identical to the official script's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dtkd_pipeline.devices import resolve_device
from dtkd_pipeline.images import ImageReadError, read_image, unreadable_advice, write_image
from dtkd_pipeline.output_plan import (
    images_summary,
    interrupted_images_note,
    nothing_to_do_note,
    outputs_to_write,
    plan_outputs,
    remove_killed_writes,
)
from dtkd_pipeline.progress import hidden_unless
from dtkd_pipeline.teacher.config import (
    AUTOENCODER_WEIGHTS,
    VERSION_WEIGHTS,
    TeacherConfigError,
    resolve_config,
)
from dtkd_pipeline.teacher.factory import load_teacher
from dtkd_pipeline.teacher.sampler import MIN_LR_SIDE, Teacher, check_precision, resolve_chop
from dtkd_pipeline.weights import WeightsError, offering_local_copy, resolve_weights


def super_resolve_paths(
    inputs: Path,
    out: Path,
    *,
    version: str = "v1",
    steps: int | None = None,
    seed: int = 12345,
    chop_size: int = 512,
    chop_stride: int | None = None,
    weights_dir: Path | None = None,
    unet: str | None = None,
    autoencoder: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    skip_existing: bool = False,
) -> list[Path]:
    """Super-resolve one image into ``out`` (a file with an image extension, else a folder) or a
    folder into ``<out>/<stem>.png``; returns the written paths.

    Everything that can refuse the run (outputs, images, steps, chopping, precision, device,
    weights) is checked before the teacher loads and before any output folder is created.
    Temporaries that killed writers left in the output folder are removed first.
    ``skip_existing``: inputs whose output file exists are left out (an interrupted run's rest);
    when that is all of them, no weights are resolved and nothing is written.
    """
    plan = plan_outputs(inputs, out)
    remove_killed_writes(plan)
    resolve_chop(chop_size, chop_stride)
    target = resolve_device(device)
    check_precision(precision, target.type)
    _check_version_options(version, steps, unet)
    todo, present = outputs_to_write(plan, skip_existing)
    if not todo:
        print(nothing_to_do_note(present, out))
        return []
    _check_images([path for path, _ in todo])  # before ~700 MB of weights download
    unet_path = _teacher_file("--unet", unet, VERSION_WEIGHTS.get(version, ""), weights_dir)
    vq_path = _teacher_file("--autoencoder", autoencoder, AUTOENCODER_WEIGHTS, weights_dir)
    teacher = load_teacher(
        version,
        unet=unet_path,
        autoencoder=vq_path,
        device=target,
        precision=precision,
        unet_source="--unet",  # the options that choose the files, not the params keys
        autoencoder_source="--autoencoder",
    )
    written: list[Path] = []
    try:
        # One image has only its step bar (as upscale shows only its tile bar).
        images = tqdm(todo, desc="teacher-sr", unit="img", **hidden_unless(len(todo) >= 2))
        for path, output in images:
            written.append(
                _super_resolve_file(
                    teacher, path, output, seed=seed, chop_size=chop_size, chop_stride=chop_stride
                )
            )
    except KeyboardInterrupt as interrupt:  # the CLI prints the note
        interrupt.add_note(interrupted_images_note(len(written), len(todo), out, present))
        raise
    print(images_summary(len(written), present, out))
    return written


def _teacher_file(option: str, given: str | None, default: str, weights_dir: Path | None) -> Path:
    """The weights file the user named with ``option``, else the ``default`` release; errors
    name the option, and an unobtainable default says the option takes a local copy."""
    try:
        return resolve_weights(given or default, weights_dir=weights_dir)
    except WeightsError as error:
        if given:
            raise WeightsError(f"{option} {given}: {error}") from error
        raise offering_local_copy(error, option) from error


def _check_version_options(version: str, steps: int | None, unet: str | None) -> None:
    """Refuse a step count the version was not trained for, or a config file without weights."""
    trained = resolve_config(version).diffusion.steps
    if steps is not None and steps != trained:
        raise TeacherConfigError(
            f"--steps {steps}: ResShift {version} was trained for {trained} steps and only works "
            f"with them; drop --steps or pass --steps {trained}"
        )
    if unet is None and version not in VERSION_WEIGHTS:
        raise TeacherConfigError(
            f"--version {version} is a config file: pass --unet with its weights"
        )


def _check_images(paths: list[Path]) -> None:
    """Name every image the teacher cannot take in one ImageReadError; note those it reduces."""
    reduced, unusable = [], []
    for path in paths:
        try:
            image = read_image(path)  # (decoding twice costs nothing beside 15 diffusion steps)
        except ImageReadError as error:
            unusable.append(f"{error}; {unreadable_advice('the file')}")
            continue
        height, width = image.rgb.shape[:2]
        if min(height, width) < MIN_LR_SIDE:
            unusable.append(
                f"{path}: {width}x{height} is too small for the teacher (its sides need at least "
                f"{MIN_LR_SIDE} px); pad or enlarge the image, or leave it out"
            )
        if image.alpha is not None or image.bit_depth > 8:
            reduced.append(path.name)
    if unusable:
        raise ImageReadError(
            f"{len(unusable)} image(s) cannot be super-resolved; nothing was written:\n  "
            + "\n  ".join(unusable)
        )
    if reduced:  # the teacher's VQGAN decodes 8-bit RGB; say so rather than drop data silently
        print(
            f"note: {len(reduced)} image(s) have alpha or 16-bit samples, which the teacher does "
            f"not keep (outputs are 8-bit RGB): {', '.join(reduced[:5])}"
        )


def _super_resolve_file(
    teacher: Teacher,
    path: Path,
    output: Path,
    *,
    seed: int,
    chop_size: int,
    chop_stride: int | None,
) -> Path:
    """Run the teacher on one image (a progress bar over its UNet calls) and write its output."""
    image = read_image(path)
    lr = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))[None]
    calls = teacher.unet_calls(*lr.shape[-2:], chop_size=chop_size, chop_stride=chop_stride)
    with tqdm(total=calls, desc=path.name, unit="step", leave=False) as steps:
        sr = teacher.sample(
            lr,
            seed=seed,
            rng="official",
            chop_size=chop_size,
            chop_stride=chop_stride,
            on_step=steps.update,
        )
    rgb = sr[0].permute(1, 2, 0).cpu().numpy()
    output.parent.mkdir(parents=True, exist_ok=True)  # only once there is a result to write
    return write_image(output, rgb)
