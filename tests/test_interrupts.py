"""Ctrl-C and SIGTERM end a command alike: one line naming the signal and the notes, 130 / 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dtkd_pipeline.interrupts import (
    Terminated,
    interrupt_exit_code,
    interrupt_message,
    sigterm_as_interrupt,
)


def test_sigterm_in_the_block_raises_terminated_and_the_old_handler_returns_after() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt the block")
    assert signal.getsignal(signal.SIGTERM) is before


def test_child_deaths_after_a_sigterm_do_not_replace_the_interrupt() -> None:
    """PyTorch's SIGCHLD handler raises when a DataLoader worker dies of a signal; a SIGTERM to
    the process group kills the workers too, and their deaths must not raise during cleanup."""

    def worker_killed(signum: int, frame: object) -> None:
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    previous = signal.signal(signal.SIGCHLD, worker_killed)
    try:
        with pytest.raises(Terminated), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM did not interrupt the block")
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # a child ends: SIGCHLD
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_ctrl_c_and_sigterm_exit_with_the_shell_codes_and_name_the_signal() -> None:
    assert interrupt_exit_code(KeyboardInterrupt()) == 130
    assert interrupt_exit_code(Terminated()) == 143
    assert interrupt_message(KeyboardInterrupt()) == (
        "interrupted (Ctrl-C): files already written are complete; run the same command again"
    )
    terminated = Terminated()
    terminated.add_note("3 of 7 shards are stored")
    terminated.add_note("run the same command again")
    assert interrupt_message(terminated) == (
        "interrupted (SIGTERM): 3 of 7 shards are stored; run the same command again"
    )


def test_a_second_interrupt_during_the_cleanup_keeps_the_first_ones_cause_and_notes() -> None:
    try:
        try:
            raise Terminated
        except Terminated as first:
            first.add_note("the last checkpoint is iter_00000010.pt")
            raise KeyboardInterrupt from None  # Ctrl-C while cleaning up
    except KeyboardInterrupt as second:
        assert interrupt_exit_code(second) == 143
        assert interrupt_message(second) == (
            "interrupted (SIGTERM): the last checkpoint is iter_00000010.pt"
        )
