"""Tile stores shared by stage one (teacher cache) and stage two (training).

`TileStore` is a sharded, checksummed Zarr v3 store with per-shard completion records, provenance,
a coordinator lock and verification; see store.py for the on-disk contract. Filling the teacher
store: teacher_store.py (layout, provenance), batch_groups.py, shard_compute.py, local_fill.py,
dask_fanout.py and preview.py; prepared_store.py and teacher_open.py open prepare-data's and
cache-teacher's stores checked.
"""

from .errors import (
    CacheError,
    CorruptShardError,
    IncompleteShardError,
    NotAStoreError,
    ProvenanceMismatchError,
    StoreCreatedMeanwhileError,
    StoreLayoutError,
    StoreLockedError,
)
from .layout import (
    DWT_GROUP,
    DWT_LEVELS,
    FORMAT_VERSION,
    HR,
    KIND_PREPARED,
    KIND_TEACHER,
    LR,
    TEACHER,
    TILE_OFFSET,
    TILE_SOURCE,
    ArraySpec,
    Compression,
    StoreLayout,
    prepared_arrays,
    teacher_arrays,
)
from .lock import StoreLock
from .provenance import PREPARED_FINGERPRINT, SOURCES
from .store import TileStore, VerifyReport, content_checksum

__all__ = [
    "DWT_GROUP",
    "DWT_LEVELS",
    "FORMAT_VERSION",
    "HR",
    "KIND_PREPARED",
    "KIND_TEACHER",
    "LR",
    "PREPARED_FINGERPRINT",
    "SOURCES",
    "TEACHER",
    "TILE_OFFSET",
    "TILE_SOURCE",
    "ArraySpec",
    "CacheError",
    "Compression",
    "CorruptShardError",
    "IncompleteShardError",
    "NotAStoreError",
    "ProvenanceMismatchError",
    "StoreCreatedMeanwhileError",
    "StoreLayout",
    "StoreLayoutError",
    "StoreLock",
    "StoreLockedError",
    "TileStore",
    "VerifyReport",
    "content_checksum",
    "prepared_arrays",
    "teacher_arrays",
]
