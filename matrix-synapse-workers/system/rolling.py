"""Restart in steps (:mod:`core.restarts`): each step's processes answer ``/health``
again before the next step starts, within a bound, or the run stops with an error
naming the one that did not come back.

While a stateless worker restarts alone, nginx sends its requests to the other
servers of its pool: a stopped worker's socket refuses the connection (or is
gone), which nginx's default ``proxy_next_upstream error timeout`` passes to the
next server; when every server of the pool refuses, the location's error_page
sends the request to main, since not one byte of it was sent (docs/rolling.md).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from ..core import paths
from ..core.errors import ApplyError
from ..core.plan import Worker
from ..core.restarts import MAIN, Step
from ..core.topology import Address
from . import netprobe
from .synapseversion import parse_version
from .systemd import Systemd

#: How long a restarted process may take to answer /health again (systemd has
#: already waited for its READY=1; this covers the listener and a slow machine).
HEALTH_WAIT = 60.0
#: Main migrates the schema after an upgrade before it answers: allow more.
MAIN_WAIT = 600.0
POLL = 0.2


@dataclass(frozen=True)
class Health:
    ok: bool
    #: The version in the Server header (``Synapse/1.163.2``), or what went wrong.
    detail: str = ""


def health(where: str | Address, timeout: float = 3.0) -> Health:
    """GET /health on a socket path or an address: OK and its Synapse version, or why not."""
    headers = {"X-Forwarded-For": "127.0.0.1", "User-Agent": "matrix-synapse-workers"}
    try:
        answer = netprobe.http_get(where, "/health", headers, timeout)
    except FileNotFoundError:
        return Health(False, "no socket")
    except ConnectionRefusedError:
        return Health(False, "connection refused")
    except socket.timeout:
        return Health(False, f"no answer within {timeout:g} s")
    except OSError as exc:
        return Health(False, exc.strerror or str(exc))
    except netprobe.NotHttp:
        return Health(False, "not an HTTP answer")
    if answer.status != 200:
        return Health(False, f"HTTP {answer.status}")
    return Health(True, answer.headers.get("server", ""))


def served_version(server_header: str) -> str | None:
    """``Synapse/1.163.2`` -> ``1.163.2``.

    >>> served_version("Synapse/1.163.2+standin"), served_version("nginx")
    ('1.163.2+standin', None)
    """
    name, _, version = server_header.partition("/")
    return version.strip() or None if name == "Synapse" else None


def runs(seen: Health, version: str | None) -> bool:
    """It answers, and as Synapse ``version`` when given (release numbers compared:
    ``1.163.2`` is ``1.163.2+standin`` and dpkg's ``1.163.2+bookworm1``).

    >>> runs(Health(True, "Synapse/1.163.2"), "1.163.2+bookworm1")
    True
    >>> runs(Health(True, "Synapse/1.163.1"), "1.163.2")
    False
    """
    if not seen.ok or version is None:
        return seen.ok
    served = served_version(seen.detail)
    return served is not None and parse_version(served) == parse_version(version)


def wait_healthy(name: str, where: str | Address, *, bound: float = HEALTH_WAIT,
                 version: str | None = None, probe: Callable[[str | Address], Health] = health,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Until ``name`` answers /health (with Synapse ``version`` when given), at most ``bound`` s."""
    deadline = clock() + bound
    while True:
        seen = probe(where)
        if runs(seen, version):
            return
        if clock() >= deadline:
            wanted = f"/health as Synapse {version}" if version else "/health"
            last = seen.detail if not seen.ok else f"it answers as {seen.detail or 'something else'}"
            raise ApplyError(f"{name} did not answer {wanted} within {bound:g} s after its restart "
                             f"(last: {last}); the processes after it were not restarted: "
                             f"see journalctl -u {unit_of(name)}, then run the command again")
        sleep(POLL)


def places(workers: Iterable[Worker]) -> dict[str, str | Address]:
    """Where each planned worker of this host, and main, answer /health."""
    found: dict[str, str | Address] = {MAIN: str(paths.MAIN_HTTP_SOCKET)}
    for worker in workers:
        found[worker.name] = worker.http_address or str(worker.http_socket)
    return found


def unit_of(name: str) -> str:
    return paths.MAIN_UNIT if name == MAIN else paths.WORKER_UNIT_TEMPLATE.format(name=name)


def run_steps(steps: Sequence[Step], systemd: Systemd, where: Mapping[str, str | Address], *,
              wait: Callable[..., None] = wait_healthy) -> None:
    """Restart each step; wait for a step's processes (those with a place in ``where``)
    before the next.  A step with main restarts main (systemd restarts its running
    workers with it, in order) and starts the others."""
    for index, step in enumerate(steps):
        if step.with_main:
            acted = systemd.restart(paths.MAIN_UNIT)
            # PartOf=matrix-synapse.service: main's restart restarted the running workers
            # already (a second restart would only lengthen the outage); start the others.
            workers = [unit_of(n) for n in step.names if n != MAIN]
            if acted and systemd.running:
                systemd.start(*workers)
            else:
                systemd.restart(*workers)
        else:
            acted = systemd.restart(*(unit_of(n) for n in step.names))
        last = index == len(steps) - 1
        if acted and not systemd.dry_run and not (last and not step.one_by_one):
            for name in step.names:
                if name in where:
                    wait(name, where[name])
