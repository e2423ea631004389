"""Real-time scheduling for the robot side of a run (the actor stepping the arm, the fake Franka).

Owns: `use_realtime(priority)`, which moves this process's calling thread, and every thread it starts afterwards
(Cyclone DDS's receive threads, the watchdog thread), to the SCHED_FIFO policy at `bridge.realtime_priority`, so
a learner training on the same machine cannot delay a control period or a state message by a time slice. Call it
before the DDS participant exists: threads inherit the policy when they are created. 0 leaves scheduling alone.
Needs root or CAP_SYS_NICE (on a robot PC: `@realtime - rtprio 99` in /etc/security/limits.conf, as the
franka_ros2 set-up already asks for); a refusal is a `ConfigError` naming the field. Also `wait_until`, how a
control loop waits for its next period (the robot env, benchmarks/actor_step.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from serl_stack.config import ConfigError


def use_realtime(priority: int) -> None:
    """SCHED_FIFO at `priority` (1..99) for this thread and the threads it starts from now on; 0: nothing."""
    if priority <= 0:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as e:
        raise ConfigError(f"bridge.realtime_priority: got {priority}, but this process may not use SCHED_FIFO "
                          f"({e}); expected 0, or run it as root or with CAP_SYS_NICE (rtprio in "
                          "/etc/security/limits.conf)") from e
    except AttributeError as e:  # not Linux
        raise ConfigError(f"bridge.realtime_priority: got {priority}, but this platform has no SCHED_FIFO; "
                          "expected 0") from e


SPIN_S = 0.0015
"""The last part of a control period that `wait_until` spins instead of sleeping: a sleep can wake up to ~1 ms
late."""


IDLE_S = 0.002
"""How long before the spin window `wait_until` calls its `idle` work: late in the sleep, so it handles what
arrived during most of the period, with time to finish before the spin window."""


def wait_until(deadline: float, now: Callable[[], float] = time.monotonic, spin_s: float = SPIN_S,
               warm: Callable[[], object] | None = None, idle: Callable[[], object] | None = None,
               idle_s: float = IDLE_S) -> float:
    """Wait until `now() >= deadline` and return that time: sleep until `spin_s + idle_s` before it, call `idle`
    (if given and the spin window has not begun), sleep on until `spin_s` before the deadline, then call `warm`
    (if given and the deadline has not passed), then spin, yielding the GIL (so other threads, such as DDS's
    receivers, are not held up to the 5 ms switch interval).

    `idle` is work the loop must do but not between an observation and its command: the actor's bookkeeping
    (`Actor.idle_step`: the learner's acknowledgements and parameters received, new parameters adopted and their
    policy built), done in time the loop would otherwise sleep, late enough that what arrived during the period
    is there to handle.

    `warm` is the next step's own work done once on stale input, its result discarded: while a control loop
    sleeps, a core the OS or a hypervisor hands to other work evicts the step's code and data from the caches, and
    the first step after the sleep pays for it (measured on this project's 2-core VM: a 256x256 numpy MLP takes
    14 us back to back, 180 us after a 10 ms sleep, 30 us when run once 1.5 ms before). It must not change any
    state the step depends on."""
    if idle is not None:
        while (t := now()) < deadline - spin_s - idle_s:
            time.sleep(deadline - spin_s - idle_s - t)
        if t < deadline - spin_s:
            idle()
    while (t := now()) < deadline - spin_s:
        time.sleep(deadline - spin_s - t)
    if warm is not None and t < deadline:
        warm()
    while (t := now()) < deadline:
        time.sleep(0)
    return t
