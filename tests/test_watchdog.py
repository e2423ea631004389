"""Watchdog: hold on a missing command, fail on stale state; WatchdogThread: one on_hold per hold episode."""

from __future__ import annotations

import math
import threading
import time

import pytest
from wait_support import wait_until

from serl_stack.config import SafetyConfig
from serl_stack.safety import StaleStateError, Watchdog, WatchdogThread


class FakeClock:
    """A clock the test moves by hand (thread-safe enough: one float written by the test thread)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt



# --------------------------------------------------------------------------------------------- Watchdog


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.05, 0.099])
def test_hold_within_watchdog_s_plus_one_control_step(phase: float) -> None:
    """The issue's Done-when: no command for watchdog_s -> hold within watchdog_s + one control step."""
    clock = FakeClock(0.0)
    dt, watchdog_s = 0.1, 0.5  # 10 Hz control loop that checks the watchdog every step
    wd = Watchdog(watchdog_s, state_timeout_s=0.5, clock=clock)
    clock.t = phase
    for _ in range(10):  # a healthy loop: command + state every step, never a hold
        wd.command_received()
        wd.state_received(clock())
        assert not wd.check().hold
        clock.advance(dt)
    last_command = clock.t - dt
    hold_at = None
    for _ in range(20):  # the policy stalls; states keep arriving
        wd.state_received(clock())
        status = wd.check()
        if status.hold:
            hold_at = clock.t
            break
        assert status.command_age_s < watchdog_s
        clock.advance(dt)
    assert hold_at is not None
    assert watchdog_s <= hold_at - last_command <= watchdog_s + dt + 1e-9


def test_a_new_command_clears_hold() -> None:
    clock = FakeClock()
    wd = Watchdog(0.5, 10.0, clock=clock)
    clock.advance(0.6)
    status = wd.check()
    assert status.hold and status.command_age_s == pytest.approx(0.6)
    wd.command_received()
    assert not wd.check().hold
    wd.command_received(now=clock.t - 5.0)  # a late report of an old command does not roll the timer back
    assert not wd.check().hold
    clock.advance(0.5)
    assert wd.check().hold


def test_explicit_now_overrides_the_clock() -> None:
    wd = Watchdog(0.5, 10.0, clock=lambda: 0.0)
    wd.command_received(now=3.0)
    assert not wd.check(now=3.4).hold and wd.check(now=3.5).hold


def test_stale_state_raises_naming_age_and_limit() -> None:
    clock = FakeClock()
    wd = Watchdog(0.5, state_timeout_s=0.25, clock=clock)
    wd.state_received(clock())
    clock.advance(0.2)
    assert wd.check().state_age_s == pytest.approx(0.2)
    wd.state_received(clock() - 1.0)  # an old, reordered message does not make the state older
    clock.advance(0.15)
    with pytest.raises(StaleStateError) as e:
        wd.check()
    assert e.value.age_s == pytest.approx(0.35) and e.value.limit_s == 0.25
    assert "0.350 s old" in str(e.value) and "state_timeout_s = 0.25 s" in str(e.value)
    wd.state_received(clock())
    assert not wd.check().hold


def test_a_state_stream_that_never_starts_is_stale() -> None:
    clock = FakeClock()
    wd = Watchdog(0.5, 0.5, clock=clock)
    clock.advance(0.51)
    with pytest.raises(StaleStateError):
        wd.check()
    wd.reset()
    assert not wd.check().hold


def test_from_config_and_validation() -> None:
    wd = Watchdog.from_config(SafetyConfig(watchdog_s=0.3, state_timeout_s=0.2))
    assert (wd.watchdog_s, wd.state_timeout_s) == (0.3, 0.2)
    with pytest.raises(ValueError, match=r"env.safety.watchdog_s.*got 0"):
        Watchdog(0.0, 1.0)
    with pytest.raises(ValueError, match=r"env.safety.state_timeout_s.*got nan"):
        Watchdog(1.0, math.nan)
    with pytest.raises(ValueError, match="stamp"):
        Watchdog(1.0, 1.0).state_received(math.inf)


# --------------------------------------------------------------------------------------------- WatchdogThread


def test_thread_calls_on_hold_once_per_hold_episode() -> None:
    clock = FakeClock()
    wd = Watchdog(0.5, 1e6, clock=clock)
    calls: list[float] = []
    with WatchdogThread(wd, lambda: calls.append(clock()), period_s=0.005) as thread:
        time.sleep(0.05)
        assert calls == []  # commands are fresh
        clock.advance(0.6)  # the main thread stalls: no command for watchdog_s
        assert wait_until(lambda: len(calls) == 1)
        time.sleep(0.1)  # many more polls while still holding: still one call
        assert len(calls) == 1 and thread.holding
        wd.command_received()  # the loop is back: the hold episode ends
        assert wait_until(lambda: not thread.holding)
        clock.advance(0.6)  # a second stall is a second hold episode
        assert wait_until(lambda: len(calls) == 2)
        time.sleep(0.05)
        assert len(calls) == 2 and thread.holds == 2
        thread.raise_if_failed()  # nothing to raise


def test_thread_holds_while_the_main_thread_is_stuck() -> None:
    """Real clock: the main thread blocks (as in a jit compile) and the watchdog thread still commands hold."""
    wd = Watchdog(0.05, 60.0)
    held = threading.Event()
    thread = WatchdogThread(wd, held.set, period_s=0.01).start()
    try:
        wd.command_received()
        time.sleep(0.3)  # stuck, sending nothing
        assert held.wait(5.0)
        assert thread.holds == 1
    finally:
        thread.stop()


def test_thread_surfaces_stale_state_via_raise_if_failed() -> None:
    clock = FakeClock()
    wd = Watchdog(10.0, 0.2, clock=clock)
    calls: list[int] = []
    thread = WatchdogThread(wd, lambda: calls.append(1), period_s=0.005).start()
    try:
        time.sleep(0.02)
        thread.raise_if_failed()
        clock.advance(0.3)
        assert wait_until(lambda: thread.error is not None)
        with pytest.raises(StaleStateError, match="limit env.safety.state_timeout_s"):
            thread.raise_if_failed()
        assert calls == [1]  # the robot is told to hold before the error is reported
    finally:
        thread.stop()


def test_thread_records_an_on_hold_failure() -> None:
    clock = FakeClock()
    wd = Watchdog(0.1, 1e6, clock=clock)

    def broken() -> None:
        raise ConnectionError("bridge down")

    thread = WatchdogThread(wd, broken, period_s=0.005).start()
    try:
        clock.advance(0.2)
        assert wait_until(lambda: thread.error is not None)
        with pytest.raises(ConnectionError, match="bridge down"):
            thread.raise_if_failed()
    finally:
        thread.stop()
