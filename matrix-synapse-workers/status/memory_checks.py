"""The memory budget's row: the sum of the Synapse processes' RSS against it."""

from __future__ import annotations

from .advice import RECONFIGURE, RESTART_ALL
from .model import INFO, OK, WARN, Facts, MemoryFacts, Row

#: How many of the biggest processes a warning names.
BIGGEST = 3
_RECONFIGURE = f"{RECONFIGURE} (the memory budget question)"


def _biggest(memory: MemoryFacts) -> str:
    ranked = sorted(memory.rss.items(), key=lambda item: -item[1])[:BIGGEST]
    return ", ".join(f"{name} {mib} MiB (share {memory.shares.get(name, '?')})" for name, mib in ranked)


def check_memory(facts: Facts) -> list[Row]:
    """A warning row when the processes hold more than the budget, naming the biggest;
    info rows when the package cannot hold them to it or the admin's settings decide."""
    memory = facts.memory
    if memory is None:
        return []
    if isinstance(memory, str):
        return [Row("memory", "budget", WARN, memory, f"give a budget the processes fit in: {_RECONFIGURE}")]
    subject = f"{len(memory.rss)} Synapse processes"
    detail = (f"{memory.total_mib} MiB RSS of a {memory.budget_mib} MiB budget ({memory.source})")
    rows = []
    if memory.total_mib > memory.budget_mib:
        advice = (f"install libjemalloc2, then: {RECONFIGURE}" if not memory.enforced
                  else "a process takes a changed share at its next restart "
                       f"({RESTART_ALL}); else raise the budget: {_RECONFIGURE}")
        rows.append(Row("memory", subject, WARN, f"{detail}, above it; biggest: {_biggest(memory)}", advice))
    else:
        rows.append(Row("memory", subject, OK, detail))
    if not memory.enforced:
        rows.append(Row("memory", "cache autotuning", INFO,
                        "not used: libjemalloc2 is not installed, so nothing holds the caches to "
                        "the budget (Synapse's autotuning needs jemalloc)",
                        f"apt install libjemalloc2, then: {RECONFIGURE}"))
    if memory.overridden:
        rows.append(Row("memory", "caches", INFO,
                        f"your own caches.{', caches.'.join(memory.overridden)} in the Synapse "
                        "configuration wins over the package's per-process shares"))
    return rows
