"""The ``dtkd-pipeline`` command line: each command reads params and calls one stage in ``stages/``.

Library errors that a user can fix (bad params, missing weights, unreadable images, a cache that
does not match) are printed as one clear message with exit code 1, without a traceback. Ctrl-C
and SIGTERM print one line on what the interrupted command left and exit 130 or 143.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dtkd_pipeline.interrupts import interrupt_exit_code, interrupt_message, sigterm_as_interrupt

if TYPE_CHECKING:  # imported lazily at run time: `--help` stays fast
    from dtkd_pipeline.config import Params

app = typer.Typer(
    help="Diffusion-to-transformer distillation for x4 SR: cache a ResShift teacher, train SwinIR.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _path_text(text: str | Path) -> Path:
    """A path argument; an empty one (an unset shell variable, say) would silently mean '.'.
    (Typer passes defaults, already Paths, through here too.)"""
    if not str(text).strip():
        raise typer.BadParameter(
            "empty path: pass a file or folder (did a shell variable expand to nothing?)"
        )
    return Path(text)


ParamsOption = Annotated[
    Path,
    typer.Option(
        "--params", "-p", parser=_path_text, help="Pipeline parameters (see params.yaml)."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", help="Override a param, e.g. -S distill.iterations=100 (repeatable)."
    ),
]


def _valid_device(value: str | None) -> str | None:
    """Refuse an unknown or absent device before any work (a usage error, exit code 2)."""
    if value is not None:
        from dtkd_pipeline.devices import DeviceError, resolve_device

        try:
            resolve_device(value)
        except DeviceError as error:
            raise typer.BadParameter(str(error)) from None
    return value


def _valid_scheduler(value: str | None) -> str | None:
    """Refuse an empty address (an unset shell variable, say): it would quietly run here."""
    if value is not None and not value.strip():
        raise typer.BadParameter(
            "empty address: pass the dask scheduler's, e.g. --scheduler tcp://HOST:8786, or "
            "leave --scheduler out to run on this machine"
        )
    return value


def _device_option(help_text: str) -> Any:
    return typer.Option(help=help_text, callback=_valid_device)


DeviceOption = Annotated[
    str | None, _device_option("cpu, cuda or cuda:N (default: the params' device or auto).")
]

SkipExistingOption = Annotated[
    bool,
    typer.Option(help="Skip inputs whose output file exists (to finish an interrupted run)."),
]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a complete, user-facing message."""
    from dtkd_pipeline.atomic import OutputFolderError
    from dtkd_pipeline.cache.store import CacheError
    from dtkd_pipeline.config import ConfigError
    from dtkd_pipeline.devices import DeviceError
    from dtkd_pipeline.evaluate.metrics import MetricUnavailableError
    from dtkd_pipeline.evaluate.testsets import TestSetError
    from dtkd_pipeline.images import ImageReadError
    from dtkd_pipeline.student import StudentWeightsError
    from dtkd_pipeline.student.onnx_export import OnnxExportError
    from dtkd_pipeline.teacher import TeacherCheckpointError, TeacherConfigError
    from dtkd_pipeline.train.checkpoint import CheckpointReadError
    from dtkd_pipeline.weights import WeightsError

    return (
        ConfigError,
        WeightsError,
        ImageReadError,
        TeacherCheckpointError,
        TeacherConfigError,
        StudentWeightsError,
        CacheError,
        DeviceError,
        OSError,  # unwritable, read-only or full output locations, unreachable schedulers
        MetricUnavailableError,
        TestSetError,
        OnnxExportError,
        OutputFolderError,
        CheckpointReadError,
    )


def _run(action: Callable[[], Any], also: tuple[type[BaseException], ...] = ()) -> Any:
    """Run a command; user-fixable errors (and ``also``) become one red line and exit code 1.

    Ctrl-C and SIGTERM unwind the same way (cleanup runs, locks are released), then print one
    line on what was left and how to go on, and exit 130 (Ctrl-C) or 143 (SIGTERM).
    """
    try:
        with sigterm_as_interrupt():
            return action()
    except (*_user_errors(), *also) as exc:
        typer.secho(f"error: {_message(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as interrupt:
        typer.secho(f"\n{interrupt_message(interrupt)}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(interrupt_exit_code(interrupt)) from None


def _message(exc: BaseException) -> str:
    """The error's own message, without the worker traceback a DataLoader re-raise wraps it in."""
    if isinstance(exc, OSError) and exc.filename is not None:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror}; {_os_error_advice(exc.errno)}"
    text = str(exc)
    marker = f"\n{type(exc).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


# What to do about a failed write besides choosing another location (default: permissions).
_WRITE_FAILURE_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose another location",
    errno.EDQUOT: "free space within your disk quota or choose another location",
    errno.EIO: "the disk reported an input/output error; check it or choose another location",
}


