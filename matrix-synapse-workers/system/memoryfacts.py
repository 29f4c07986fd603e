"""Read-only: what the memory budget is sized from (core/memory.py decides).

The machine's RAM, the resident memory PostgreSQL and Redis on this machine are
configured to hold (PostgreSQL's ``shared_buffers``, Redis's ``maxmemory``),
whether libjemalloc2 is installed, and a running process's RSS.
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

#: PostgreSQL's default shared_buffers when its configuration does not set it.
PG_DEFAULT_SHARED_BUFFERS_MIB = 128
_PG_SIZE = re.compile(r"\s*shared_buffers\s*=?\s*'?(?P<n>[0-9]+)\s*(?P<unit>[kMGT]B)?'?\s*(#.*)?$")
_REDIS_SIZE = re.compile(r"\s*maxmemory\s+(?P<n>[0-9]+)\s*(?P<unit>[kmg]b?)?\s*$", re.IGNORECASE)
_PG_UNITS = {None: 8 / 1024, "kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
_REDIS_UNITS = {"": 1 / 2**20, "k": 1000 / 2**20, "kb": 1 / 1024, "m": 1e6 / 2**20, "mb": 1,
                "g": 1e9 / 2**20, "gb": 1024}


def ram_mib() -> int:
    """MemTotal in MiB (the running machine's: /proc is not under a test root)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _last_match(pattern: re.Pattern[str], files: list[Path]) -> re.Match[str] | None:
    found = None
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = pattern.match(line)
            if match:
                found = match
    return found


def postgres_shared_buffers(root: Path) -> list[tuple[str, int]]:
    """Each local PostgreSQL cluster's shared_buffers (Debian's /etc/postgresql/V/NAME/)."""
    found = []
    for conf in sorted((root / "etc/postgresql").glob("*/*/postgresql.conf")):
        files = [conf, *sorted((conf.parent / "conf.d").glob("*.conf"))]
        match = _last_match(_PG_SIZE, files)
        mib = (int(int(match["n"]) * _PG_UNITS[match["unit"]]) if match
               else PG_DEFAULT_SHARED_BUFFERS_MIB)
        found.append((f"PostgreSQL {conf.parent.parent.name}/{conf.parent.name} shared_buffers", mib))
    return found


def redis_maxmemory(root: Path) -> list[tuple[str, int]]:
    """maxmemory of every Redis or Valkey configuration here that sets one."""
    found = []
    for conf in sorted([*(root / "etc/redis").glob("*.conf"), *(root / "etc/valkey").glob("*.conf")]):
        match = _last_match(_REDIS_SIZE, [conf])
        if match and int(match["n"]):
            mib = int(int(match["n"]) * _REDIS_UNITS[(match["unit"] or "").lower()])
            found.append((f"{conf.stem} maxmemory", mib))
    return found


def reserved_memory(root: Path) -> tuple[tuple[str, int], ...]:
    return tuple(postgres_shared_buffers(root) + redis_maxmemory(root))


def jemalloc_path(root: Path) -> str | None:
    """libjemalloc2's library for this architecture, when it is installed under ``root``."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = [f"usr/lib/{multiarch}/libjemalloc.so.2"] if multiarch else []
    candidates += sorted(str(p.relative_to(root)) for p in (root / "usr/lib").glob("*/libjemalloc.so.2"))
    for candidate in candidates:
        if (root / candidate).is_file():
            return "/" + candidate
    return None


def rss_mib(pid: int) -> int | None:
    """A process's resident memory (VmRSS), None when it is gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
