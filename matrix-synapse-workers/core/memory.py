"""Pure: the host's memory budget -> how much each Synapse process's caches may take.

Every Synapse process keeps its own caches, and each grows with load up to
limits that count entries, not bytes (``caches.global_factor``).  The one
setting that bounds bytes is ``caches.cache_autotuning``: every 30 s the
process asks jemalloc how much it has allocated and, above
``max_cache_memory_usage``, drops the least recently used cache entries
(none used in the last ``min_cache_ttl``) until it is below
``target_cache_memory_usage``.  It works only where jemalloc is the allocator
(synapse/metrics/jemalloc.py looks for it in /proc/self/maps; without it the
setting is silently ignored), and only with ``PYTHONMALLOC=malloc``: Python's
own small-object allocator takes its arenas straight from mmap, so jemalloc
never sees most cache entries (measured: 400,000 small dicts added 114 MiB of
RSS and 4 MiB of jemalloc's ``allocated``; with ``PYTHONMALLOC=malloc``,
133 MiB and 113 MiB).  So the units preload libjemalloc2 when it is installed
(render/sandbox.py), and each process gets its own ceiling: the budget split
over the processes of this host by :attr:`..catalog.Role.cache_weight`, each
keeping at least :data:`MIN_PROCESS_MIB`.  The factors stay Synapse's: they
bound entries, whose size differs a hundredfold between homeservers.

The ceiling is jemalloc's ``allocated``, not RSS: RSS adds the code and
libraries (about 38 MiB after Synapse's imports) and jemalloc's own slack
(resident/allocated measured at 1.14 under a heap of small objects), so
``max_cache_memory_usage`` is the share less :data:`OVERHEAD_MIB`, divided by
:data:`SLACK`.

>>> plan = memory_plan(1000, (("main", 3), ("sync-1", 3), ("typing-1", 1)), jemalloc=True)
>>> [(s.name, s.mib) for s in plan.shares]
[('main', 371), ('sync-1', 371), ('typing-1', 257)]
>>> plan.caches_for("main")["cache_autotuning"]
{'max_cache_memory_usage': '289M', 'target_cache_memory_usage': '216M', 'min_cache_ttl': '2m'}
>>> memory_plan(1000, (("main", 3),), jemalloc=False).caches_for("main")
{}
>>> parse_budget(" 4G "), parse_budget("auto"), parse_budget("1536")
(4096, None, 1536)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import SelectionError

if TYPE_CHECKING:
    from .facts import HostFacts
    from .plan import Plan

AUTO = "auto"
#: What the budget answer accepts, for messages.
BUDGET_CHOICES = "auto, or a whole number of MiB (e.g. 4096; a G suffix counts GiB: 4G)"
#: The least a Synapse process may get: it holds 115-150 MiB of RSS before its caches
#: fill (docs/benchmarks.md); below that autotuning would empty its caches every 30 s.
MIN_PROCESS_MIB = 200
#: ``auto``: this share of the machine's RAM, less the resident memory PostgreSQL and
#: Redis on this machine are configured to hold.  The other half is the page cache
#: (PostgreSQL's second cache), PostgreSQL's backends, nginx and the system.
AUTO_SHARE = 0.5
#: RSS a process holds outside jemalloc's ``allocated``: code, libraries, stacks.
OVERHEAD_MIB = 38
#: jemalloc's resident memory over its ``allocated`` (measured 1.14; rounded up).
SLACK = 1.15
#: Eviction stops at this share of the ceiling (Synapse's own example: 758M of 1024M).
TARGET_RATIO = 0.75
#: Entries used more recently than this are never evicted for memory.
MIN_CACHE_TTL = "2m"
#: The line of conf.d/workers.yaml that keeps the budget as answered (read back by
#: system/hostfacts.py and debian/config).
BUDGET_LINE = "# memory-budget: "
#: The largest budget taken (1 TiB): beyond any machine this package runs on.
MAX_BUDGET_MIB = 1 << 20

_BUDGET = re.compile(r"(?P<number>[0-9]{1,8})\s*(?P<unit>M|MB|MiB|G|GB|GiB)?", re.IGNORECASE)


def parse_budget(text: str) -> int | None:
    """The budget in MiB, or None for ``auto``; a SelectionError naming the value otherwise."""
    value = text.strip()
    if value.lower() in (AUTO, ""):
        return None
    match = _BUDGET.fullmatch(value)
    if match is None:
        raise SelectionError(f"memory budget {text.strip()!r} is not understood; accepted: "
                             f"{BUDGET_CHOICES}")
    mib = int(match["number"]) * (1024 if (match["unit"] or "m")[0].lower() == "g" else 1)
    if not MIN_PROCESS_MIB <= mib <= MAX_BUDGET_MIB:
        raise SelectionError(f"memory budget {text.strip()!r} is out of range; accepted: "
                             f"{BUDGET_CHOICES}, from {MIN_PROCESS_MIB} MiB (one process) to "
                             f"{MAX_BUDGET_MIB} MiB")
    return mib


def format_budget(mib: int | None) -> str:
    """The answer's spelling: ``auto`` or the MiB."""
    return AUTO if mib is None else str(mib)


