"""Pure: do the deployment's database connections fit in PostgreSQL's limit?

Every Synapse process (main and each worker, on every host) keeps its own
connection pool: ``cp_min`` connections from the start, up to ``cp_max``
under load (``database.args``; Twisted's defaults are 3 and 5).  PostgreSQL
refuses connections beyond ``max_connections`` minus the slots reserved for
superusers, and Synapse then answers 500 (measured: the ``busy`` preset, 28
processes, on a stock PostgreSQL).

>>> verdict(28, cp_min=1, cp_max=5, max_connections=100, reserved=3).warning is not None
True
>>> verdict(3, cp_min=5, cp_max=10, max_connections=100, reserved=3)
Verdict(error=None, warning=None)
>>> print(unchecked(28, cp_min=3, cp_max=5, reason="connection refused"))  # doctest: +ELLIPSIS
PostgreSQL's connection limit was not checked (connection refused): ... 140 connections ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: Twisted's ConnectionPool defaults, which Synapse keeps unless database.args set them.
DEFAULT_CP_MIN = 3
DEFAULT_CP_MAX = 5


@dataclass(frozen=True)
class Verdict:
    error: str | None = None
    warning: str | None = None


def pool_sizes(database: Mapping[str, Any] | None) -> tuple[int, int]:
    args = (database or {}).get("args") or {}
    try:
        return int(args.get("cp_min", DEFAULT_CP_MIN)), int(args.get("cp_max", DEFAULT_CP_MAX))
    except (TypeError, ValueError):
        return DEFAULT_CP_MIN, DEFAULT_CP_MAX


def verdict(processes: int, *, cp_min: int, cp_max: int, max_connections: int,
            reserved: int) -> Verdict:
    available = max_connections - reserved
    def fix(need: int, key: str, value: int) -> str:
        return (f"raise max_connections in postgresql.conf to at least {need} (then restart "
                f"PostgreSQL), lower {key} (now {value}) in the database args of "
                "homeserver.yaml, or run fewer workers")
    if processes * cp_min > available:
        need = processes * cp_min + reserved
        return Verdict(error=(
            f"{processes} Synapse processes open at least {processes * cp_min} database "
            f"connections (cp_min {cp_min} each), but PostgreSQL allows {available} "
            f"(max_connections {max_connections}, {reserved} reserved): "
            + fix(need, "cp_min", cp_min)))
    if processes * cp_max > available:
        need = processes * cp_max + reserved
        return Verdict(warning=(
            f"{processes} Synapse processes may open up to {processes * cp_max} database "
            f"connections under load (cp_max {cp_max} each), but PostgreSQL allows "
            f"{available} (max_connections {max_connections}, {reserved} reserved); requests "
            "will fail with 500 once they run out: " + fix(need, "cp_max", cp_max)))
    return Verdict()


def unchecked(processes: int, *, cp_min: int, cp_max: int, reason: str) -> str:
    """What the admin must ensure when PostgreSQL could not be asked (an image build)."""
    return (f"PostgreSQL's connection limit was not checked ({reason}): the {processes} Synapse "
            f"processes open {processes * cp_min} database connections at start (cp_min {cp_min} "
            f"each) and up to {processes * cp_max} connections under load (cp_max {cp_max} each); "
            f"make sure max_connections in postgresql.conf, minus superuser_reserved_connections "
            f"(3 by default), is at least {processes * cp_max} (e.g. max_connections = "
            f"{processes * cp_max + 3}), or requests will fail with 500. 'matrix-synapse-workers "
            "status' checks it once PostgreSQL runs")
