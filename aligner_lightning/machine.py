"""The machine a number was measured on: every speed figure this project logs or prints names its CPU."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (``lscpu``'s "Model name"), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
