"""The safety layer: everything between a policy's command and the robot that can refuse or change it.

Owns: `SafetyFilter` (workspace box, orientation cone, per-step limits, NaN/inf hold, gripper rate, force
backoff; filter.py) and `Watchdog` / `WatchdogThread` (hold on a missing command, fail on stale state;
watchdog.py), re-exported here. Pure numpy and the standard library: no MuJoCo, no JAX, so the real robot's
actor can import it without either. Conservative baseline mixing (stepmix.py, estimates.py) lives beside them but
is imported from its own modules, so importing the package does not pull in scipy.
"""

from serl_stack.safety.filter import FLAG_NAMES, FilterResult, SafetyFilter
from serl_stack.safety.watchdog import StaleStateError, Watchdog, WatchdogStatus, WatchdogThread

__all__ = [
    "FLAG_NAMES",
    "FilterResult",
    "SafetyFilter",
    "StaleStateError",
    "Watchdog",
    "WatchdogStatus",
    "WatchdogThread",
]
