"""Pure planning: catalog x selection x existing names -> named workers and shared config.

Worker names are ``<role with hyphens>-<n>`` (``federation-reader-2``): safe as
systemd instance names and as Synapse instance names, and readable back into
a role by :func:`parse_worker_name` (the debconf ``config`` script does the same
in sh).  Names already on disk are kept, so adding a worker never renames
another; removing keeps the lowest numbers.

>>> from .selection import select
>>> [w.name for w in plan_workers(select(workers="sync:2,typing"), existing=("sync-3",))]
['sync-3', 'sync-1', 'typing-1']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping

from . import paths
from .catalog import ROLES, DutyKind, Role, Version
from .errors import HostConfigError, SelectionError
from .facts import HostFacts, socket_paths_in_use
from .selection import Selection
from .topology import (LOOPBACK, MAIN_METRICS_PORT, Address, Topology, check_index, http_port,
                       metrics_port, replication_port)

#: Synapse's instance name for main (in stream_writers; instance_map calls it ``main``).
MAIN_INSTANCE = "master"

_NAME = re.compile(r"(?P<role>[a-z][a-z-]*[a-z])-(?P<index>[1-9][0-9]{0,3})(?:-(?P<host>[a-z][a-z0-9]{0,15}))?")


@dataclass(frozen=True)
class Worker:
    name: str
    role: Role
    index: int
    #: Label of the worker host it runs on; None: the main host.
    host: str | None = None
    #: That worker host's private address (None on the main host).
    address: str | None = None

    @property
    def remote(self) -> bool:
        return self.host is not None

    @property
    def http_address(self) -> Address | None:
        """Where a worker on a worker host serves HTTP (TCP); None on the main host."""
        if self.address is None:
            return None
        return Address(self.address, http_port(self.role.name, self.index))

    def replication_address(self, main_replication: Address | None) -> Address | None:
        """Its replication listener over TCP: on its own host, or on main's private address."""
        if not self.role.needs_replication_listener:
            return None
        host = self.address or (main_replication.host if main_replication else None)
        return Address(host, replication_port(self.role.name, self.index)) if host else None

    @property
    def metrics_address(self) -> Address:
        """Its metrics listener (when metrics are on): loopback here, its private address elsewhere."""
        return Address(self.address or LOOPBACK, metrics_port(self.role.name, self.index))

    @property
    def http_upstream(self) -> str:
        """The server nginx proxies to: ``unix:/run/...sock`` or ``10.0.0.2:18001``."""
        address = self.http_address
        return f"unix:{self.http_socket}" if address is None else str(address)

    @property
    def unit(self) -> str:
        return paths.WORKER_UNIT_TEMPLATE.format(name=self.name)

    @property
    def http_socket(self) -> PurePosixPath:
        return paths.worker_http_socket(self.name)

    @property
    def replication_socket(self) -> PurePosixPath | None:
        if not self.role.needs_replication_listener:
            return None
        return paths.worker_replication_socket(self.name)


@dataclass(frozen=True)
class Plan:
    """The workers that should exist and the shared config they imply.

    ``workers`` is the whole deployment (every host); ``here`` says which host
    this plan is rendered for (None: the main host), so that each host writes
    only its own workers' files and reaches the others by the right address.
    """

    workers: tuple[Worker, ...]
    #: Main's replication listener on the private network, once workers run elsewhere.
    replication: Address | None = None
    #: The worker-host label this plan is rendered on; None for the main host.
    here: str | None = None
    #: Where other hosts reach Redis, as cluster.yaml says (None: derived on the main host).
    redis: Address | None = None
    #: Every process serves Prometheus metrics (a listener of its own, never public).
    metrics: bool = False
    #: Media workers run on worker hosts, the admin having confirmed one shared media store.
    shared_media: bool = False

    @property
    def spans_hosts(self) -> bool:
        return self.replication is not None

    @property
    def local_workers(self) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.host == self.here)

    def of_role(self, role_name: str) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.role.name == role_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.local_workers)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for worker in self.local_workers:
            counts[worker.role.name] = counts.get(worker.role.name, 0) + 1
        return counts

    def socket_paths(self) -> tuple[PurePosixPath, ...]:
        """Every socket this plan makes Synapse create on this host."""
        if self.here is not None:
            return ()
        found = [paths.MAIN_REPLICATION_SOCKET, paths.MAIN_HTTP_SOCKET]
        for worker in self.local_workers:
            found.append(worker.http_socket)
            if worker.replication_socket is not None:
                found.append(worker.replication_socket)
        return tuple(found)

    def _reach(self, worker: Worker) -> dict[str, Any]:
        """How a process on this host reaches ``worker``'s replication listener."""
        if worker.host is None and self.here is None:
            return {"path": str(worker.replication_socket)}
        address = worker.replication_address(self.replication)
        assert address is not None
        return {"host": address.host, "port": address.port}

    def shared_settings(self) -> dict[str, Any]:
        """Duty keys, stream writers and instance_map, derived from the catalog.

        Keys come out in a stable order so rendering twice gives the same bytes.
        Every host derives the same duties and writers; only the addresses in
        instance_map depend on where the reader runs.
        """
        settings: dict[str, Any] = {}
        if self.here is None:
            main: dict[str, Any] = {"path": str(paths.MAIN_REPLICATION_SOCKET)}
        else:
            assert self.replication is not None
            main = {"host": self.replication.host, "port": self.replication.port}
        instance_map: dict[str, Any] = {"main": main}
        stream_writers: dict[str, list[str]] = {}
        for role in ROLES.values():
            workers = self.of_role(role.name)
            if not workers:
                continue
            names = [w.name for w in workers]
            settings.update(role.shared_when_present)
            if role.leader_key:  # several roles may share one: the first in the catalog leads
                settings.setdefault(role.leader_key, names[0])
            if role.duty is not None:
                settings[role.duty.key] = names if role.duty.kind is DutyKind.LIST else names[0]
            if role.stream is not None:
                stream_writers[role.stream] = names + ([MAIN_INSTANCE] if role.main_writes_too else [])
                for worker in workers:
                    instance_map[worker.name] = self._reach(worker)
        settings["instance_map"] = instance_map
        if stream_writers:
            settings["stream_writers"] = stream_writers
        if self.spans_hosts:
            settings["worker_replication_secret_path"] = "/" + str(paths.REPLICATION_SECRET)
        return settings


