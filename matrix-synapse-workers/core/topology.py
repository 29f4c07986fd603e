"""Pure: which host runs what when Synapse spans more than one machine.

A host is either ``main`` (main process, Redis, local workers; today's single
host is a main host without worker hosts) or a ``worker-host`` that runs only
workers and reaches main, Redis and PostgreSQL over a private network.

The main host is the one place the whole deployment is decided: the admin
names each worker host there (a label, its private address, its workers), and
the main host writes ``/etc/matrix-synapse/cluster/cluster.yaml``.  The admin
copies that directory (the description and the two secret files) to every
worker host, whose only own answer is its label.  Every process then derives
the same shared settings (stream writers, duty lists) from the same file.

Names and ports are functions of the worker alone, so both ends agree without
talking: a remote worker is ``<role>-<n>-<label>`` (``sync-1-hostb``) and
listens on :func:`http_port` / :func:`replication_port` of its host's address.

>>> hosts = parse_worker_hosts("hostb 10.99.0.2 sync:2,events")
>>> hosts[0].label, hosts[0].address, dict(hosts[0].counts)
('hostb', '10.99.0.2', {'sync': 2, 'events': 1})
>>> parse_address("10.99.0.1", default_port=9093, what="replication address")
Address(host='10.99.0.1', port=9093)
>>> http_port("sync", 2), replication_port("events", 1)
(18002, 18951)

Metrics (when switched on) listen on ports of their own, from
:data:`METRICS_PORT_BASE` on: main there, a worker 100 per role further
(:func:`metrics_port`), on loopback on the main host and on the worker host's
private address elsewhere, so the main host's scrape targets need nothing
from the other hosts.

>>> MAIN_METRICS_PORT, metrics_port("sync", 2), metrics_port("events", 1)
(20000, 20002, 20901)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Mapping

from .catalog import ROLES
from .errors import SelectionError
from .selection import parse_workers

#: Port of main's TCP replication listener when the admin gives none.
DEFAULT_REPLICATION_PORT = 9093
#: Port of the dedicated Redis on the private address.
DEFAULT_REDIS_PORT = 6379
#: Worker ports: BASE + 100 * (role's place in the catalog) + n; replication +50.
PORT_BASE = 18000
MAX_INDEX = 49
#: Metrics listeners: main at the base, workers BASE + 100 * (role's place) + n
#: (n from 1, so no worker takes main's port).
METRICS_PORT_BASE = 20000
MAIN_METRICS_PORT = METRICS_PORT_BASE
#: Where the main host's processes serve metrics: only this machine reaches them.
LOOPBACK = "127.0.0.1"
_LABEL = re.compile(r"[a-z][a-z0-9]{0,15}")
_ROLE_ORDER = {name: i for i, name in enumerate(ROLES)}
LABEL_RULE = "1 to 16 lower-case letters and digits, starting with a letter"


class HostRole(Enum):
    MAIN = "main"
    WORKER_HOST = "worker-host"


HOST_ROLES = tuple(r.value for r in HostRole)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerHost:
    """A machine that runs only workers, as the main host's admin named it."""

    label: str
    address: str
    counts: Mapping[str, int]


@dataclass(frozen=True)
class Topology:
    """This host's part in the deployment.  The default is one machine."""

    role: HostRole = HostRole.MAIN
    #: Main host: main's replication listener on the private network.
    replication: Address | None = None
    #: Main host: the machines that run only workers.
    worker_hosts: tuple[WorkerHost, ...] = ()
    #: Worker host: its own label (the rest comes from cluster.yaml).
    label: str | None = None
    #: The admin confirmed a public or wildcard replication address.
    allow_public: bool = False
    #: The admin confirmed every host mounts one media store (media workers elsewhere).
    shared_media: bool = False

    @property
    def spans_hosts(self) -> bool:
        return self.role is HostRole.WORKER_HOST or bool(self.worker_hosts)


def check_label(label: str) -> str:
    if not _LABEL.fullmatch(label) or label == "main":
        raise SelectionError(f"host name {label!r} is not allowed; use {LABEL_RULE} (not 'main')")
    return label


def http_port(role: str, index: int) -> int:
    return PORT_BASE + 100 * _ROLE_ORDER[role] + index


def replication_port(role: str, index: int) -> int:
    return PORT_BASE + 100 * _ROLE_ORDER[role] + 50 + index


def metrics_port(role: str, index: int) -> int:
    return METRICS_PORT_BASE + 100 * _ROLE_ORDER[role] + index


def check_index(role: str, index: int) -> None:
    if index > MAX_INDEX:
        raise SelectionError(f"{role} worker number {index} is above {MAX_INDEX}, the most a "
                             "host's port range holds; use fewer workers of that type per host")


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise SelectionError(f"{what} {text!r} is not an IP address; give the private address "
                             "itself, for example 10.0.0.1 or fd00::1") from None


def check_private(text: str, what: str, *, allow_public: bool = False) -> str:
    """A usable address for traffic between hosts: private unless the admin confirmed."""
    ip = _ip(text, what)
    if ip.is_loopback:
        raise SelectionError(f"{what} {text!r} is a loopback address, which other hosts cannot "
                             "reach; give this host's address on the private network")
    if not allow_public and (ip.is_unspecified or not ip.is_private):
        kind = "a wildcard" if ip.is_unspecified else "a public"
        raise SelectionError(
            f"{what} {text!r} is {kind} address: replication and Redis would be open to every "
            "network it reaches; give a private address (10.0.0.0/8, 172.16.0.0/12, "
            "192.168.0.0/16, fc00::/7), or confirm it explicitly (debconf question "
            "matrix-synapse-workers/allow-public-address, or --allow-public-address)")
    return str(ip)


