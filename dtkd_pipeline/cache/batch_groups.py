"""Batch groups: the runs of consecutive shards that the teacher computes together.

A group holds ``ceil(batch_size / shard_size)`` shards, so ``teacher.batch_size`` may exceed
``data.shard_size``. Its tiles are batched from the group's first tile, so a tile's batch depends
only on its index and a resumed or repaired shard gets the bytes a full run gives it.
"""

from __future__ import annotations

from collections.abc import Iterable

from dtkd_pipeline.cache.layout import StoreLayout


def group_size(layout: StoreLayout, batch_size: int) -> int:
    """Shards per batch group: enough that a group holds at least one batch of tiles."""
    return max(1, -(-batch_size // layout.shard_size))


def group_tiles(layout: StoreLayout, group: int, batch_size: int) -> tuple[int, int]:
    """Tile range [start, stop) of batch group `group`."""
    g = group_size(layout, batch_size)
    last = min((group + 1) * g, layout.n_shards) - 1
    return layout.shard_range(group * g)[0], layout.shard_range(last)[1]


def shard_groups(layout: StoreLayout, shards: Iterable[int], batch_size: int) -> list[list[int]]:
    """`shards` split by batch group (shards ``[k*g, (k+1)*g)``), in order of first appearance:
    the units of computation (see the module docstring)."""
    g = group_size(layout, batch_size)
    groups: dict[int, list[int]] = {}
    for shard in shards:
        groups.setdefault(shard // g, []).append(shard)
    return list(groups.values())
