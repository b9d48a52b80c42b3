"""Opening the teacher store (cache-teacher's teacher.zarr) the way its readers need it."""

from __future__ import annotations

from pathlib import Path

from dtkd_pipeline.cache.errors import StoreLayoutError
from dtkd_pipeline.cache.layout import KIND_TEACHER
from dtkd_pipeline.cache.store import TileStore


def require_teacher_exists(path: Path) -> None:
    """Refuse a teacher store that was never built, naming the command that builds it.

    FileNotFoundError, as every reader of a missing input file raises (the CLI exits 1 on it).
    """
    if not path.exists():
        raise FileNotFoundError(
            f"teacher store {path} not found; run `dtkd-pipeline cache-teacher` first "
            "(or point teacher.store at a built one)"
        )


def open_teacher(path: Path) -> TileStore:
    """The teacher store at `path` (teacher.store), refused if missing, not a tile store, or
    another kind of store."""
    require_teacher_exists(path)
    try:
        teacher = TileStore.open(path)
    except StoreLayoutError as error:
        raise StoreLayoutError(
            f"teacher.store: {error}; point teacher.store at the store that "
            "`dtkd-pipeline cache-teacher` builds"
        ) from None
    with teacher.closed_on_error():
        teacher.require_kind(KIND_TEACHER)
    return teacher
