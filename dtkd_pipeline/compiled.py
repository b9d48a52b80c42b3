"""`torch.compile` for inference with static shapes: one place for the modes and their caveats.

Used by the teacher (UNet, VQ encode/decode) and the student upscaler. Both feed fixed-size
batches (:func:`fill_batch` fills a ragged last batch), so graphs are compiled once per shape with
`dynamic=False`. Modes that replay CUDA graphs reuse their output memory at the next replay, so
:func:`run_compiled` copies outputs out before the next call can overwrite them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # torch is imported where it is used: params validation imports CompileMode
    import torch

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""`torch.compile` modes; "reduce-overhead" and "max-autotune" also replay CUDA graphs."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(mode: str | None) -> None:
    """Raise ValueError unless `mode` is None or one of :data:`CompileMode`."""
    if mode is not None and mode not in get_args(CompileMode):
        raise ValueError(
            f"compile mode must be one of {list(get_args(CompileMode))} or None, got {mode!r}"
        )


def compile_static(
    function: Callable[..., torch.Tensor], mode: CompileMode | None
) -> Callable[..., torch.Tensor]:
    """`function` compiled for static shapes in `mode`, or unchanged when `mode` is None.

    Compilation happens lazily, at the first call with each input shape.
    """
    check_compile_mode(mode)
    if mode is None:
        return function
    import torch

    return torch.compile(function, mode=mode, dynamic=False)


def run_compiled(
    function: Callable[..., torch.Tensor], mode: CompileMode | None, *args: torch.Tensor
) -> torch.Tensor:
    """`function(*args)`; for CUDA-graph modes the output is cloned out of the graph's memory."""
    if mode in CUDA_GRAPH_MODES:
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        return function(*args).clone()
    return function(*args)


def fill_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """`batch` filled up to `size` rows with copies of its last row (callers drop their outputs).

    A compiled function recompiles for every new input shape, so a ragged last batch would cost
    a second compilation (minutes for the teacher).
    """
    missing = size - len(batch)
    if missing <= 0:
        return batch
    import torch

    return torch.cat([batch, batch[-1:].expand(missing, *batch.shape[1:])])
