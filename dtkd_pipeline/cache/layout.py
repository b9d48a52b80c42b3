"""Shape of a tile store: which arrays it holds, how they are chunked, sharded and compressed.

Every array has one tile per index along axis 0, `chunks=(1, *tile_shape)` (one tile is the unit of
random reads) and `shards=(S, *tile_shape)` (S tiles per file, the unit of writing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

FORMAT_VERSION = 1
KIND_PREPARED = "prepared"
KIND_TEACHER = "teacher"

# Array names shared by the prepare, cache-teacher and distill stages.
LR = "lr"
HR = "hr"
TILE_SOURCE = "tile_source"
TILE_OFFSET = "tile_offset"
TEACHER = "teacher"
DWT_GROUP = "dwt"
DWT_LEVELS = 2  # the paper's J; cached subbands are Haar, exact under patch cropping


@dataclass(frozen=True)
class ArraySpec:
    """One per-tile array: `name` may be a path such as "dwt/LL2"; shape is (N, *tile_shape)."""

    name: str
    tile_shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tile_shape": list(self.tile_shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ArraySpec:
        return cls(str(data["name"]), tuple(int(v) for v in data["tile_shape"]), str(data["dtype"]))

    @property
    def tile_nbytes(self) -> int:
        return math.prod(self.tile_shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Compression:
    """Chunk compressor; a crc32c checksum codec is always appended so corruption raises on read."""

    codec: Literal["zstd", "blosc", "none"] = "zstd"
    level: int = 3

    def codecs(self) -> list[Any]:
        if self.codec == "zstd":
            return [ZstdCodec(level=self.level), Crc32cCodec()]
        if self.codec == "blosc":
            # zarr fills in bitshuffle for 1-byte dtypes, the best blosc setting for uint8 images.
            return [BloscCodec(cname="zstd", clevel=self.level), Crc32cCodec()]
        if self.codec == "none":
            return [Crc32cCodec()]
        raise ValueError(f"unknown compressor {self.codec!r}: expected 'zstd', 'blosc' or 'none'")

    def to_json(self) -> dict[str, Any]:
        return {"codec": self.codec, "level": self.level}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Compression:
        return cls(codec=data["codec"], level=int(data["level"]))


@dataclass(frozen=True)
class StoreLayout:
    """Everything that fixes where bytes go; two stores with equal layouts are interchangeable."""

    kind: str
    n_tiles: int
    shard_size: int
    arrays: tuple[ArraySpec, ...]
    compression: Compression = Compression()
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.n_tiles < 1:
            raise ValueError(f"a store needs at least one tile, got n_tiles={self.n_tiles}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        names = [spec.name for spec in self.arrays]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"array names must be unique and non-empty, got {names}")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_tiles / self.shard_size)

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        """Tile indices [start, stop) of a shard; the last shard may hold fewer than S tiles."""
        if not 0 <= shard_index < self.n_shards:
            raise IndexError(f"shard {shard_index} out of range [0, {self.n_shards})")
        start = shard_index * self.shard_size
        return start, min(start + self.shard_size, self.n_tiles)

    def tiles_in(self, shards: Iterable[int]) -> int:
        """How many tiles the given shards hold (the last shard may be short)."""
        return sum(stop - start for start, stop in map(self.shard_range, shards))

    def shard_of(self, tile_index: int) -> int:
        if not 0 <= tile_index < self.n_tiles:
            raise IndexError(f"tile {tile_index} out of range [0, {self.n_tiles})")
        return tile_index // self.shard_size

    def spec(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise KeyError(f"no array {name!r}; the store has {[s.name for s in self.arrays]}")

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.arrays]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "n_tiles": self.n_tiles,
            "shard_size": self.shard_size,
            "arrays": [spec.to_json() for spec in self.arrays],
            "compression": self.compression.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreLayout:
        return cls(
            kind=str(data["kind"]),
            n_tiles=int(data["n_tiles"]),
            shard_size=int(data["shard_size"]),
            arrays=tuple(ArraySpec.from_json(a) for a in data["arrays"]),
            compression=Compression.from_json(data["compression"]),
            format_version=int(data["format_version"]),
        )


def prepared_arrays(tile_size: int, scale: int) -> tuple[ArraySpec, ...]:
    """Arrays of `train.zarr`: LR/HR tile pairs plus the tile index (source id, LR y/x offset)."""
    hr_size = tile_size * scale
    return (
        ArraySpec(LR, (3, tile_size, tile_size), "uint8"),
        ArraySpec(HR, (3, hr_size, hr_size), "uint8"),
        ArraySpec(TILE_SOURCE, (), "int32"),
        ArraySpec(TILE_OFFSET, (2,), "int32"),
    )


def teacher_arrays(
    hr_size: int, dwt_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[ArraySpec, ...]:
    """Arrays of `teacher.zarr`: uint8 SR tiles plus optional float16 subbands under `dwt/`.

    `dwt_shapes` maps a subband name (e.g. "LL2") to its per-tile shape (e.g. (3, 128, 128)).
    """
    specs = [ArraySpec(TEACHER, (3, hr_size, hr_size), "uint8")]
    for band, shape in (dwt_shapes or {}).items():
        specs.append(ArraySpec(f"{DWT_GROUP}/{band}", tuple(int(v) for v in shape), "float16"))
    return tuple(specs)
