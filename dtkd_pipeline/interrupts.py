"""Ctrl-C and SIGTERM end a command the same way: cleanup runs, then one short message.

Python turns Ctrl-C (SIGINT) into ``KeyboardInterrupt``, so every ``finally`` and ``except
BaseException`` on the way up removes temporaries and releases locks. SIGTERM (a job scheduler's
stop, ``kill``) would end the process on the spot instead, leaving staging folders and temporary
files for a later run to sweep; :func:`sigterm_as_interrupt` makes it raise :class:`Terminated`,
a ``KeyboardInterrupt``, so the same cleanup runs for both.

Code that knows what an interruption leaves behind (how many shards are stored, where training
resumes) attaches that to the interrupt with ``interrupt.add_note(...)`` and re-raises; the CLI
prints the notes (:func:`interrupt_message`) and exits with :func:`interrupt_exit_code`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# The shell's convention for a process ended by signal N: 128 + N.
SIGINT_EXIT_CODE = 128 + signal.SIGINT  # 130
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143

# Said when no code on the way up noted anything: every output is written whole (atomically)
# or resumed, so what is there is complete.
_DEFAULT_ADVICE = "files already written are complete; run the same command again"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a ``KeyboardInterrupt`` so the cleanup written for Ctrl-C runs too."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread.

    A SIGTERM sent to the whole process group (as job schedulers do) also ends the DataLoader
    workers, and PyTorch's SIGCHLD handler would report each death as a "worker killed" error
    during the cleanup, or from the loader's finaliser after the message. A SIGTERM therefore
    stops child deaths being reported for the rest of the process, which is about to exit.

    Signal handlers can only be set from the main thread; elsewhere (a test runner's worker
    thread, say) the block runs with SIGTERM as it was.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGCHLD, _ignore_signal)
    raise Terminated


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """A Python-level no-op: unlike SIG_IGN it keeps children waitable (SIGCHLD)."""


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return SIGTERM_EXIT_CODE if _cause(interrupt) is Terminated else SIGINT_EXIT_CODE


def interrupt_message(interrupt: KeyboardInterrupt) -> str:
    """One line: what stopped the command, and the notes on the state it left and how to go on.

    A second Ctrl-C during the cleanup of the first replaces the interrupt in flight; the notes
    of the first (reached through ``__context__``) are kept.
    """
    cause = "SIGTERM" if _cause(interrupt) is Terminated else "Ctrl-C"
    raised = reversed(_chain(interrupt))  # oldest first
    notes = [note for each in raised for note in getattr(each, "__notes__", [])]
    return f"interrupted ({cause}): {'; '.join(dict.fromkeys(notes)) or _DEFAULT_ADVICE}"


def _cause(interrupt: KeyboardInterrupt) -> type[KeyboardInterrupt]:
    """The first signal's kind: SIGTERM stays the cause when Ctrl-C follows it, and vice versa."""
    return type(_chain(interrupt)[-1])


def _chain(interrupt: KeyboardInterrupt) -> list[KeyboardInterrupt]:
    """``interrupt`` and the interrupts it was raised while handling, newest first."""
    chain: list[KeyboardInterrupt] = []
    current: BaseException | None = interrupt
    while isinstance(current, KeyboardInterrupt) and current not in chain:
        chain.append(current)
        current = current.__context__
    return chain
