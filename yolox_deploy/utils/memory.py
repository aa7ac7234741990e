"""This machine's memory, as the kernel reports it (psutil where installed, else ``/proc/meminfo``)."""

from __future__ import annotations

from pathlib import Path

_PSUTIL_FIELDS = {"MemTotal": "total", "MemAvailable": "available"}


def memory_bytes(field: str = "MemAvailable") -> int | None:
    """``MemTotal`` or ``MemAvailable`` in bytes; None where neither psutil nor ``/proc/meminfo`` tells."""
    try:
        import psutil

        return int(getattr(psutil.virtual_memory(), _PSUTIL_FIELDS[field]))
    except ImportError:
        pass
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    return None