def worker_name(role: Role, index: int, host: str | None = None) -> str:
    base = f"{role.name.replace('_', '-')}-{index}"
    return f"{base}-{host}" if host else base


@dataclass(frozen=True)
class WorkerName:
    """A worker name this package made, read back into its parts (the one parser of names).

    >>> parsed = parse_worker_name("federation-sender-2-hostc")
    >>> parsed.role.name, parsed.index, parsed.host
    ('federation_sender', 2, 'hostc')
    """

    name: str
    role: Role
    index: int
    #: The worker-host label; None: the main host.
    host: str | None = None

    def worker(self, host: str | None = None, address: str | None = None) -> Worker:
        """The worker of this name on ``host`` (default: the host its name says)."""
        return Worker(self.name, self.role, self.index, host if host is not None else self.host,
                      address)


def parse_worker_name(name: str) -> WorkerName | None:
    """The parts of a name this package made (on any host), else None."""
    match = _NAME.fullmatch(name)
    if not match:
        return None
    role = ROLES.get(match["role"].replace("-", "_"))
    return WorkerName(name, role, int(match["index"]), match["host"]) if role else None


def main_worker_name(name: str) -> WorkerName | None:
    """The parts of a main-host worker name this package made, else None."""
    parsed = parse_worker_name(name)
    return parsed if parsed is not None and parsed.host is None else None


def remote_workers(topology: Topology) -> tuple[Worker, ...]:
    """The workers of every worker host a main host's admin named: ``role-n-label``."""
    workers: list[Worker] = []
    for host in topology.worker_hosts:
        for role_name, count in host.counts.items():
            check_index(role_name, count)
            role = ROLES[role_name]
            workers.extend(Worker(worker_name(role, i, host.label), role, i, host.label, host.address)
                           for i in range(1, count + 1))
    return tuple(workers)


def counts_from_workers(names: Iterable[str]) -> dict[str, int]:
    """Main-host workers per role among ``names``, in catalog order; other names are left out."""
    counts: dict[str, int] = {}
    for name in names:
        parsed = main_worker_name(name)
        if parsed:
            counts[parsed.role.name] = counts.get(parsed.role.name, 0) + 1
    return {role: counts[role] for role in ROLES if role in counts}


