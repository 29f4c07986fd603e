"""The host-sized default: the measured 2-core split, grown by cores, cut by memory."""

import pytest

from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import Selection
from matrix_synapse_workers.core.sizing import PROCESS_MIB, SYNAPSE_SHARE, sized_counts


@pytest.mark.parametrize("cores,memory,expected", [
    (1, 65536, {"sync": 1}),                  # one core: no split pays
    (2, 24576, {"sync": 1}),                  # the best measured split on 2 cores, not the biggest
    (3, 24576, {"sync": 1}),
    (4, 16384, {"sync": 2, "client": 1}),
    (16, 65536, {"sync": 8, "client": 4}),
    (16, 2048, {"sync": 3, "client": 2}),     # memory decides before cores
    (8, 512, {"sync": 1, "client": 1}),       # never below the 2-core split
])
def test_sized_counts(cores, memory, expected):
    assert sized_counts(cores, memory) == expected


@pytest.mark.parametrize("cores", [2, 4, 8, 32, 128])
@pytest.mark.parametrize("memory", [1024, 4096, 16384, 262144])
def test_sizing_keeps_synapse_within_its_memory_share_and_plans(cores, memory):
    counts = sized_counts(cores, memory)
    processes = 1 + sum(counts.values())
    assert processes * PROCESS_MIB <= max(memory * SYNAPSE_SHARE, 3 * PROCESS_MIB)
    assert counts["sync"] >= counts.get("client", 0)
    Plan(plan_workers(Selection(counts)))  # a valid selection
