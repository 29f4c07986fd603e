"""Recorded status facts shared by the status tests: what running processes look like to the probes."""

from __future__ import annotations

from typing import Callable, Sequence

from matrix_synapse_workers.status.model import Health, PathStat, Process, RedisClient, UnitState

REDIS_SOCKET = "/run/redis-matrix-synapse/redis-server.sock"
REDIS_UNIT = "redis-server@matrix-synapse.service"
SOCKET_DIR_STAT = PathStat(True, False, "matrix-synapse", "clubmatrix", 0o2750)


def running(processes: Sequence[Process], *, version: str = "Synapse/1.163.2", first_pid: int = 100,
            first_fd: int = 10, subscriptions: int = 1, sockets: bool = True,
            client_addr: Callable[[int, int], str] | None = None):
    """Every process active, answering /health, with its sockets and two Redis connections
    (one subscribed with ``subscriptions`` channels).

    Returns (units, health, socket stats, Redis clients, Redis fd -> pid).
    """
    units, health, stats, clients, pids = {}, {}, {}, [], {}
    for index, process in enumerate(processes):
        pid = first_pid + index
        units[process.unit] = UnitState("active", "running", pid)
        health[process.name] = Health(200, "OK", version)
        if sockets:
            stats[str(process.http_socket)] = PathStat(True, True, "matrix-synapse", "clubmatrix", 0o660)
            if process.replication_socket:
                stats[str(process.replication_socket)] = PathStat(True, True, "matrix-synapse",
                                                                  "clubmatrix", 0o600)
        for n, sub in ((0, 0), (1, subscriptions)):
            fd = first_fd + 2 * index + n
            addr = client_addr(index, n) if client_addr else ""
            clients.append(RedisClient(fd, sub, "P" if sub else "N", addr) if addr
                           else RedisClient(fd, sub, "P" if sub else "N"))
            pids[fd] = pid
    return units, health, stats, clients, pids


def row(rows, check, subject):
    """The one row of ``check`` about ``subject``."""
    found = [r for r in rows if r.check == check and r.subject == subject]
    assert len(found) == 1, (check, subject, rows)
    return found[0]
