"""Real waiting for the tests that watch threads: poll a predicate with a generous bound (this machine may be busy).

Imported by the test modules as `wait_support` (pytest puts `tests/` on sys.path, it has no `__init__.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (polled every 5 ms, checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
