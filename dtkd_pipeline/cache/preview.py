"""A PNG of a few cached teacher tiles beside their bicubic LR and HR, to look at before distilling.

A look at it catches a wrong checkpoint or a broken cache (noise, colour shifts, black tiles) that
checksums cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dtkd_pipeline.cache.layout import HR, LR, TEACHER, TILE_SOURCE
from dtkd_pipeline.cache.prepared_store import open_params_prepared
from dtkd_pipeline.cache.provenance import SOURCES
from dtkd_pipeline.cache.store import TileStore
from dtkd_pipeline.config import Params
from dtkd_pipeline.evaluate.figures import image_grid
from dtkd_pipeline.resize import imresize


def write_preview(store: TileStore, params: Params) -> Path:
    """PNG of a few cached tiles, spread evenly over the store: LR (bicubic) | teacher | HR."""
    prepared = open_params_prepared(params, complete=False)
    count = min(params.teacher.preview_tiles, store.n_tiles)
    tiles = np.linspace(0, store.n_tiles - 1, count).round().astype(int).tolist()
    inputs = prepared.read_tiles(tiles, [LR, HR, TILE_SOURCE])
    outputs = store.read_tiles(tiles, [TEACHER])[TEACHER]
    sources = prepared.provenance.get(SOURCES, [])
    scale = params.data.scale

    def image(tile: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(tile).float().div_(255.0)

    rows = []
    for row, tile in enumerate(tiles):
        source = int(inputs[TILE_SOURCE][row])
        name = sources[source] if source < len(sources) else f"source {source}"
        bicubic = imresize(image(inputs[LR][row]), scale).clamp_(0, 1)
        panels = [
            (f"LR, bicubic x{scale}", bicubic),
            ("teacher", image(outputs[row])),
            ("HR", image(inputs[HR][row])),
        ]
        rows.append((f"tile {tile}\n{name}", panels))
    tp = params.teacher
    weights = (
        "RANDOM WEIGHTS (tests/speed only)" if tp.random_weights else Path(tp.unet_weights).name
    )
    title = f"{store.path.name}: ResShift {Path(tp.version).name}, {tp.steps} steps\n{weights}"
    return image_grid(rows, tp.preview, title=title)