def _os_error_advice(code: int | None) -> str:
    return _WRITE_FAILURE_ADVICE.get(code, "choose another location or fix its permissions")


def _params(path: Path, overrides: list[str] | None) -> Params:
    from dtkd_pipeline.config import load_params

    return load_params(path, overrides or [])


@app.command("prepare-data")
def prepare_data(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    skip_bad: Annotated[
        bool | None,
        typer.Option(
            "--skip-bad/--no-skip-bad", help="Skip unreadable images (default: data.skip_bad)."
        ),
    ] = None,
) -> None:
    """Stage 1a: tile HR images (and MATLAB-bicubic LR) into data/prepared/train.zarr + val/."""
    from stages import prepare_data as stage

    _run(lambda: stage.run(_params(params, overrides), skip_bad=skip_bad))


@app.command("cache-teacher")
def cache_teacher(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Diffusion steps (sets teacher.steps); must be the checkpoint's."),
    ] = None,
    dwt: Annotated[
        bool | None,
        typer.Option(
            "--dwt/--no-dwt", help="Also store 2-level DWT subbands (default: teacher.dwt)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Delete an existing store and start over.")
    ] = False,
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            parser=_path_text,
            help="Folder with the official .pth files, for offline use (default: "
            "teacher.weights_dir).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="dask.distributed scheduler address: one task per shard (or per batch of shards).",
            callback=_valid_scheduler,
        ),
    ] = None,
    device: Annotated[
        str | None,
        _device_option("cpu, cuda or cuda:N (default: auto; several GPUs: one worker per GPU)."),
    ] = None,
    rebuild_on_change: Annotated[
        bool,
        typer.Option(help="Rebuild a store made with other settings instead of refusing (DVC)."),
    ] = False,
) -> None:
    """Stage 1b: run the ResShift teacher once per tile into data/cache/teacher.zarr (resumable)."""
    from stages import cache_teacher as stage

    extra = _teacher_overrides(overrides, steps, dwt, weights_dir)
    _run(
        lambda: stage.run(
            _params(params, extra),
            overwrite=overwrite,
            scheduler=scheduler,
            device=device,
            rebuild_on_change=rebuild_on_change,
        )
    )


def _teacher_overrides(
    overrides: list[str] | None, steps: int | None, dwt: bool | None, weights_dir: Path | None
) -> list[str]:
    """The -S overrides plus the teacher.* keys that cache-teacher's own flags set."""
    extra = list(overrides or [])
    if steps is not None:
        extra.append(f"teacher.steps={steps}")
    if dwt is not None:
        extra.append(f"teacher.dwt={str(dwt).lower()}")
    if weights_dir is not None:
        # Quoted: a path is a string whatever it holds ("#", ": ", "null").
        extra.append(f"teacher.weights_dir={json.dumps(str(weights_dir))}")
    return extra


@app.command("verify-cache")
def verify_cache(
    path: Annotated[
        Path,
        typer.Argument(
            parser=_path_text,
            help="A teacher store (data/cache/teacher.zarr) or prepared store (…/train.zarr).",
        ),
    ],
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    repair: Annotated[
        bool, typer.Option(help="Recompute corrupt or missing shards; delete partial writes.")
    ] = False,
    device: Annotated[str | None, _device_option("Device for --repair.")] = None,
) -> None:
    """Check every shard's checksum and completion flag (teacher cache or prepared store).

    Exits 1 when a shard is corrupt or missing, or the store was built from another prepared store.
    """
    from stages import cache_teacher as stage

    ok = _run(lambda: stage.verify(path, _params(params, overrides), repair=repair, device=device))
    if not ok:
        raise typer.Exit(1)


