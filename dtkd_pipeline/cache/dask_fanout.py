"""Teacher shards fanned out over dask.distributed workers: one task per batch group.

Each task computes its group's missing shards on its worker's device and writes them itself (the
shards' sole writer). The task function lives at module level here so that workers import it by
name; they need this package, the same filesystem, and the checkpoint files.

dask cannot stop a task that is running, and a task outlives its client: a coordinator that ended
(Ctrl-C, SIGTERM, a failed task) and released the store's lock while tasks ran would leave them
writing shards beside its rerun. So the coordinator first sets the run's stop event, which every
task checks before it computes and before it writes each shard, and waits for its tasks to end.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dtkd_pipeline.cache.batch_groups import shard_groups
from dtkd_pipeline.cache.errors import CacheError
from dtkd_pipeline.cache.prepared_store import open_params_prepared
from dtkd_pipeline.cache.shard_compute import compute_shards
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.cache.teacher_record import build_teacher
from dtkd_pipeline.cache.teacher_store import TeacherIdentity
from dtkd_pipeline.config import Params
from dtkd_pipeline.scheduler import connect
from dtkd_pipeline.teacher import Teacher

_WORKER_TEACHERS: dict[str, Teacher] = {}
# How often a stopping coordinator checks that workers are left to wait for.
_STOP_POLL_S = 1.0


def _worker_device(name: object) -> torch.device:
    """A dask worker's device: its own GPU (workers named 0..n-1 on one host) or the CPU."""
    gpus = torch.cuda.device_count()
    index = int(str(name)) % gpus if gpus and str(name).isdigit() else 0
    return torch.device("cuda", index) if gpus else torch.device("cpu")


def worker_device_type(dask_worker: Any) -> str:
    """Run on each worker by `Client.run`, which passes the worker as `dask_worker`."""
    return _worker_device(dask_worker.name).type


def shard_task(params_json: str, store_path: str, shards: list[int], stop: str) -> list[int]:
    """One dask task: compute a run of shards on this worker's device and write them (their
    sole writer); returns the shards it wrote. Once the dask Event named ``stop`` is set (the
    coordinator is ending), it writes no more."""
    from distributed import Event, get_worker

    stopped = Event(stop).is_set
    if stopped():
        return []

    params = Params.model_validate_json(params_json)
    if params_json not in _WORKER_TEACHERS:  # load the teacher once per worker process
        device = _worker_device(get_worker().name)
        _WORKER_TEACHERS[params_json] = build_teacher(params.teacher, device)
    teacher = _WORKER_TEACHERS[params_json]
    prepared = open_params_prepared(params, complete=False)
    with TileStore.open(store_path, mode="r+") as store:
        mismatch = TeacherIdentity.of(teacher).mismatch(store.provenance)
        if mismatch is not None:
            raise CacheError(
                f"dask worker {get_worker().name} would fill {store_path} with another teacher "
                f"({mismatch}); give every worker the same checkpoint files and device kind"
            )
        written = []
        for shard, arrays in compute_shards(teacher, prepared, shards, params):
            if stopped():
                break
            store.write_shard(shard, arrays)
            written.append(shard)
    return written


def params_for_workers(params: Params) -> str:
    """Params as JSON with every path absolute: a worker runs in its own folder (it must see
    the same filesystem), where a relative path would name another store or none."""

    def absolute(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: absolute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [absolute(item) for item in value]
        if isinstance(value, Path):
            return value.expanduser().absolute()
        return value

    raw = absolute(params.model_dump())
    teacher = raw["teacher"]
    for key in ("version", "unet_weights", "autoencoder_weights"):  # a name, or a file path
        if Path(teacher[key]).expanduser().is_file():
            teacher[key] = str(Path(teacher[key]).expanduser().absolute())
    return Params.model_validate(raw).model_dump_json()


def _gpu_workers(client: Any) -> list[str] | None:
    """Addresses of workers that advertise a GPU resource, or None when none do."""
    workers = client.scheduler_info()["workers"]
    gpu = [address for address, w in workers.items() if "GPU" in (w.get("resources") or {})]
    return gpu or None


def dask_device_type(address: str) -> str:
    """The one device kind the cluster's shard workers run on; mixed kinds are refused."""
    with connect(address) as client:
        kinds = set(client.run(worker_device_type, workers=_gpu_workers(client)).values())
    if len(kinds) != 1:
        raise CacheError(
            f"dask cluster {address} has workers on {sorted(kinds) or 'no'} devices; teacher "
            "outputs are bit-stable per device kind only, so start workers of one kind (all GPU "
            "workers with resources GPU=1, or all CPU)"
        )
    return kinds.pop()


def fill_with_dask(store: TileStore, params: Params, shards: list[int], address: str) -> None:
    """Compute and write `shards` of `store` on the workers of the scheduler at `address`."""
    from distributed import as_completed

    with connect(address) as client, _stopped_on_exit(client) as stop:
        resources = {"GPU": 1} if _gpu_workers(client) else None
        futures = [
            client.submit(
                shard_task,
                params_for_workers(params),
                str(store.path.absolute()),
                group,
                stop,
                key=f"teacher-shards-{group[0]}-{group[-1]}",
                resources=resources,
                pure=False,
            )
            for group in shard_groups(store.layout, shards, params.teacher.batch_size)
        ]
        with tqdm(total=store.layout.tiles_in(shards), desc="teacher", unit="tile") as bar:
            try:
                for future in as_completed(futures):
                    bar.update(store.layout.tiles_in(future.result()))
            except BaseException:
                _stop_tasks(client, stop, futures)
                raise


@contextlib.contextmanager
def _stopped_on_exit(client: Any) -> Iterator[str]:
    """The name of a fresh dask Event that tells this run's tasks to stop writing."""
    from distributed import Event

    name = f"teacher-stop-{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):  # a lost scheduler has forgotten it anyway
            Event(name, client=client).clear()  # the scheduler keeps an event until cleared


def _stop_tasks(client: Any, stop: str, futures: list[Any]) -> None:
    """Tell the tasks to write no more, and wait until none runs: the store's lock is released
    next, and a rerun must not meet a writer. A task in a shard finishes computing it first.
    Workers that died meanwhile (a Ctrl-C reaches a local cluster's workers too) write nothing,
    so the wait ends when no worker is left."""
    from distributed import Event, wait

    Event(stop, client=client).set()
    print(
        "stopping: waiting for the dask tasks computing a shard to end (they write nothing more)",
        file=sys.stderr,
        flush=True,
    )
    while client.scheduler_info()["workers"]:
        with contextlib.suppress(TimeoutError):
            wait(futures, timeout=_STOP_POLL_S)
            return


def fill_on_local_gpus(store: TileStore, params: Params, shards: list[int], gpus: int) -> None:
    """Several visible GPUs and no scheduler: a local cluster with one worker process per GPU."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=gpus, threads_per_worker=1, processes=True, resources={"GPU": 1}
    ) as cluster:
        fill_with_dask(store, params, shards, cluster.scheduler_address)
