"""The command watchdog and the state-staleness check, plus the thread that runs them beside a stalled loop.

Owns: deciding when the robot must hold its pose because no valid command arrived for `watchdog_s`
(`Watchdog.check` -> `WatchdogStatus.hold`), refusing to go on when the newest robot state is older than
`state_timeout_s` (`StaleStateError`), and `WatchdogThread`, which polls the check on its own daemon thread so
that "hold the current pose" is commanded even while the main thread is stuck in a jit compile or a GC pause,
and hands a stale-state error back to the main thread (`raise_if_failed`).

`Watchdog` is pure apart from its injected clock (default `time.monotonic`), so tests drive it with a fake clock
and never sleep. Times are seconds on that clock; state stamps must be on the same clock (stamp on arrival).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from serl_stack.config import SafetyConfig
from serl_stack.errors import SerlError


class StaleStateError(SerlError, RuntimeError):
    """The newest robot state is older than the state timeout: acting on it would be acting blind."""

    def __init__(self, age_s: float, limit_s: float, what: str = "robot state") -> None:
        self.age_s = age_s
        self.limit_s = limit_s
        super().__init__(
            f"{what} is stale: the newest message is {age_s:.3f} s old, limit "
            f"env.safety.state_timeout_s = {limit_s:g} s (is the state stream or the robot bridge down?)"
        )


@dataclass(frozen=True)
class WatchdogStatus:
    """One watchdog check."""

    hold: bool
    """No valid command for watchdog_s: the robot must hold its current pose."""
    command_age_s: float
    """Seconds since the last valid command (or since the watchdog started / was reset)."""
    state_age_s: float
    """Seconds since the newest robot state (or since the watchdog started / was reset, before any state)."""


def _positive(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite number of seconds > 0, got {value!r}")
    return v


class Watchdog:
    """Tracks when the last valid command and the newest state arrived; `check` says hold or raises when stale.

    Thread-safe: the control loop reports commands and states while a `WatchdogThread` checks.
    """

    def __init__(self, watchdog_s: float, state_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.watchdog_s = _positive(watchdog_s, "env.safety.watchdog_s")
        self.state_timeout_s = _positive(state_timeout_s, "env.safety.state_timeout_s")
        self._clock = clock
        self._lock = threading.Lock()
        start = self._now(None)
        # Both timers run from construction: a command or state stream that never starts is caught too.
        self._last_command = start
        self._last_state = start

    @classmethod
    def from_config(cls, safety: SafetyConfig, clock: Callable[[], float] = time.monotonic) -> Watchdog:
        return cls(safety.watchdog_s, safety.state_timeout_s, clock)

    def _now(self, now: float | None) -> float:
        t = float(self._clock() if now is None else now)
        if not math.isfinite(t):
            raise ValueError(f"now: expected a finite time in seconds, got {t!r}")
        return t

    def reset(self, now: float | None = None) -> None:
        """Restart both timers (an episode reset: the pose was just commanded and the state just read)."""
        t = self._now(now)
        with self._lock:
            self._last_command = t
            self._last_state = t

    def command_received(self, now: float | None = None) -> None:
        """A valid command was sent to the robot (call it with the filter's output, not for held/NaN ones)."""
        t = self._now(now)
        with self._lock:
            self._last_command = max(self._last_command, t)

    def state_received(self, stamp: float) -> None:
        """A robot state stamped `stamp` (on this watchdog's clock) arrived; late, older ones do not count."""
        t = float(stamp)
        if not math.isfinite(t):
            raise ValueError(f"stamp: expected a finite time in seconds, got {stamp!r}")
        with self._lock:
            self._last_state = max(self._last_state, t)

    def check(self, now: float | None = None) -> WatchdogStatus:
        """Hold when no valid command came for watchdog_s; raise StaleStateError when the state is too old."""
        t = self._now(now)
        with self._lock:
            command_age = t - self._last_command
            state_age = t - self._last_state
        if state_age > self.state_timeout_s:
            raise StaleStateError(state_age, self.state_timeout_s)
        return WatchdogStatus(hold=command_age >= self.watchdog_s, command_age_s=command_age, state_age_s=state_age)


class WatchdogThread:
    """Polls `watchdog.check()` every `period_s` on a daemon thread and calls `on_hold()` once per hold episode.

    A hold episode starts at the first check that says hold and ends at the first check that does not (a new
    command arrived). On a StaleStateError (or an exception from `on_hold`) the thread commands a hold if it is
    not already holding, records the error and stops; the control loop calls `raise_if_failed()` every step.
    `on_hold` runs on this thread: it must be thread-safe and quick (publish "hold current pose", nothing more).
    """

    def __init__(self, watchdog: Watchdog, on_hold: Callable[[], None], period_s: float,
                 poll: Callable[[], None] | None = None) -> None:
        """`poll()`, if given, runs on this thread before every check: e.g. a robot env reporting its state
        streams' newest arrival times to the watchdog, so their staleness is judged even while the control loop
        is stalled (the stall must make the robot hold, not look like a dead state stream)."""
        self.watchdog = watchdog
        self.period_s = _positive(period_s, "period_s")
        self._on_hold = on_hold
        self._poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._holding = False
        self._error: BaseException | None = None
        self.holds = 0
        """Hold episodes so far (on_hold calls)."""

    def start(self) -> WatchdogThread:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("WatchdogThread.start: already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serl-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling and wait for the thread (default: up to a few periods)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else max(1.0, 5 * self.period_s))
            self._thread = None

    def __enter__(self) -> WatchdogThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def holding(self) -> bool:
        """Whether the last check said hold."""
        return self._holding

    @property
    def error(self) -> BaseException | None:
        return self._error

    def raise_if_failed(self) -> None:
        """Re-raise, on the calling (main) thread, the error that stopped the watchdog thread, if any."""
        if self._error is not None:
            raise self._error

    def _hold(self) -> None:
        if not self._holding:
            self._holding = True
            self.holds += 1
            self._on_hold()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._poll is not None:
                    self._poll()
                try:
                    status = self.watchdog.check()
                except StaleStateError:
                    self._hold()  # blind is worse than still: stop moving before reporting
                    raise
                if status.hold:
                    self._hold()
                else:
                    self._holding = False
            except Exception as e:  # recorded for the main thread, which owns the decision to stop the run
                self._error = e
                return
            self._stop.wait(self.period_s)
