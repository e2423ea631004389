"""Real waiting for the tests that watch threads: poll a predicate with a generous bound (this machine may be busy).

Imported by the test modules as `wait_support` (pytest puts `tests/` on sys.path, it has no `__init__.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (polled every `interval` seconds, checked once
    more at the end). A predicate may act as well as test (publish, then look): `interval` is then its rate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
