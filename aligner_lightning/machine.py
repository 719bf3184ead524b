"""The machine a number was measured on: every speed figure this project logs or prints names its CPU."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (``lscpu``'s "Model name"), else what Python knows. A name that
    does not tell the generation (a cloud host's bare "AMD EPYC") gets its family and model numbers, since hosts
    under one name can differ 2.5x in speed."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if not any(ch.isdigit() for ch in name) and "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name
