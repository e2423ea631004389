"""What every benchmark report says about the machine it ran on (imported by the scripts in this folder)."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np


def machine_info(**versions: str) -> dict[str, Any]:
    """CPU count and model, Python/numpy/platform, the 1-minute load average now, plus `versions` given."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass  # not Linux: the model name is only informative
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **versions,
    }