def parse_address(text: str, *, default_port: int, what: str, allow_public: bool = False) -> Address:
    """``10.0.0.1``, ``10.0.0.1:9093``, ``fd00::1`` or ``[fd00::1]:9093``."""
    value = text.strip()
    host, port = value, default_port
    bracketed = re.fullmatch(r"\[(?P<host>[^\]]+)\](?::(?P<port>[0-9]{1,5}))?", value)
    if bracketed:
        host, port = bracketed["host"], int(bracketed["port"] or default_port)
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not re.fullmatch(r"[0-9]{1,5}", port_text):
            raise SelectionError(f"{what} {text!r} has a port that is not a number; "
                                 "write ADDRESS or ADDRESS:PORT")
        port = int(port_text)
    if not 0 < port < 65536:
        raise SelectionError(f"{what} {text!r}: port {port} is outside 1..65535")
    return Address(check_private(host, what, allow_public=allow_public), port)


def parse_worker_hosts(spec: str, allow_public: bool = False) -> tuple[WorkerHost, ...]:
    """``"hostb 10.0.0.2 sync:2,events; hostc 10.0.0.3 federation_sender"``."""
    hosts: list[WorkerHost] = []
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        fields = item.split(None, 2)
        if len(fields) != 3:
            raise SelectionError(
                f"worker host {item!r} is not understood; write LABEL ADDRESS WORKERS, for example "
                "'hostb 10.0.0.2 sync:2,events', and separate hosts with ';'")
        label, address, workers = fields
        check_label(label)
        counts = parse_workers(workers)
        if not counts:
            raise SelectionError(f"worker host {label!r} has no workers; give at least one type")
        for role, count in counts.items():
            check_index(role, count)
        hosts.append(WorkerHost(label, check_private(address, f"address of worker host {label!r}",
                                                     allow_public=allow_public),
                                counts))
    for what, key in (("label", lambda h: h.label), ("address", lambda h: h.address)):
        seen: dict[str, str] = {}
        for host in hosts:
            if key(host) in seen:
                raise SelectionError(f"two worker hosts have the {what} {key(host)!r}; each host "
                                     f"needs its own {what}")
            seen[key(host)] = host.label
    return tuple(hosts)


def _serves_media(counts: Mapping[str, int]) -> bool:
    """Workers that keep files on their own host (Synapse's media_store_path)."""
    return any(ROLES[role].serves_media for role in counts)


def media_store_refusal(labels: list[str]) -> str:
    """Why media workers on worker hosts ``labels`` are refused without the confirmation."""
    return (f"media workers on worker host {', '.join(map(repr, labels))}: a media worker keeps "
            "uploads, thumbnails and remote media in Synapse's media_store_path on its own disk, "
            "and every other host serves and cleans up media from its own, so a file uploaded "
            "through one host is missing (404) on the others; mount one shared media store (NFS, "
            "CephFS...) at media_store_path on the main host and every worker host, then confirm "
            "it (debconf question matrix-synapse-workers/shared-media-store, or "
            "--shared-media-store), or keep the media workers on the main host")


def check_media_hosts(hosts: tuple[WorkerHost, ...], shared_media: bool) -> None:
    """Media workers on a worker host need the admin's word that the media store is shared."""
    labels = [h.label for h in hosts if _serves_media(h.counts)]
    if labels and not shared_media:
        raise SelectionError(media_store_refusal(labels))


def describe_worker_hosts(hosts: tuple[WorkerHost, ...]) -> str:
    """The spec :func:`parse_worker_hosts` reads, in one spelling."""
    return "; ".join(
        f"{h.label} {h.address} " + ",".join(f"{r}:{n}" for r, n in h.counts.items())
        for h in hosts)


def main_topology(worker_hosts: str, replication_address: str,
                  allow_public: bool = False, shared_media: bool = False) -> Topology:
    """A main host's topology from the admin's answers; no worker hosts is one machine."""
    hosts = parse_worker_hosts(worker_hosts, allow_public)
    if not hosts:
        return Topology()
    check_media_hosts(hosts, shared_media)
    if not replication_address.strip():
        raise SelectionError(
            "worker hosts are named, but no replication address: give main's address on the "
            "private network the worker hosts reach it by (for example 10.0.0.1)")
    replication = parse_address(replication_address, default_port=DEFAULT_REPLICATION_PORT,
                                what="replication address", allow_public=allow_public)
    clash = [h.label for h in hosts if h.address == replication.host]
    if clash:
        raise SelectionError(f"worker host {clash[0]!r} has main's own address "
                             f"{replication.host}; give each worker host its own address")
    return Topology(HostRole.MAIN, replication, hosts, allow_public=allow_public,
                    shared_media=shared_media and any(_serves_media(h.counts) for h in hosts))


def worker_host_topology(label: str) -> Topology:
    return Topology(HostRole.WORKER_HOST, label=check_label(label.strip()))
