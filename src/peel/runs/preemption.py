"""Stopping cleanly when the scheduler asks.

Slurm sends a signal before it preempts, requeues or times out a job (SIGTERM always, and
USR1/USR2 when asked to with `--signal`; submitit asks for USR2). Inside `stop_on_signals()`
those signals do not kill the process: they set a flag that long work reads at its next safe
point (the engine after an optimizer step, an attack grid between attacks), where it writes
what it needs to continue and raises `Preempted`. The CLI exits with PREEMPTED_EXIT_STATUS.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_requested: list[str] = []  # names of the signals received inside the current block


def _ask_to_stop(number: int, frame) -> None:
    name = signal.Signals(number).name
    if not _requested:
        print(f"peel: {name} received; stopping at the next safe point", file=sys.stderr, flush=True)
    _requested.append(name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM / SIGUSR1 / SIGUSR2 ask the work to stop instead of killing it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only; elsewhere the defaults stay
        return
    _requested.clear()
    previous = {number: signal.signal(number, _ask_to_stop) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def requested() -> str | None:
    """The signal that asked this process to stop (None when none did)."""
    return _requested[0] if _requested else None
