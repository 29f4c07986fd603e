"""Pure: the sandbox drop-ins of the Synapse units, from the plan and the admin's configuration.

The worker template unit carries the fixed part of the sandbox (read-only
system, no capabilities, a system call filter...).  What depends on the host is
rendered here, one drop-in per worker and one for main:

- ``ReadWritePaths=``: exactly where Synapse writes as configured, symlinks
  resolved (a media store on /srv stays writable): the socket directory, the
  log files' directories, and for the process serving media the media store and
  file storage providers;
- the network policy of the worker's role (:attr:`catalog.Role.outbound`): a
  role that fetches nothing from other servers may reach only UNIX sockets and
  the TCP addresses of PostgreSQL, Redis, replication and the Matrix
  Authentication Service (which checks every client token when it handles
  logins) that this deployment uses; a role that does keeps outbound network.

``IPAddressDeny=`` needs the cgroup v2 BPF firewall; where systemd cannot
enforce it (cgroup v1) it warns and goes on, so an all-socket confined worker
is also held to ``RestrictAddressFamilies=AF_UNIX``, which seccomp enforces
everywhere.

>>> from ..core.catalog import ROLES
>>> policy = network_policy(ROLES["sync"], ())
>>> policy.families, policy.allow
(('AF_UNIX',), ())
>>> network_policy(ROLES["sync"], ("10.0.0.1",)).allow
('localhost', '10.0.0.1')
>>> network_policy(ROLES["sync"], ("127.0.0.1",)).allow
('localhost',)
>>> network_policy(ROLES["sync"], ("db.example",)).allow is None
True
>>> network_policy(ROLES["media"], ()).allow is None
True

With metrics on, a confined worker also listens on TCP (loopback here):

>>> network_policy(ROLES["sync"], ("127.0.0.1",)).families
('AF_UNIX', 'AF_INET', 'AF_INET6')
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .. import __version__
from ..core import paths
from ..core.catalog import Role
from ..core.cluster import redis_address
from ..core.facts import HostFacts
from ..core.plan import Plan, Worker
from ..core.settings import Settings
from .files import GENERATED_MARKER, RenderedFile

_FAMILIES_ALL = ("AF_UNIX", "AF_INET", "AF_INET6")

_HEADER = (f"{GENERATED_MARKER} {{version}}. Do not edit: changes are overwritten.\n"
           "# Loosen the sandbox in a drop-in of your own that sorts after this one\n"
           "# (`matrix-synapse-workers status` then warns that it is loosened).\n")


@dataclass(frozen=True)
class NetworkPolicy:
    """``allow`` None: any address (outbound roles, or a host name that cannot be pinned)."""

    families: tuple[str, ...]
    allow: tuple[str, ...] | None
    why: str


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def network_policy(role: Role, tcp_hosts: Iterable[str]) -> NetworkPolicy:
    """``tcp_hosts``: what the deployment reaches over TCP (database, Redis, replication)."""
    if role.outbound:
        return NetworkPolicy(_FAMILIES_ALL, None, f"talks to other servers: {role.network_why}")
    hosts = tuple(dict.fromkeys("localhost" if _is_loopback(h) else h for h in tcp_hosts))
    if not hosts:
        return NetworkPolicy(("AF_UNIX",), (), f"sockets only: {role.network_why}")
    if not all(_is_ip(h) or h == "localhost" for h in hosts):
        names = ", ".join(h for h in hosts if not _is_ip(h) and h != "localhost")
        return NetworkPolicy(_FAMILIES_ALL, None,
                             f"{role.network_why}; but {names} is a host name, which an address "
                             "list cannot hold: configure IP addresses to confine it")
    return NetworkPolicy(_FAMILIES_ALL, ("localhost", *(h for h in hosts if h != "localhost")),
                         f"{role.network_why}; TCP only to {', '.join(hosts)}")


def tcp_hosts(plan: Plan, facts: HostFacts, settings: Settings) -> tuple[str, ...]:
    """Every address a confined process may need over TCP in this deployment."""
    hosts: list[str] = []
    if facts.database_address is not None:
        hosts.append(facts.database_address[0])
    if facts.auth_service is not None and facts.auth_service.host:
        # With MAS every process checks client tokens by asking MAS (introspection).
        hosts.append(facts.auth_service.host)
    if plan.here is not None:  # a worker host reaches Redis on the main host
        redis = redis_address(plan)
        if redis is not None:
            hosts.append(redis.host)
    elif settings.redis.host is not None:
        hosts.append(settings.redis.host)
    if plan.spans_hosts and plan.replication is not None:
        # main's replication listener and every stream writer's, wherever it runs
        hosts.append(plan.replication.host)
        for worker in plan.workers:
            address = worker.replication_address(plan.replication)
            if address is not None:
                hosts.append(address.host)
            if worker.address is not None:  # its host: nginx and status on main ask it
                hosts.append(worker.address)
    if plan.metrics:
        # Its metrics listener is TCP only (Synapse cannot serve metrics on a socket): its own
        # address, and on a worker host main's, where Prometheus scrapes from.
        hosts += [w.metrics_address.host for w in plan.local_workers]
        if plan.here is not None and plan.replication is not None:
            hosts.append(plan.replication.host)
    return tuple(dict.fromkeys(hosts))


def writable_paths(facts: HostFacts, *, media: bool) -> tuple[str, ...]:
    """The socket directory, then each configured path (resolved), once each."""
    found = [str(paths.SOCKET_DIR)]
    found += [w.real for w in facts.writable_paths
              if w.real is not None and (media or not w.media_only)]
    return tuple(dict.fromkeys(found))


def _dropin(lines: list[str]) -> str:
    return _HEADER.format(version=__version__) + "\n".join(lines) + "\n"


def allocator_lines(facts: HostFacts) -> list[str]:
    """jemalloc for the memory budget's cache autotuning (core/memory.py says why both).

    An admin's own values in /etc/default/matrix-synapse (the units' EnvironmentFile=)
    win over these.
    """
    if facts.jemalloc is None:
        return []
    return ["# The memory budget: Synapse's cache autotuning needs jemalloc to see every",
            "# allocation (Python's own small-object allocator hides most of them from it).",
            f"Environment=LD_PRELOAD={facts.jemalloc} PYTHONMALLOC=malloc"]


def _rw_lines(facts: HostFacts, *, media: bool) -> list[str]:
    lines = ["# Where Synapse writes, from its configuration (symlinks resolved).",
             "ReadWritePaths="]
    lines += [f"ReadWritePaths={path}" for path in writable_paths(facts, media=media)]
    return lines


def start_after(worker: Worker, plan: Plan) -> tuple[str, ...]:
    """The units this worker starts after, besides main: every stream writer on this host
    when it is not one itself.

    Once main is up, a process that writes events (or another stream) is what the
    others wait on: main and every worker retry a call to a writer that is not
    listening yet after 1, 2, then 4 s, so a send could wait 8-10 s after a
    restart of everything.  Writers first, then the rest, gets them up sooner
    while nginx sends the others' requests to main meanwhile.  Ordering only:
    a writer that fails to start holds nothing up.
    """
    if worker.role.stream is not None:
        return ()
    return tuple(w.unit for w in plan.local_workers if w.role.stream is not None)


#: Starts the comment of the start gate's lines (changes.what_the_process_reads skips them).
GATE_COMMENT = "# Start gate:"
GATE_COMMAND = "/usr/bin/python3 -m matrix_synapse_workers.system.startgate"


def start_gate(plan: Plan) -> list[str]:
    """A worker waits (60 s at most) until main serves the installed Synapse: main
    migrates the schema before it listens, and a worker started on newer code than the
    schema would exit and be restarted every 3 s (system/startgate.py)."""
    where = str(paths.MAIN_REPLICATION_SOCKET) if plan.here is None else str(plan.replication)
    return [f"{GATE_COMMENT} wait until main runs the installed Synapse (it migrates the database first).",
            f"ExecStartPre={GATE_COMMAND} {where}"]


def worker_dropin(worker: Worker, plan: Plan, facts: HostFacts, settings: Settings) -> RenderedFile:
    policy = network_policy(worker.role, tcp_hosts(plan, facts, settings))
    after = start_after(worker, plan)
    unit = (["[Unit]", "# Stream writers start first (they are what the other processes wait on).",
             f"After={' '.join(after)}", ""] if after else [])
    lines = [*unit, "[Service]", *start_gate(plan), *allocator_lines(facts),
             *_rw_lines(facts, media=worker.role.serves_media),
             f"# Network ({worker.role.name}): {policy.why}.",
             "RestrictAddressFamilies=",
             f"RestrictAddressFamilies={' '.join(policy.families)}"]
    if policy.allow is not None:
        lines += ["IPAddressDeny=any", f"IPAddressAllow={' '.join(policy.allow)}"
                  if policy.allow else "IPAddressAllow=localhost"]
    return RenderedFile(paths.worker_sandbox_dropin(worker.name), _dropin(lines))


#: The fixed part of main's sandbox: the same as the worker template's, which
#: the tests compare (main's unit is Synapse's package's, so it comes as a drop-in).
MAIN_SANDBOX = (
    "UMask=0027", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
    "PrivateDevices=yes", "PrivateMounts=yes", "PrivateUsers=yes", "ProtectHostname=yes",
    "ProtectClock=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectProc=invisible",
    "ProcSubset=pid", "CapabilityBoundingSet=", "AmbientCapabilities=", "NoNewPrivileges=yes",
    "RestrictSUIDSGID=yes", "RestrictRealtime=yes", "RestrictNamespaces=yes",
    "LockPersonality=yes", "RemoveIPC=yes", "KeyringMode=private",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources", "SystemCallErrorNumber=EPERM",
    "MemoryDenyWriteExecute=no",
)


def main_dropin(facts: HostFacts) -> RenderedFile:
    """Main talks to other servers (it does whatever no worker took): network stays open."""
    lines = ["[Service]",
             "# The sandbox of the worker units, for main (matrix-synapse-workers).",
             *MAIN_SANDBOX, *allocator_lines(facts), *_rw_lines(facts, media=True)]
    if facts.signing_key_dir is not None:
        lines += ["# Until Synapse has made its signing key (ExecStartPre=... --generate-keys);",
                  "# the next apply renders this file without it.",
                  f"ReadWritePaths={facts.signing_key_dir}"]
    lines += [
             "RestrictAddressFamilies=",
             f"RestrictAddressFamilies={' '.join(_FAMILIES_ALL)}"]
    return RenderedFile(paths.MAIN_SANDBOX_DROPIN, _dropin(lines))


def sandbox_files(plan: Plan, facts: HostFacts, settings: Settings) -> tuple[RenderedFile, ...]:
    files = [worker_dropin(w, plan, facts, settings) for w in plan.local_workers]
    if plan.here is None:
        files.append(main_dropin(facts))
    return tuple(files)
