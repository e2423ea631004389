"""Cyclone DDS configuration for runs that stay on one machine (tests, the fake Franka next to the actor).

Owns: `loopback_config()`, the smallest `CYCLONEDDS_URI` XML that keeps a domain on the loopback interface, and
`use_loopback_if_unset()`, which applies it for this process unless the user chose a config.

Why: with no config Cyclone picks the first multicast-capable interface (eth0 on a typical host) and discovers and
delivers over it, which works on one machine too (the kernel loops multicast back), but sends the test traffic
onto the LAN, where a second run with the same domain id and topic names would cross-talk. Pinning 127.0.0.1
keeps it on the host; Cyclone treats Linux's `lo` as multicast-capable, so SPDP discovery is unchanged and needs no
peer list. A robot on another machine needs a real interface, so the DDS backend never applies this by itself.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV_VAR = "CYCLONEDDS_URI"


def loopback_config() -> str:
    """CYCLONEDDS_URI XML that binds every domain of this process to the loopback interface (127.0.0.1)."""
    return ('<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface address="127.0.0.1"/>'
            '</Interfaces></General></Domain></CycloneDDS>')


def use_loopback_if_unset(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set CYCLONEDDS_URI to `loopback_config()` unless it is already set; True when it set it. Cyclone reads
    the variable when this process creates the first participant of a domain, so call it before that."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return False
    env[ENV_VAR] = loopback_config()
    return True
