"""Test building blocks: synthetic HR images and params re-rooted in tmp dirs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from dtkd_pipeline.config import Params, apply_overrides, load_params
from dtkd_pipeline.images import write_image

REPO_ROOT = Path(__file__).resolve().parents[1]

# A tiny student and a few iterations: enough to exercise every part of the training loop.
TINY_DISTILL = [
    "distill.student=swinir-tiny-x4",
    "distill.patch_size=16",
    "distill.batch_size=2",
    "distill.iterations=6",
    "distill.milestones=[4]",
    "distill.log_every=1",
    "distill.val_every=3",
    "distill.checkpoint_every=3",
    "distill.shuffle_buffer=4",
]


def copy_project(target: Path) -> None:
    """Copy the repository's files (tracked and untracked, not ignored) into `target`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_command(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command with this venv on PATH and bars off; assert success; return its output."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    full_env["TQDM_DISABLE"] = "1"
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def init_git(project: Path) -> None:
    """A repository with one commit: DVC experiments and dvclive need it."""
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "x"],
    ):
        run_command(command, project)


def make_hr_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Smooth colour fields with some texture, so bicubic LR and SR losses are non-trivial."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, (height, width) in enumerate(sizes):
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(3, 12, 3)
        rgb = np.stack(
            [0.5 + 0.4 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], -1
        )
        rgb += rng.normal(0, 0.03, rgb.shape)
        paths.append(write_image(folder / f"img{index:02d}.png", np.clip(rgb, 0, 1)))
    return paths


TINY_PROFILE = REPO_ROOT / "tests" / "data" / "tiny_profile.yaml"


def profile_overrides(path: Path = TINY_PROFILE) -> list[str]:
    """A profile file ({dotted.key: value}) as `key=value` overrides (the -S / dvc exp -S form)."""
    profile = yaml.safe_load(path.read_text())
    return [f"{key}={json.dumps(value)}" for key, value in profile.items()]  # JSON is YAML


def apply_profile(params_file: Path, overrides: list[str]) -> None:
    """Rewrite a params.yaml with overrides applied (what `dvc exp run -S` does to the file)."""
    raw = apply_overrides(yaml.safe_load(params_file.read_text()), overrides)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def tiny_project_params(root: Path, images: int, overrides: list[str]) -> Path:
    """A params.yaml in ``root`` for a whole-chain test: ``images`` 256×256 HR images, the tiny
    profile and teacher, one tile per shard, every output under ``root``, then ``overrides``."""
    make_hr_images(root / "hr", [(256, 256)] * images)
    params_file = root / "params.yaml"
    params_file.write_text((REPO_ROOT / "params.yaml").read_text())
    apply_profile(
        params_file,
        [
            *profile_overrides(),
            f"teacher.version={REPO_ROOT / 'tests/data/resshift_tiny_t2.yaml'}",
            "teacher.batch_size=1",
            f"data.hr_dir={root / 'hr'}",
            "data.shard_size=1",
            "data.workers=1",
            f"data.prepared_dir={root / 'prepared'}",
            f"teacher.store={root / 'cache' / 'teacher.zarr'}",
            f"teacher.preview={root / 'cache' / 'preview.png'}",
            f"distill.out_dir={root / 'models'}",
            *overrides,
        ],
    )
    return params_file


def tiny_params(tmp_path: Path, hr_dir: Path, overrides: list[str] | None = None) -> Params:
    """The repository params.yaml, re-rooted in tmp_path and shrunk to test size."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    base = [
        f"data.hr_dir={hr_dir}",
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "data.shard_size=2",
        "data.workers=1",
        f"teacher.store={tmp_path / 'cache' / 'teacher.zarr'}",
        f"teacher.preview={tmp_path / 'cache' / 'teacher_preview.png'}",
        f"distill.out_dir={tmp_path / 'models'}",
        *TINY_DISTILL,
        f"evaluate.sets=[{{name: demo, layout: paired, path: '{tmp_path / 'prepared' / 'val'}'}}]",
        f"evaluate.models.students={{DTKD: ['{tmp_path / 'models' / 'student.pt'}']}}",
        f"evaluate.metrics_dir={tmp_path / 'metrics'}",
        f"evaluate.plots_dir={tmp_path / 'plots'}",
        f"evaluate.out_dir={tmp_path / 'evaluation'}",
        f"report.out_dir={tmp_path / 'report'}",
    ]
    return load_params(path, base + list(overrides or []))


def forbid_teacher(monkeypatch: Any, stage: Any, before: str) -> None:
    """Make `stage.build_teacher` fail the test: what must be refused `before` it is built."""

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the teacher was built before {before}")

    monkeypatch.setattr(stage, "build_teacher", refused)


def pretend_read_only(monkeypatch: Any, *folders: Path) -> None:
    """Make `folders` read-only to this process as os.access sees them (root, which tests often
    run as, ignores mode bits, so chmod alone would prove nothing)."""
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) in folders and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


def bars_under_tqdm_disable(monkeypatch: Any, module: Any) -> list[tuple[str, bool]]:
    """Give `module` a tqdm as TQDM_DISABLE=1 makes it; return (desc, shown) per bar it then makes.

    tqdm reads the variable once, on import, as the default of ``disable``; this class has that
    default, so an explicit ``disable=False`` still shows a bar, as it does under the variable.
    """
    made: list[tuple[str, bool]] = []
    _patch_tqdm(monkeypatch, module, lambda bar: made.append((bar.desc, bar.shown)), disable=True)
    return made


@dataclass(frozen=True)
class MadeBar:
    """What a progress bar was asked to show: its label, length, unit, and whether it shows."""

    desc: str
    total: float | None
    unit: str
    shown: bool
    leave: bool | None
    made: tqdm = field(compare=False, repr=False)  # the bar itself, to read its count `n`


def bars_made(monkeypatch: Any, module: Any, *, tqdm_disable: bool = False) -> list[MadeBar]:
    """Give `module` a recording tqdm; return a `MadeBar` per bar it then makes (with
    ``tqdm_disable``, the bars default to hidden, as TQDM_DISABLE=1 makes them)."""
    made: list[MadeBar] = []
    _patch_tqdm(monkeypatch, module, made.append, disable=tqdm_disable)
    return made


def _patch_tqdm(
    monkeypatch: Any, module: Any, record: Callable[[MadeBar], object], *, disable: bool
) -> None:
    class Recording(tqdm):
        def __init__(self, *args: Any, disable: bool | None = disable, **kwargs: Any) -> None:
            super().__init__(*args, disable=disable, **kwargs)
            iterable = args[0] if args else kwargs.get("iterable")
            total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
            unit, leave = kwargs.get("unit", "it"), kwargs.get("leave", True)
            record(MadeBar(kwargs.get("desc", ""), total, unit, not self.disable, leave, self))

    monkeypatch.setattr(module, "tqdm", Recording)


# write_image in a child process that is SIGKILLed where it would rename its temporary.
_KILLED_AT_RENAME = """
import os, signal, sys
import numpy as np
from dtkd_pipeline.images import write_image
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
write_image(sys.argv[1], np.zeros((4, 4, 3)))
"""


def image_write_killed_midway(target: Path) -> Path:
    """Write an image to ``target`` in a process killed (SIGKILL) before its rename, as a kill or
    power loss mid-image would; return the temporary it left beside ``target``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", _KILLED_AT_RENAME, str(target)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (leftover,) = (path for path in target.parent.iterdir() if path.name != target.name)
    return leftover
