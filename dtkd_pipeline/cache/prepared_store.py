"""The prepared store (prepare-data's train.zarr): what it records about its tiles, and opening it
the way its readers need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtkd_pipeline import __version__
from dtkd_pipeline.cache.errors import CacheError
from dtkd_pipeline.cache.layout import KIND_PREPARED
from dtkd_pipeline.cache.provenance import SOURCES
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.config import DataParams, Params
from dtkd_pipeline.stage_files import RUN_PREPARE_DATA_FIRST, TRAIN_STORE

# The data.* settings that decide which tiles train.zarr holds (shard_size and compression only
# decide how they are stored), each recorded in its provenance under the same name.
TILE_SETTINGS = ("scale", "lr_tile", "stride", "small_images", "lr_source")


def prepared_provenance(data: DataParams, source_names: list[str]) -> dict[str, Any]:
    """What train.zarr records about how its tiles were made."""
    return {
        SOURCES: source_names,
        "scale": data.scale,
        "lr_tile": data.lr_tile,
        "stride": data.stride,
        "small_images": data.small_images,
        "lr_source": _lr_source(data),
        "package_version": __version__,
    }


def _lr_source(data: DataParams) -> str:
    return "paired" if data.lr_dir is not None else "matlab-bicubic"


def check_prepared_fits(store: TileStore, data: DataParams) -> None:
    """Refuse a prepared store cut with other tile settings than params' data section.

    Run by hand, cache-teacher and distill would otherwise train on tiles from before a
    data.lr_tile/stride/... edit without a word (dvc repro re-runs prepare-data first). Settings
    an older store does not record are not checked.
    """
    wanted = prepared_provenance(data, [])
    recorded = store.provenance
    differing = [key for key in TILE_SETTINGS if key in recorded and recorded[key] != wanted[key]]
    if differing:
        changes = ", ".join(
            f"{_setting_name(key)}: store {recorded[key]!r}, params {wanted[key]!r}"
            for key in differing
        )
        raise CacheError(
            f"prepared store {store.path} was cut with other data settings than params ask "
            f"({changes}); run `dtkd-pipeline prepare-data` to re-cut it (dvc repro does), "
            "or set the data section back"
        )


def _setting_name(key: str) -> str:
    return "data.lr_dir" if key == "lr_source" else f"data.{key}"


def require_prepared_exists(path: Path, error: type[Exception] = CacheError) -> None:
    """Refuse a prepared store that was never built, naming the command that builds it.

    `error`: the exception type the caller promises (the band analysis API raises
    FileNotFoundError for every missing input).
    """
    if not path.exists():
        raise error(f"prepared store {path} not found; {RUN_PREPARE_DATA_FIRST}")


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
