"""Plans for the routing and rendering tests."""

from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select


def plan_of(spec: str) -> Plan:
    """The main-host plan of a ``role:count`` spec, on one machine."""
    return Plan(plan_workers(select(workers=spec)))
