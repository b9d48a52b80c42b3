"""Teacher outputs for whole shards of a prepared store, batch group by batch group.

- A shard's bytes do not depend on which worker computes it or on whether the run was resumed:
  noise is seeded per sample and a tile's batch is fixed by its index (see batch_groups.py).
- With ``teacher.rng: official`` one stream runs through the batches in tile order; a run that
  skips cached tiles replays their draws (`TileOrderStream`), with the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from dtkd_pipeline.cache.batch_groups import group_size, group_tiles, shard_groups
from dtkd_pipeline.cache.layout import DWT_LEVELS, LR, TEACHER, StoreLayout
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.compiled import fill_batch
from dtkd_pipeline.config import Params, TeacherParams
from dtkd_pipeline.images import to_uint8
from dtkd_pipeline.losses.wavelet import dwt_subbands
from dtkd_pipeline.progress import hidden_unless
from dtkd_pipeline.teacher import OfficialNoise, Teacher


def network_rows(teacher: Teacher, real: int, tp: TeacherParams) -> int:
    """Rows the teacher runs for a batch of `real` tiles: compiled runs fill every batch."""
    return max(real, tp.batch_size) if teacher.compile_mode is not None else real


def teacher_outputs(
    teacher: Teacher,
    lr: np.ndarray,
    ids: list[int],
    tp: TeacherParams,
    stream: OfficialNoise | None = None,
    on_step: Callable[[], object] | None = None,
) -> dict[str, np.ndarray]:
    """uint8 teacher tiles (and float16 subbands) for one batch of uint8 LR tiles; ``on_step``
    is called after each UNet call."""
    batch = torch.from_numpy(lr).float().div_(255.0)
    real = len(batch)
    batch = fill_batch(batch, network_rows(teacher, real, tp))  # one shape: one compilation
    ids = ids + [ids[-1]] * (len(batch) - real)
    sr = teacher.sample(
        batch,
        seed=tp.seed,
        rng=tp.rng,
        sample_ids=ids,
        steps=tp.steps,
        stream=stream,
        on_step=on_step,
    )[:real]
    sr_u8 = to_uint8(sr)
    outputs = {TEACHER: sr_u8.cpu().numpy()}
    if tp.dwt:
        # Subbands of the stored (quantised) image: the DWT stage two would compute from the uint8
        # teacher tile, up to float16 rounding (at most ~1e-3 in LL2, about one grey level there).
        bands = dwt_subbands(sr_u8.float().div_(255.0), levels=DWT_LEVELS, wavelet="haar")
        outputs |= {f"dwt/{name}": band.half().cpu().numpy() for name, band in bands.items()}
    return outputs


class TileOrderStream:
    """teacher.rng=official: upstream's one noise stream, continued over the batches in tile order.

    Upstream seeds once and draws image after image. Batches already cached (a resumed, repaired
    or fanned-out run) are replayed as draws without running the teacher, so every tile gets the
    noise a full run from tile 0 gives it.
    """

    def __init__(self, teacher: Teacher, tp: TeacherParams, layout: StoreLayout) -> None:
        self.teacher, self.tp, self.layout = teacher, tp, layout
        self.tile_side = layout.spec(LR).tile_shape[1:]
        self.group_size = group_size(layout, tp.batch_size)
        self._restart()

    def _restart(self) -> None:
        self.noise, self.position = OfficialNoise(self.tp.seed, self.teacher.device), 0

    def at(self, start: int) -> OfficialNoise:
        """The stream positioned at the first batch of the group starting at tile `start`."""
        if start < self.position:
            self._restart()
        while self.position < start:
            group = self.layout.shard_of(self.position) // self.group_size
            _, stop = group_tiles(self.layout, group, self.tp.batch_size)
            for first in range(self.position, stop, self.tp.batch_size):
                rows = network_rows(self.teacher, min(self.tp.batch_size, stop - first), self.tp)
                self.noise.skip(self.teacher.noise_shapes(rows, *self.tile_side))
            self.position = stop
        return self.noise

    def done(self, stop: int) -> None:
        """The group ending before tile `stop` drew its noise from the stream."""
        self.position = stop


def compute_shards(
    teacher: Teacher,
    prepared: TileStore,
    shards: Iterable[int],
    params: Params,
    bar: tqdm | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(shard, its teacher arrays) for each of `shards`, one batch group at a time.

    Batches run across the shards of a group, so `teacher.batch_size` may exceed
    `data.shard_size` and batches stay full. A wanted shard's group-mates are computed with it
    (their outputs are dropped) so its batches are the ones a full run would have formed.
    """
    tp, layout = params.teacher, prepared.layout
    g = group_size(layout, tp.batch_size)
    order = TileOrderStream(teacher, tp, layout) if tp.rng == "official" else None
    for wanted in shard_groups(layout, shards, tp.batch_size):
        group = wanted[0] // g
        members = range(group * g, min(group * g + g, layout.n_shards))
        start, stop = group_tiles(layout, group, tp.batch_size)
        stream = order.at(start) if order is not None else None
        lr = np.concatenate([prepared.read_shard(shard, [LR])[LR] for shard in members])
        is_wanted = np.zeros(stop - start, bool)
        for shard in wanted:
            first, last = layout.shard_range(shard)
            is_wanted[first - start : last - start] = True
        parts: dict[str, list[np.ndarray]] = {}
        for first in range(0, stop - start, tp.batch_size):
            chunk = slice(first, min(first + tp.batch_size, stop - start))
            ids = list(range(start + chunk.start, start + chunk.stop))
            with _step_bar(bar, teacher, lr[chunk]) as on_step:
                outputs = teacher_outputs(teacher, lr[chunk], ids, tp, stream, on_step)
            for name, part in outputs.items():
                parts.setdefault(name, []).append(part)
            if bar is not None:
                bar.update(int(is_wanted[chunk].sum()))
        if order is not None:
            order.done(stop)
        stacked = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        for shard in wanted:
            first, last = layout.shard_range(shard)
            yield (
                shard,
                {name: data[first - start : last - start] for name, data in stacked.items()},
            )


@contextlib.contextmanager
def _step_bar(
    tiles: tqdm | None, teacher: Teacher, lr: np.ndarray
) -> Iterator[Callable[[], object] | None]:
    """Yield the step callback of a bar over one batch's UNet calls, under the tile bar and
    shown only where that one shows (no bar, and None, without a tile bar).

    On a CPU a batch runs for minutes and the tile bar stands still meanwhile; a GPU batch ends
    within the delay, so its bar never appears.
    """
    if tiles is None:
        yield None
        return
    with tqdm(
        total=teacher.unet_calls(*lr.shape[-2:]),
        desc=f"batch of {len(lr)} tiles",
        unit="step",
        leave=False,
        delay=_STEP_BAR_DELAY_S,
        **hidden_unless(not tiles.disable),
    ) as steps:
        yield steps.update


_STEP_BAR_DELAY_S = 2.0