def plan_workers(selection: Selection, existing: Iterable[str] = ()) -> tuple[Worker, ...]:
    """Name the selected workers of the main host, keeping names already on disk."""
    kept_indices: dict[str, list[int]] = {}
    for name in existing:
        parsed = main_worker_name(name)
        if parsed:
            kept_indices.setdefault(parsed.role.name, []).append(parsed.index)
    workers: list[Worker] = []
    for role_name, count in selection.counts.items():
        role = ROLES[role_name]
        indices = sorted(set(kept_indices.get(role_name, ())))[:count]
        next_index = 1
        while len(indices) < count:
            if next_index not in indices:
                indices.append(next_index)
            next_index += 1
        workers.extend(Worker(worker_name(role, i), role, i) for i in indices)
    names = [w.name for w in workers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SelectionError(f"worker names {', '.join(duplicates)} would be used twice")
    return tuple(workers)


def check_socket_conflicts(plan: Plan, facts: HostFacts) -> None:
    """Refuse admin listeners that already claim a socket path this plan needs."""
    claimed = socket_paths_in_use(facts)
    for path in plan.socket_paths():
        if path in claimed:
            raise HostConfigError(
                f"listener {claimed[path] + 1} in the Synapse configuration already uses "
                f"{path}, which this package manages in /{paths.SHARED_CONF}; remove that "
                f"listener from /{paths.HOMESERVER_YAML} (the package adds it for you), or "
                f"point it at another path outside {paths.SOCKET_DIR}")


def check_metrics_ports(plan: Plan, facts: HostFacts) -> None:
    """Refuse an admin listener on a port this plan's metrics listeners take on this host."""
    if not plan.metrics or plan.here is not None:
        return
    ours = {MAIN_METRICS_PORT: "main"} if not admin_metrics_listeners(facts) else {}
    ours.update({w.metrics_address.port: w.name for w in plan.local_workers})
    for index, listener in enumerate(facts.listeners):
        if listener.get("type") != "metrics" and listener.get("port") in ours:
            port = listener["port"]
            raise HostConfigError(
                f"listener {index + 1} in the Synapse configuration uses port {port}, which the "
                f"metrics of {ours[port]} take ({MAIN_METRICS_PORT} and up); move that listener "
                f"to another port in /{paths.HOMESERVER_YAML}, or leave metrics off")


def admin_metrics_listeners(facts: HostFacts) -> tuple[int, ...]:
    """Positions of the admin's own metrics listeners (kept; main then gets none of ours)."""
    return tuple(i for i, listener in enumerate(facts.listeners) if listener.get("type") == "metrics")


def make_plan(selection: Selection, facts: HostFacts, topology: Topology = Topology(),
              metrics: bool = False) -> Plan:
    """The whole plan for a main host; raises on anything that cannot work."""
    local = plan_workers(selection, facts.existing_workers)
    if topology.worker_hosts or metrics:  # the port ranges hold MAX_INDEX workers of a type
        for worker in local:
            check_index(worker.role.name, worker.index)
    plan = Plan(local + remote_workers(topology), topology.replication, metrics=metrics,
                shared_media=topology.shared_media)
    unique_writers = [r for r in ROLES.values() if not r.scales and len(plan.of_role(r.name)) > 1]
    if unique_writers:
        role = unique_writers[0]
        hosts = sorted({w.host or "main" for w in plan.of_role(role.name)})
        raise SelectionError(f"{role.name!r} can run only once in the whole deployment, but "
                             f"{', '.join(hosts)} each run one; keep it on one host")
    check_socket_conflicts(plan, facts)
    check_metrics_ports(plan, facts)
    check_synapse_knows(plan, facts.synapse_version)
    return plan


def check_synapse_knows(plan: Plan, version: tuple[int, int, int] | None) -> None:
    """Refuse a role the installed Synapse does not have (it would reject the stream)."""
    if version is None:
        return
    shown = ".".join(map(str, version))
    for worker in plan.workers:
        since = worker.role.since
        if since is not None and version < since:
            raise SelectionError(
                f"worker type {worker.role.name!r} needs Synapse {'.'.join(map(str, since))} or "
                f"newer, but {shown} is installed; upgrade Synapse or leave that type out")
        several = worker.role.several_since
        if several is not None and version < several and len(plan.of_role(worker.role.name)) > 1:
            raise SelectionError(
                f"several {worker.role.name!r} workers need Synapse {'.'.join(map(str, several))} "
                f"or newer, but {shown} is installed (it accepts one); upgrade Synapse or "
                f"ask for {worker.role.name}:1")


def workers_by_name(workers: Iterable[Worker]) -> Mapping[str, Worker]:
    return {w.name: w for w in workers}


# Synapse ignores keys it does not know: a key written for a newer release is dropped
# without a word and its config check passes.  For the keys below that would leave a
# deployment open or broken, the feature that needs them is refused instead.

#: Key path -> (the first release that reads it, what goes wrong without it, the way out).
KEY_GATES: Mapping[str, tuple[Version, str, str]] = {
    "redis.password_path": (
        (1, 117, 0),
        "Redis with a password (worker hosts, or guide mode on a Redis with requirepass) "
        "would be refused",
        "choose a Redis without a password on this host only"),
    "worker_replication_secret_path": (
        (1, 126, 0),
        "replication between hosts would run without its secret (anyone on the private "
        "network could call it)",
        "keep every worker on this host"),
}


def _keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, Mapping):
            found.extend(_keys(value, f"{path}."))
    return found


def refuse_unknown_keys(config: Mapping[str, Any], version: Version | None) -> None:
    """Raise SelectionError when ``config`` sets a gated key ``version`` does not know
    (None: the version is unknown, taken as the newest)."""
    if version is None:
        return
    for path in _keys(config):
        if path in KEY_GATES and version < KEY_GATES[path][0]:
            since, harm, way_out = KEY_GATES[path]
            raise SelectionError(
                f"{path} needs Synapse {'.'.join(map(str, since))} or newer, but "
                f"{'.'.join(map(str, version))} is installed, which would ignore it: {harm}. "
                f"Upgrade Synapse, or {way_out}")