@app.command("distill")
def distill(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    device: Annotated[str | None, _device_option("cpu, cuda or cuda:N (default: auto).")] = None,
    restart_on_change: Annotated[
        bool,
        typer.Option(help="Start over when checkpoints were made with other params (DVC)."),
    ] = False,
) -> None:
    """Stage 2: train the SwinIR-small student against GT and the teacher cache (resumable)."""
    from stages import distill as stage

    _run(
        lambda: stage.run(
            _params(params, overrides), device=device, restart_on_change=restart_on_change
        )
    )


@app.command("evaluate")
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    device: DeviceOption = None,
    skip_unavailable: Annotated[
        bool | None,
        typer.Option(
            "--skip-unavailable/--no-skip-unavailable",
            help="Record metrics whose weights are missing as skipped instead of stopping "
            "(default: evaluate.skip_unavailable).",
        ),
    ] = None,
) -> None:
    """Stage 3: metrics of bicubic, teacher and students on the test sets, efficiency, bands."""
    from stages import evaluate as stage

    extra = list(overrides or [])
    if skip_unavailable is not None:
        extra.append(f"evaluate.skip_unavailable={str(skip_unavailable).lower()}")
    _run(lambda: stage.run(_params(params, extra), device=device))


@app.command("report")
def report(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Stage 4: data/report/README.md with metrics, efficiency, band chart, curves and images."""
    from stages import report as stage

    _run(lambda: stage.run(_params(params, overrides)))


@app.command("benchmark")
def benchmark(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    device: DeviceOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            parser=_path_text,
            help="Folder for efficiency.json/.md/.png (default: evaluate.out_dir).",
        ),
    ] = None,
) -> None:
    """Params, FLOPs and latency of the students and the teacher (settings: evaluate.efficiency)."""
    from dtkd_pipeline.atomic import require_folder
    from dtkd_pipeline.devices import resolve_device
    from dtkd_pipeline.stage_files import EFFICIENCY_MD, EFFICIENCY_PNG
    from stages import evaluate as stage

    def action() -> None:
        loaded = _params(params, overrides)
        target = out_dir or loaded.evaluate.out_dir  # created by the atomic writes at the end
        require_folder(target, "--out-dir" if out_dir else "evaluate.out_dir")  # before timing
        with _still_stage_outputs([] if out_dir else [target]):
            stage.run_efficiency(loaded, resolve_device(device or loaded.evaluate.device), target)
        typer.echo((target / EFFICIENCY_MD).read_text())
        typer.echo(f"chart: {target / EFFICIENCY_PNG}")

    _run(action)


@app.command("analyze-bands")
def analyze_bands(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(
            parser=_path_text, help="Student checkpoint(s) (default: evaluate.models.students)."
        ),
    ] = None,
    device: DeviceOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            parser=_path_text,
            help="Folder for bands.json and bands.png (default: evaluate.out_dir/plots_dir).",
        ),
    ] = None,
) -> None:
    """Mean |teacher - student| per DWT subband and group over the cache or a folder (bar chart)."""
    from dtkd_pipeline.atomic import require_folder
    from dtkd_pipeline.devices import resolve_device
    from dtkd_pipeline.upscale import require_model_file
    from stages import evaluate as stage

    def action() -> None:
        loaded = _params(params, overrides)
        for path in model or []:
            require_model_file(path, releases=False)  # the analysis reads checkpoint files
        targets = _band_folders(loaded, out_dir)
        for key, folder in targets.items():  # before the analysis, not after it
            require_folder(folder, key)
        with _still_stage_outputs([] if out_dir else list(targets.values())):
            written = stage.run_bands(
                loaded,
                resolve_device(device or loaded.evaluate.device),
                out_dir or loaded.evaluate.out_dir,
                out_dir or loaded.evaluate.plots_dir,
                _model_labels(model) if model else None,
            )
        typer.echo(f"band analysis -> {written['json']}, chart -> {written['png']}")

    _run(action, also=(ValueError,))  # e.g. teacher images of another size than the student's


def _band_folders(loaded: Params, out_dir: Path | None) -> dict[str, Path]:
    """The folders analyze-bands writes, keyed by the option or param that names them."""
    if out_dir:
        return {"--out-dir": out_dir}
    return {
        "evaluate.out_dir": loaded.evaluate.out_dir,
        "evaluate.plots_dir": loaded.evaluate.plots_dir,
    }


@contextlib.contextmanager
def _still_stage_outputs(folders: list[Path]) -> Iterator[None]:
    """Keep evaluate's own folders replaceable when a side command writes into them: marked as
    stage outputs if they were (or did not exist), so the next `evaluate` may still replace them."""
    from dtkd_pipeline.atomic import is_replaceable, mark_output

    replaceable = [folder for folder in folders if is_replaceable(folder)]
    yield
    for folder in replaceable:
        if folder.is_dir():
            mark_output(folder)


def _model_labels(paths: list[Path]) -> dict[str, Path]:
    """Chart label per checkpoint: its file stem, or folder/stem where stems repeat."""
    stems = Counter(path.stem for path in paths)
    labels: dict[str, Path] = {}
    for path in paths:
        label = path.stem if stems[path.stem] == 1 else f"{path.parent.name}/{path.stem}"
        if label in labels:
            raise ValueError(
                f"--model {path} and {labels[label]} would share the label {label!r}: "
                "give each checkpoint once, from folders with different names"
            )
        labels[label] = path
    return labels


@app.command("upscale")
def upscale(
    inputs: Annotated[
        Path, typer.Argument(parser=_path_text, help="An image file or a folder of images.")
    ],
    output: Annotated[
        Path, typer.Argument(parser=_path_text, help="Output file (for one image) or folder.")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Student checkpoint (default: student.pt in distill.out_dir of --params), an "
            "official SwinIR file, or an official release's name (swinir-s-x2/x3/x4, "
            "downloaded once; see `weights`)."
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture of an official file (default swinir-s-x4); student.pt "
            "records its own."
        ),
    ] = None,
    tile: Annotated[int, typer.Option(min=0, help="LR tile size; 0 = whole image at once.")] = 256,
    overlap: Annotated[int, typer.Option(min=0, help="LR overlap between tiles (blended).")] = 32,
    batch_size: Annotated[int, typer.Option(min=1, help="Tiles per forward pass.")] = 4,
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (CUDA).")] = "fp32",
    device: Annotated[str | None, _device_option("cpu, cuda or cuda:N (default: auto).")] = None,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            "--compile",
            help="torch.compile the student: default, reduce-overhead (CUDA graphs: lowest "
            "latency on a GPU), max-autotune, max-autotune-no-cudagraphs. Compiles once per "
            "tile shape (minutes), so keep --tile fixed.",
        ),
    ] = None,
    export_onnx: Annotated[
        Path | None,
        typer.Option(
            parser=_path_text,
            help="Also export the student to this ONNX file (checked against PyTorch).",
        ),
    ] = None,
    weights_dir: Annotated[
        Path | None,
        typer.Option(parser=_path_text, help="Folder with official .pth files (offline use)."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip unreadable images with a note instead of stopping.")
    ] = False,
    skip_existing: SkipExistingOption = False,
) -> None:
    """Super-resolve images x4 with the distilled student (tiled, keeps bit depth and alpha)."""
    from dtkd_pipeline import upscale as runner
    from dtkd_pipeline.student.onnx_export import check_onnx_target

    if tile and overlap >= tile:  # before the model loads, under the names the user typed
        raise typer.BadParameter(
            f"{overlap} must be smaller than --tile ({tile}); lower --overlap, raise --tile, or "
            "pass --tile 0 to upscale whole images",
            param_hint="'--overlap'",
        )

    def action() -> None:
        if export_onnx is not None:
            check_onnx_target(export_onnx)  # before the images, not after them
        student = model if model is not None else _distilled_student(params)
        runner.upscale_paths(
            inputs,
            output,
            model_path=student,
            arch=arch,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            precision=precision,
            device=device or "auto",
            compile_mode=compile_mode,  # type: ignore[arg-type]  # checked by the upscaler
            weights_dir=weights_dir,
            skip_bad=skip_bad,
            skip_existing=skip_existing,
        )  # prints its own summary line
        if export_onnx is not None:
            _export_student_onnx(student, arch, weights_dir, export_onnx)

    # Option values the upscaler rejects (precision, arch, compile mode); onnx packages missing.
    _run(action, also=(ValueError, ImportError))


def _distilled_student(params: Path) -> str:
    """The student.pt that distill writes into the params' distill.out_dir, for no --model."""
    from dtkd_pipeline.config import ConfigError
    from dtkd_pipeline.stage_files import STUDENT_FILE

    if not params.exists():  # the params' own error would not say that --model avoids them
        raise ConfigError(
            f"no --model given and params file {params} not found: pass --model (a student "
            "checkpoint or an official release's name), or --params naming the params.yaml "
            "whose distill.out_dir holds the trained student.pt"
        )
    return str(_params(params, None).distill.out_dir / STUDENT_FILE)


def _export_student_onnx(
    model: str, arch: str | None, weights_dir: Path | None, target: Path
) -> None:
    """Load the student on the CPU, export it to ``target`` and report the checked error."""
    from dtkd_pipeline.student.onnx_export import export_onnx
    from dtkd_pipeline.upscale import load_upscaler

    student = load_upscaler(model, device="cpu", arch=arch, weights_dir=weights_dir).model
    error = export_onnx(student, target)
    typer.echo(f"ONNX -> {target} (max |onnx - torch| = {error:.1e}, dynamic sizes)")


@app.command("teacher-sr")
def teacher_sr(
    inputs: Annotated[
        Path, typer.Argument(parser=_path_text, help="An image file or a folder of images.")
    ],
    output: Annotated[
        Path,
        typer.Argument(parser=_path_text, help="Output file (for one image) or folder (x4 PNGs)."),
    ],
    version: Annotated[
        str, typer.Option(help="ResShift preset v1, v2, v3 or an official YAML.")
    ] = "v1",
    steps: Annotated[
        int | None, typer.Option(help="Must equal the preset's trained steps.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Noise seed (official default 12345).")] = 12345,
    chop_size: Annotated[int, typer.Option(help="LR chop size for large images.")] = 512,
    chop_stride: Annotated[
        int | None,
        typer.Option(
            help="LR chop stride (default: upstream's auto stride, 512->448, 256->224, 64->48, "
            "else 7/8 of the chop size)."
        ),
    ] = None,
    weights_dir: Annotated[
        Path | None, typer.Option(parser=_path_text, help="Folder with the .pth files.")
    ] = None,
    unet: Annotated[str | None, typer.Option(help="UNet weight name or path.")] = None,
    autoencoder: Annotated[str | None, typer.Option(help="VQGAN weight name or path.")] = None,
    device: Annotated[str | None, _device_option("cpu, cuda or cuda:N (default: auto).")] = None,
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (CUDA).")] = "fp32",
    skip_existing: SkipExistingOption = False,
) -> None:
    """Super-resolve images with the ResShift teacher alone (official sampler, official RNG)."""
    from dtkd_pipeline.teacher.folder import super_resolve_paths

    _run(
        lambda: super_resolve_paths(
            inputs,
            output,
            version=version,
            steps=steps,
            seed=seed,
            chop_size=chop_size,
            chop_stride=chop_stride,
            weights_dir=weights_dir,
            unet=unet,
            autoencoder=autoencoder,
            device=device,
            precision=precision,
            skip_existing=skip_existing,
        ),
        also=(ValueError,),  # chop size, precision and image-size refusals
    )


@app.command("weights")
def weights(
    download: Annotated[
        list[str] | None, typer.Option(help="Download (and verify) these named weights.")
    ] = None,
    weights_dir: Annotated[
        Path | None, typer.Option(parser=_path_text, help="Target folder.")
    ] = None,
) -> None:
    """List the known official checkpoints, their licences, and where they are or would be kept."""
    from dtkd_pipeline import weights as registry
    from dtkd_pipeline.atomic import require_folder

    def action() -> None:
        target = registry.weights_dir(weights_dir)
        # Listing may read a shared read-only folder; downloading writes in it.
        key = "--weights-dir" if weights_dir else "the weights folder"
        require_folder(target, key, writable=bool(download))
        # Names only: a file path would "resolve" to itself and download nothing.
        specs = [registry.get_spec(name) for name in download or []]
        for spec in specs:
            typer.echo(f"{spec.name}: {registry.resolve_weights(spec.name, weights_dir=target)}")
        for spec in registry.list_weights():
            present = "present" if (target / spec.filename).exists() else "absent"
            source = registry.spec_url(spec)  # where a download would come from ($DTKD_MIRROR)
            typer.echo(f"{spec.name:24s} {present:8s} {target / spec.filename}  <- {source}")
            typer.echo(f"{'':24s} licence: {spec.license}")  # ResShift's forbids commercial use

    _run(action)


def main() -> None:
    app(prog_name="dtkd-pipeline")


if __name__ == "__main__":
    sys.exit(main())
