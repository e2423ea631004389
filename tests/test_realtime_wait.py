"""`robot_bridge.realtime.wait_until`: how the control loop waits for its next period (on a fake clock, with the
sleeps recorded instead of slept)."""

from __future__ import annotations

import pytest

from robot_bridge import realtime


class FakeClock:
    """A clock that advances by what is slept, plus `tick` per reading (the time the loop itself takes)."""

    def __init__(self, start: float, tick: float = 1e-5) -> None:
        self.t, self.tick, self.sleeps = start, tick, []

    def now(self) -> float:
        self.t += self.tick
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock(100.0)
    monkeypatch.setattr(realtime.time, "sleep", c.sleep)
    return c


def test_one_sleep_to_the_spin_window_then_yielding_spins_to_the_deadline(clock: FakeClock) -> None:
    deadline = 100.010
    end = realtime.wait_until(deadline, clock.now)
    assert deadline <= end < deadline + 1e-4
    long = [s for s in clock.sleeps if s > 0]
    assert len(long) == 1 and long[0] == pytest.approx(0.010 - realtime.SPIN_S, abs=1e-4)
    assert clock.sleeps[1:] and all(s == 0 for s in clock.sleeps[1:])  # the rest spun, yielding the GIL


def test_a_deadline_already_passed_returns_at_once(clock: FakeClock) -> None:
    end = realtime.wait_until(99.0, clock.now)
    assert end > 99.0 and clock.sleeps == []


def test_warm_runs_once_at_the_start_of_the_spin_window(clock: FakeClock) -> None:
    calls: list[float] = []
    deadline = 100.010
    end = realtime.wait_until(deadline, clock.now, warm=lambda: calls.append(clock.t))
    assert deadline <= end < deadline + 1e-4
    assert len(calls) == 1 and deadline - realtime.SPIN_S <= calls[0] < deadline  # after the sleep, before the end


def test_warm_is_skipped_when_the_deadline_has_passed(clock: FakeClock) -> None:
    calls: list[float] = []
    realtime.wait_until(99.0, clock.now, warm=lambda: calls.append(clock.t))
    assert calls == []


def test_idle_runs_once_late_in_the_sleep_then_warm_at_the_spin_window(clock: FakeClock) -> None:
    calls: list[tuple[str, float]] = []
    deadline = 100.010
    end = realtime.wait_until(deadline, clock.now, warm=lambda: calls.append(("warm", clock.t)),
                              idle=lambda: calls.append(("idle", clock.t)))
    assert deadline <= end < deadline + 1e-4
    assert [name for name, _ in calls] == ["idle", "warm"]
    idle_at = calls[0][1]
    # after sleeping to idle_s before the spin window (what arrived during the period is there), before the window
    assert deadline - realtime.SPIN_S - realtime.IDLE_S <= idle_at < deadline - realtime.SPIN_S
    long = [s for s in clock.sleeps if s > 0]
    assert len(long) == 2 and sum(long) == pytest.approx(0.010 - realtime.SPIN_S, abs=1e-4)


def test_idle_is_skipped_once_the_spin_window_has_begun(clock: FakeClock) -> None:
    calls: list[str] = []
    realtime.wait_until(100.001, clock.now, warm=lambda: calls.append("warm"), idle=lambda: calls.append("idle"))
    assert calls == ["warm"]  # 1 ms left: inside the 1.5 ms spin window, no time for bookkeeping


def test_a_long_idle_leaves_the_deadline_and_the_warm_up_in_place(clock: FakeClock) -> None:
    calls: list[str] = []

    def slow_idle() -> None:
        calls.append("idle")
        clock.t += 0.0012  # ran into the spin window

    end = realtime.wait_until(100.010, clock.now, warm=lambda: calls.append("warm"), idle=slow_idle)
    assert calls == ["idle", "warm"] and 100.010 <= end < 100.010 + 1e-4
