"""What this machine offers (cores); imported by both data and engine."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity and container limits)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
