"""The machine's size, which the preset ``auto`` is sized from (:mod:`..sizing` decides)."""

from __future__ import annotations

import os
from pathlib import Path


def this_machine() -> tuple[int, int]:
    """(CPUs this process may use, MiB of RAM)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
            break
    return cores, memory_kib // 1024
