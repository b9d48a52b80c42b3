"""Connecting to the dask.distributed scheduler that a fanned-out command (``--scheduler``) uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client


class SchedulerUnreachableError(ConnectionError):
    """No dask scheduler answers at the given address (or the address is malformed)."""


def connect(address: str) -> Client:
    """A client of the scheduler at ``address``, or an error that names it and says what to do."""
    from distributed import Client

    try:
        return Client(address)
    except (ValueError, OSError, TimeoutError) as error:  # bad address, refused, timed out
        raise SchedulerUnreachableError(
            f"no dask scheduler at {address!r} ({type(error).__name__}: {error}); start one with "
            "`dask scheduler` plus `dask worker` processes and pass its address, e.g. "
            "--scheduler tcp://HOST:8786"
        ) from None
