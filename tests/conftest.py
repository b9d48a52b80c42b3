"""Shared pytest fixtures: where the parity fixtures live, and a skip when they are absent.

CI sets DTKD_REQUIRE_PARITY=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os

# The parity fixtures were made with torch's AVX2 CPU kernels. On an AVX-512 CPU, ATen and oneDNN
# pick kernels that round float32 differently: a UNet call moves by ~1e-4 and, through the VQ
# codebook's argmin, a 15-step sample by up to 0.7. Pinning the ISA (before torch loads) makes
# the parity tests compare the port, not the CPU. An explicit setting in the environment wins.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("DNNL_MAX_CPU_ISA", "AVX2")
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a GPU machine gets only the checkout, so there a copy in its
# git-ignored shared/ folder (docs/performance.md, "Reproducing") is looked for first.
PARITY_DIR = next(
    (
        p
        for p in (REPO_ROOT / "shared" / "parity", REPO_ROOT.parent / "shared" / "parity")
        if p.is_dir()
    ),
    REPO_ROOT.parent / "shared" / "parity",
)


def _parity_subdir(name: str) -> Path:
    path = PARITY_DIR / name
    if not path.is_dir():
        if os.environ.get("DTKD_REQUIRE_PARITY") == "1":  # CI: a silent skip would hide a break
            pytest.fail(f"parity fixtures not found at {path} (DTKD_REQUIRE_PARITY=1)")
        pytest.skip(
            f"parity fixtures not found at {path}: they ship in ../shared/parity beside the "
            "project checkout (developer and CI machines only)"
        )
    return path


@pytest.fixture(scope="session")
def resshift_parity_dir() -> Path:
    """../shared/parity/resshift_tiny: official ResShift outputs with random tiny weights."""
    return _parity_subdir("resshift_tiny")


@pytest.fixture(scope="session")
def swinir_parity_dir() -> Path:
    """../shared/parity/swinir_lw_x4: official SwinIR lightweight x4 outputs with random weights."""
    return _parity_subdir("swinir_lw_x4")


@pytest.fixture
def record_compiled_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[tuple]]:
    """`record(module)` replaces `compile_static` in `module` with an eager stand-in (no compile
    cost) and returns the list that receives the input shape of every call of a "compiled"
    function."""

    def record(module: str) -> list[tuple]:
        shapes: list[tuple] = []

        def recording_compile(function: Callable, mode: str | None) -> Callable:
            if mode is None:
                return function

            def forward(x: Any) -> Any:
                shapes.append(tuple(x.shape))
                return function(x)

            return forward

        monkeypatch.setattr(f"{module}.compile_static", recording_compile)
        return shapes

    return record
