"""The deployment description the main host writes and every worker host reads.

``/etc/matrix-synapse/cluster/cluster.yaml`` names main's replication and
Redis addresses and every host's workers.  A worker host plans from it alone,
so all processes derive the same stream writers and duty lists.

>>> from .topology import main_topology
>>> from .plan import Plan, remote_workers
>>> topology = main_topology("hostb 10.0.0.2 sync", "10.0.0.1")
>>> plan = Plan(remote_workers(topology), topology.replication)
>>> data = cluster_data(plan)
>>> data["hosts"]["hostb"]
{'address': '10.0.0.2', 'workers': ['sync-1-hostb']}
>>> [w.name for w in plan_from_cluster(parse_cluster(data, "cluster.yaml"), "hostb").local_workers]
['sync-1-hostb']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from . import paths
from .errors import HostConfigError
from .plan import Plan, Worker, parse_worker_name
from .topology import (DEFAULT_REDIS_PORT, Address, HostRole, Topology, WorkerHost,
                       media_store_refusal)

MAIN = "main"
#: Written only when true, so a deployment without it keeps its file unchanged.
SHARED_MEDIA_KEY = "shared_media_store"
COPY_HINT = (f"copy the directory /{paths.CLUSTER_DIR} from the main host, keeping owners and "
             "modes (for example: rsync -a mainhost:/etc/matrix-synapse/cluster/ "
             "/etc/matrix-synapse/cluster/)")


@dataclass(frozen=True)
class Cluster:
    replication: Address
    redis: Address
    #: Worker-host label -> its private address.
    addresses: Mapping[str, str]
    #: Host label (``main`` for the main host) -> worker names.
    workers: Mapping[str, tuple[str, ...]]
    #: Every process serves metrics (the main host's answer holds for all hosts).
    metrics: bool = False
    #: The main host's admin confirmed one media store shared by every host.
    shared_media: bool = False


def redis_address(plan: Plan) -> Address | None:
    """Where other hosts reach the dedicated Redis: as cluster.yaml says on a worker
    host, main's private address when the main host writes it."""
    if plan.redis is not None:
        return plan.redis
    return Address(plan.replication.host, DEFAULT_REDIS_PORT) if plan.replication else None


def cluster_data(plan: Plan) -> dict[str, Any]:
    assert plan.replication is not None
    redis = redis_address(plan)
    assert redis is not None
    hosts: dict[str, Any] = {MAIN: {"workers": [w.name for w in plan.workers if w.host is None]}}
    for worker in plan.workers:
        if worker.host is not None:
            entry = hosts.setdefault(worker.host, {"address": worker.address, "workers": []})
            entry["workers"].append(worker.name)
    data: dict[str, Any] = {
        "replication": {"host": plan.replication.host, "port": plan.replication.port},
        "redis": {"host": redis.host, "port": redis.port},
        "hosts": hosts,
    }
    if plan.metrics:
        data["metrics"] = True
    if plan.shared_media:
        data[SHARED_MEDIA_KEY] = True
    return data


def _address(data: Any, key: str, shown: str) -> Address:
    value = data.get(key) if isinstance(data, dict) else None
    if not (isinstance(value, dict) and isinstance(value.get("host"), str)
            and isinstance(value.get("port"), int)):
        raise HostConfigError(f"{shown} has no valid '{key}' (host and port); {COPY_HINT}")
    return Address(value["host"], value["port"])


def parse_cluster(data: Any, shown: str) -> Cluster:
    replication = _address(data, "replication", shown)
    redis = _address(data, "redis", shown)
    hosts = data.get("hosts")
    if not isinstance(hosts, dict) or MAIN not in hosts:
        raise HostConfigError(f"{shown} lists no hosts; {COPY_HINT}")
    addresses: dict[str, str] = {}
    workers: dict[str, tuple[str, ...]] = {}
    for label, entry in hosts.items():
        names = entry.get("workers") if isinstance(entry, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HostConfigError(f"{shown}: host {label!r} has no list of workers; {COPY_HINT}")
        workers[str(label)] = tuple(names)
        if label != MAIN:
            if not isinstance(entry.get("address"), str):
                raise HostConfigError(f"{shown}: worker host {label!r} has no address; {COPY_HINT}")
            addresses[str(label)] = entry["address"]
    shared = data.get(SHARED_MEDIA_KEY, False)
    if not isinstance(shared, bool):
        raise HostConfigError(f"{shown}: {SHARED_MEDIA_KEY} is {shared!r}, not true or false; "
                              f"{COPY_HINT}")
    return Cluster(replication, redis, addresses, workers, data.get("metrics") is True, shared)


def plan_from_cluster(cluster: Cluster, here: str) -> Plan:
    """The whole deployment's plan, rendered for worker host ``here``."""
    if here not in cluster.addresses:
        known = ", ".join(sorted(cluster.addresses)) or "none"
        raise HostConfigError(
            f"this host's name {here!r} is not a worker host in /{paths.CLUSTER_FILE} (worker hosts "
            f"there: {known}); add it on the main host (dpkg-reconfigure matrix-synapse-workers "
            "there), copy the directory again, or choose one of those names")
    found: list[Worker] = []
    for label, names in cluster.workers.items():
        host = None if label == MAIN else label
        for name in names:
            parsed = parse_worker_name(name)
            if parsed is None or parsed.host != host:
                raise HostConfigError(f"/{paths.CLUSTER_FILE}: {name!r} is not a worker name this "
                                      f"package gives on host {label!r}; {COPY_HINT}")
            found.append(parsed.worker(host, cluster.addresses.get(label) if host else None))
    if not cluster.shared_media and any(w.host == here and w.role.serves_media
                                        for w in found):
        # Written by hand or by a main host that did not ask: refused here too.
        raise HostConfigError(f"/{paths.CLUSTER_FILE}: {media_store_refusal([here])}; the "
                              f"confirmation goes on the main host, which records it there as "
                              f"{SHARED_MEDIA_KEY}: true")
    return Plan(tuple(found), cluster.replication, here, cluster.redis, cluster.metrics,
                cluster.shared_media)


def main_topology_of(cluster: Cluster) -> Topology:
    """The main host's topology as its cluster.yaml records it."""
    hosts = []
    for label, names in cluster.workers.items():
        if label == MAIN:
            continue
        counts: dict[str, int] = {}
        for name in names:
            parsed = parse_worker_name(name)
            if parsed is not None:
                counts[parsed.role.name] = counts.get(parsed.role.name, 0) + 1
        hosts.append(WorkerHost(label, cluster.addresses.get(label, ""), counts))
    return Topology(HostRole.MAIN, cluster.replication, tuple(hosts),
                    shared_media=cluster.shared_media)
