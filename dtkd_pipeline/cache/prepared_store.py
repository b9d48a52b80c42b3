"""Opening the prepared store (prepare-data's train.zarr) the way its readers need it."""

from __future__ import annotations

from pathlib import Path

from dtkd_pipeline.cache.errors import CacheError
from dtkd_pipeline.cache.layout import KIND_PREPARED
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.config import Params
from dtkd_pipeline.stage_files import TRAIN_STORE


def require_prepared_exists(path: Path, error: type[Exception] = CacheError) -> None:
    """Refuse a prepared store that was never built, naming the command that builds it.

    `error`: the exception type the caller promises (the band analysis API raises
    FileNotFoundError for every missing input).
    """
    if not path.exists():
        raise error(f"prepared store {path} not found; run `dtkd-pipeline prepare-data` first")


def open_prepared(path: Path, *, complete: bool = True) -> TileStore:
    """The prepared store at `path`, refused if it is another kind of store or (with `complete`)
    has shards missing."""
    prepared = TileStore.open(path)
    prepared.require_kind(KIND_PREPARED)
    if complete:
        prepared.require_complete("prepare-data")
    return prepared


def open_params_prepared(params: Params, *, complete: bool) -> TileStore:
    """The prepared store params name (``data.prepared_dir``/train.zarr), refused if missing."""
    path = params.data.prepared_dir / TRAIN_STORE
    require_prepared_exists(path)
    return open_prepared(path, complete=complete)
