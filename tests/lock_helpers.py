"""Test building blocks: an output folder's run lock, or a tile store's lock, held by another
process, and a snapshot of the files a refused run must leave untouched."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def file_snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and content."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def output_locked_by_child(folder: Path, key: str) -> Iterator[int]:
    """Yield the PID of a child process that holds `exclusive_output(folder, key)` until the
    block ends; then the child releases it, and must exit cleanly."""
    holding = (
        "from dtkd_pipeline.run_lock import exclusive_output\n"
        f"with exclusive_output(Path({str(folder)!r}), {key!r}):\n"
    )
    with _child_holding(holding) as pid:
        yield pid


@contextlib.contextmanager
def store_locked_by_child(store: Path) -> Iterator[int]:
    """Yield the PID of a child process that holds the coordinator lock of the tile store at
    `store` (as a run filling it does) until the block ends."""
    holding = f"from dtkd_pipeline.cache import StoreLock\nwith StoreLock(Path({str(store)!r})):\n"
    with _child_holding(holding) as pid:
        yield pid


@contextlib.contextmanager
def _child_holding(holding: str) -> Iterator[int]:
    """Run `holding` (imports, then a `with` line) in a child that signals once inside the
    block and leaves it when told; yield its PID."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        f"{holding}"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n", child.communicate(timeout=60)[1]
        yield child.pid
    finally:
        _, errors = child.communicate("\n", timeout=60)
    assert child.returncode == 0, errors
