"""The operator's keys at the robot: mark an episode a success, or abort it.

Owns: `OperatorKeys`, a daemon thread reading lines from a text stream (the actor's terminal): `s` + Enter marks
the running episode a success (for a task whose success the env cannot compute, or to overrule it), `a` + Enter
aborts it (the episode is truncated, not terminated: no value is learned from the cut). The robot env polls it
once per step (`take()`), so a key acts at the next control step. Started only when the stream is a terminal:
under `ros2 launch` or in a test there is no one typing.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

SUCCESS, ABORT = "success", "abort"
KEYS = {"s": SUCCESS, "a": ABORT}


class OperatorKeys:
    """Lines from `stream`: `s` -> "success", `a` -> "abort"; anything else is ignored (and said so)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self._pending: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> OperatorKeys:
        print("robot env: type s + Enter to mark the episode a success, a + Enter to abort it", flush=True)
        self._thread = threading.Thread(target=self._read, name="operator-keys", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self.stream:
            key = KEYS.get(line.strip().lower())
            if key is None:
                if line.strip():
                    print(f"robot env: unknown key {line.strip()!r}; s = success, a = abort", flush=True)
                continue
            with self._lock:
                self._pending = key

    def take(self) -> str | None:
        """The key pressed since the last call, if any ("success" or "abort")."""
        with self._lock:
            key, self._pending = self._pending, None
        return key


def operator_keys_if_terminal() -> OperatorKeys | None:
    """Keys from the actor's terminal, or None when stdin is not one."""
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stdin
        interactive = False
    return OperatorKeys().start() if interactive else None
