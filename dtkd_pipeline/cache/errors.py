"""Exceptions raised by the tile stores; each message says what to do next."""

from __future__ import annotations


class CacheError(RuntimeError):
    """Base class for every tile-store error."""


class StoreLockedError(CacheError):
    """Another process holds the coordinator lock of a store."""


class StoreCreatedMeanwhileError(CacheError):
    """Another run created a store at the path this one was creating a store at."""


class IncompleteShardError(CacheError):
    """A read touched a shard that is not complete: its completion record or one of its files is
    absent (never written, its writer failed, invalidated, or deleted since)."""


class ProvenanceMismatchError(CacheError):
    """A store was built with settings that differ from the requested ones."""


class StoreLayoutError(CacheError):
    """A path is not a tile store, or its layout does not fit the request."""


class NotAStoreError(StoreLayoutError):
    """A path holds no tile store: missing, a file, or a folder without zarr.json."""


class CorruptShardError(CacheError):
    """A complete shard whose bytes no longer decode (truncated, flipped or deleted files)."""