def auto_budget(ram_mib: int, reserved: Sequence[tuple[str, int]] = ()) -> int:
    """``auto``: half the RAM less what PostgreSQL and Redis here hold resident.

    >>> auto_budget(4096, (("PostgreSQL shared_buffers", 128),))
    1920
    """
    return int(ram_mib * AUTO_SHARE) - sum(mib for _, mib in reserved)


@dataclass(frozen=True)
class ProcessShare:
    """One process's part of the budget and the ``caches`` settings that hold it there."""

    name: str
    weight: int
    mib: int
    caches: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryPlan:
    """The budget of this host's Synapse processes and how it is split."""

    budget_mib: int
    #: How the budget was found, for status and messages.
    source: str
    #: Cache autotuning holds each process to its share (jemalloc is installed).
    enforced: bool
    shares: tuple[ProcessShare, ...]
    #: The admin's own ``caches`` settings: they win over ours, key by key.
    admin_caches: Mapping[str, Any] = field(default_factory=dict)

    def caches_for(self, name: str) -> dict[str, Any]:
        """The ``caches`` mapping for process ``name``: ours, then the admin's over it.

        Empty when we set nothing (no jemalloc): the process then reads the admin's
        ``caches`` from homeserver.yaml as before.
        """
        ours = next((dict(s.caches) for s in self.shares if s.name == name), {})
        return {**ours, **self.admin_caches} if ours else {}

    @property
    def overridden(self) -> tuple[str, ...]:
        """Our keys the admin's settings replace."""
        return tuple(k for k in ("cache_autotuning",) if k in self.admin_caches)


def _autotuning(share_mib: int) -> dict[str, Any]:
    ceiling = max(1, int((share_mib - OVERHEAD_MIB) / SLACK))
    return {"cache_autotuning": {"max_cache_memory_usage": f"{ceiling}M",
                                 "target_cache_memory_usage": f"{int(ceiling * TARGET_RATIO)}M",
                                 "min_cache_ttl": MIN_CACHE_TTL}}


def minimum_budget(processes: int) -> int:
    return processes * MIN_PROCESS_MIB


def memory_plan(budget_mib: int | None, processes: Sequence[tuple[str, int]], *,
                jemalloc: bool, ram_mib: int = 0, reserved: Sequence[tuple[str, int]] = (),
                admin_caches: Mapping[str, Any] | None = None) -> MemoryPlan:
    """Split the budget (None: ``auto`` from ``ram_mib`` and ``reserved``) over
    ``processes`` (name, weight): each gets :data:`MIN_PROCESS_MIB`, the rest goes by weight.

    An explicit budget too small for the processes is refused; ``auto`` on a small
    machine is raised to the minimum instead (an unattended install must not fail
    for it), and says so in its source.
    """
    count = len(processes)
    floor = minimum_budget(count)
    if budget_mib is None:
        found = auto_budget(ram_mib, reserved)
        less = "".join(f" less {mib} MiB {what}" for what, mib in reserved)
        source = f"auto: {int(AUTO_SHARE * 100)}% of {ram_mib} MiB RAM{less}"
        if found < floor:
            source += f", raised to the {floor} MiB that {count} processes need"
        budget = max(found, floor)
    else:
        if budget_mib < floor:
            raise SelectionError(
                f"memory budget {budget_mib} MiB is too small for the {count} Synapse processes of "
                f"this host ({MIN_PROCESS_MIB} MiB each at least); accepted: {AUTO}, or at least "
                f"{floor}")
        budget, source = budget_mib, "set"
    spare = budget - floor
    total_weight = sum(weight for _, weight in processes) or 1
    shares = []
    for name, weight in processes:
        mib = MIN_PROCESS_MIB + spare * weight // total_weight
        shares.append(ProcessShare(name, weight, mib, _autotuning(mib) if jemalloc else {}))
    return MemoryPlan(budget, source, jemalloc, tuple(shares), dict(admin_caches or {}))


def processes_of(plan: "Plan") -> tuple[tuple[str, int], ...]:
    """This host's Synapse processes and their weights: main (on the main host) and its workers."""
    from .catalog import MAIN_CACHE_WEIGHT
    main = (("main", MAIN_CACHE_WEIGHT),) if plan.here is None else ()
    return main + tuple((w.name, w.role.cache_weight) for w in plan.local_workers)


def host_memory_plan(plan: "Plan", facts: "HostFacts", budget_mib: int | None) -> MemoryPlan:
    """:func:`memory_plan` for this host's processes, from what was read of the host."""
    return memory_plan(budget_mib, processes_of(plan), jemalloc=facts.jemalloc is not None,
                       ram_mib=facts.memory_mib, reserved=facts.memory_reserved,
                       admin_caches=facts.admin_caches)
