"""Ctrl-C for the long-running processes, delivered only where the loop can stop cleanly.

Owns: the SIGINT handler of `serl learner`, `serl actor` and `serl eval`. Python's default handler raises
`KeyboardInterrupt` wherever the interpreter happens to be, and inside a garbage-collector callback (JAX
registers one) it is printed as "Exception ignored in ..." and lost: the process then runs on until `serl
train` kills it after its grace period, without a checkpoint. Here SIGINT only sets a flag; the loops call
`check()` at points where stopping is safe (every env step, every learner iteration, every wait on the peer),
which raises `KeyboardInterrupt` from ordinary code. A second SIGINT while the first is still pending raises at
once, so a process that is stuck somewhere without a check point still stops.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_requested = threading.Event()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt
    _requested.set()


def install() -> None:
    """Route SIGINT to the flag (main thread only; a no-op elsewhere). Also re-enables SIGINT for a process that
    a non-interactive shell started with it ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def requested() -> bool:
    """Whether Ctrl-C (SIGINT) has arrived and not yet been handled."""
    return _requested.is_set()


def check() -> None:
    """Raise `KeyboardInterrupt` here if Ctrl-C arrived (the flag is cleared, so cleanup code can run)."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt
