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
from .catalog import ROLES, DutyKind, Role
from .errors import HostConfigError, SelectionError
from .hostfacts import HostFacts, socket_paths_in_use
from .selection import Selection

_NAME = re.compile(r"^(?P<role>[a-z][a-z-]*[a-z])-(?P<index>[1-9][0-9]*)$")


@dataclass(frozen=True)
class Worker:
    name: str
    role: Role
    index: int

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
    """The workers that should exist and the shared config they imply."""

    workers: tuple[Worker, ...]

    def of_role(self, role_name: str) -> tuple[Worker, ...]:
        return tuple(w for w in self.workers if w.role.name == role_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.workers)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for worker in self.workers:
            counts[worker.role.name] = counts.get(worker.role.name, 0) + 1
        return counts

    def socket_paths(self) -> tuple[PurePosixPath, ...]:
        """Every socket this plan makes Synapse create."""
        found = [paths.MAIN_REPLICATION_SOCKET, paths.MAIN_HTTP_SOCKET]
        for worker in self.workers:
            found.append(worker.http_socket)
            if worker.replication_socket is not None:
                found.append(worker.replication_socket)
        return tuple(found)

    def shared_settings(self) -> dict[str, Any]:
        """Duty keys, stream writers and instance_map, derived from the catalog.

        Keys come out in a stable order so rendering twice gives the same bytes.
        """
        settings: dict[str, Any] = {}
        instance_map: dict[str, Any] = {"main": {"path": str(paths.MAIN_REPLICATION_SOCKET)}}
        stream_writers: dict[str, list[str]] = {}
        for role in ROLES.values():
            workers = self.of_role(role.name)
            if not workers:
                continue
            names = [w.name for w in workers]
            settings.update(role.shared_when_present)
            if role.leader_key:
                settings[role.leader_key] = names[0]
            if role.duty is not None:
                settings[role.duty.key] = names if role.duty.kind is DutyKind.LIST else names[0]
            if role.stream is not None:
                stream_writers[role.stream] = names
                for worker in workers:
                    instance_map[worker.name] = {"path": str(worker.replication_socket)}
        settings["instance_map"] = instance_map
        if stream_writers:
            settings["stream_writers"] = stream_writers
        return settings


def worker_name(role: Role, index: int) -> str:
    return f"{role.name.replace('_', '-')}-{index}"


def parse_worker_name(name: str) -> tuple[Role, int] | None:
    """The role and number of a name this package made, or None for other names."""
    match = _NAME.match(name)
    if not match:
        return None
    role = ROLES.get(match["role"].replace("-", "_"))
    return (role, int(match["index"])) if role else None


def plan_workers(selection: Selection, existing: Iterable[str] = ()) -> tuple[Worker, ...]:
    """Name the selected workers, keeping names already on disk."""
    kept_indices: dict[str, list[int]] = {}
    for name in existing:
        parsed = parse_worker_name(name)
        if parsed:
            kept_indices.setdefault(parsed[0].name, []).append(parsed[1])
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


def make_plan(selection: Selection, facts: HostFacts) -> Plan:
    """The whole plan for a host; raises on anything that cannot work."""
    plan = Plan(plan_workers(selection, facts.existing_workers))
    check_socket_conflicts(plan, facts)
    return plan


def workers_by_name(workers: Iterable[Worker]) -> Mapping[str, Worker]:
    return {w.name: w for w in workers}
