"""Pure: how many workers this machine should run, from its cores and memory.

The measured basis (docs/benchmarks.md; 2 cores, Synapse 1.163, PostgreSQL on
the same machine, quiet runs): every Synapse process holds 117-150 MiB; each
split costs CPU per request (about 20 ms single, 18 with one sync worker, 24
with a sync worker and a client reader, 28 with one worker of every type), so
on 2 cores the bigger presets lose.  The split that measured best there is one
sync worker (1.34x the single process, median of three interleaved rounds on an
idle machine; a sync worker plus a client reader 1.24x in the survey).  With more cores the split grows where the load
is: the sync pool, and from 4 cores a client pool.  Above 2 cores that growth
is reasoning, not yet measurement: ``scripts/bench --cores N`` checks it.

>>> sized_counts(2, 4096)
{'sync': 1}
>>> sized_counts(8, 32768)
{'sync': 4, 'client': 2}
>>> sized_counts(8, 1024)
{'sync': 1, 'client': 1}
>>> sized_counts(1, 2048)
{'sync': 1}
"""

from __future__ import annotations

#: The most a Synapse process was seen to hold (RSS) in the benchmarks.
PROCESS_MIB = 150
#: Share of the memory Synapse's processes may take; PostgreSQL, Redis, nginx
#: and the page cache get the rest.
SYNAPSE_SHARE = 0.5


def sized_counts(cores: int, memory_mib: int) -> dict[str, int]:
    """Worker counts for a machine with ``cores`` CPUs and ``memory_mib`` of RAM."""
    if cores < 4:
        return {"sync": 1}  # the best measured on 2 cores; on 1 core no split pays
    sync, client = cores // 2, cores // 4
    budget = int(memory_mib * SYNAPSE_SHARE) // PROCESS_MIB - 1  # main takes one
    while sync + client > max(budget, 2):
        if sync > client:
            sync -= 1
        else:
            client -= 1
    return {"sync": sync, "client": client}


def describe(cores: int, memory_mib: int) -> str:
    counts = sized_counts(cores, memory_mib)
    return (f"{cores} cores, {memory_mib} MiB: "
            + ", ".join(f"{role}:{n}" for role, n in counts.items()))
