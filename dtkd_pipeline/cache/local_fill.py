"""Fill a store's missing shards on this process's device, writing while the device computes."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from dtkd_pipeline.cache.batch_groups import group_size
from dtkd_pipeline.cache.shard_compute import compute_shards
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.config import Params
from dtkd_pipeline.teacher import Teacher


def fill_locally(
    store: TileStore, prepared: TileStore, teacher: Teacher, params: Params, shards: list[int]
) -> None:
    # A batch group's shards arrive together; all of them are written while the device computes
    # the next group. At most one group in flight: bounded memory, and errors surface.
    in_flight = group_size(prepared.layout, params.teacher.batch_size)
    pending: deque[Future[Any]] = deque()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer,
        tqdm(total=prepared.layout.tiles_in(shards), desc="teacher", unit="tile") as bar,
    ):
        for shard, arrays in compute_shards(teacher, prepared, shards, params, bar):
            while len(pending) >= in_flight:
                pending.popleft().result()
            pending.append(writer.submit(store.write_shard, shard, arrays))
        while pending:
            pending.popleft().result()
