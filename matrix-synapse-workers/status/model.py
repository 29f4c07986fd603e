"""The status model: what the probes hand over (:class:`Facts`) and what the checks give back (:class:`Row`).

Plain frozen records, no I/O: :mod:`.probe` fills them, :mod:`.checks` judges
them, :mod:`.report` prints the rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable, Mapping

from ..core import paths
from ..core.plan import Worker, main_worker_name
from ..core.topology import HostRole
from ..core.vhost import Routing

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
#: How bad each status is; the exit code of the worst one.
RANK = {OK: 0, INFO: 0, WARN: 1, FAIL: 2}
MAIN = "main"
#: Which host this is, spelled as :class:`..core.topology.HostRole` spells it.
MAIN_HOST, WORKER_HOST = HostRole.MAIN.value, HostRole.WORKER_HOST.value
_VERSION = re.compile(r"Synapse/(?P<version>[0-9][^\s]*)")


# --- facts (what the probes hand over) -----------------------------------------


@dataclass(frozen=True)
class Process:
    """A Synapse process that should run: main or a worker."""

    name: str
    unit: str
    #: Its HTTP socket; None when it serves HTTP over TCP (:attr:`http_address`).
    http_socket: PurePosixPath | None
    #: Its replication socket (stream writers and main), if any.
    replication_socket: PurePosixPath | None = None
    #: Writes a stream: when it is down, that stream's writes fail.
    stream: str | None = None
    #: The worker host it runs on (its label); None: the main host.
    host: str | None = None
    #: ``address:port`` of its HTTP listener on a worker host's private address.
    http_address: str | None = None
    #: It runs on another machine: no unit or socket here, /health over the network.
    remote: bool = False

    @property
    def where(self) -> str:
        """Where /health is asked."""
        return str(self.http_socket) if self.http_socket is not None else (self.http_address or "?")


@dataclass(frozen=True)
class UnitState:
    active: str  # active, inactive, failed, activating, ...
    sub: str = ""
    main_pid: int = 0


@dataclass(frozen=True)
class Health:
    """The answer to GET /health over a process's socket."""

    status: int | None = None
    body: str = ""
    server: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body.strip() == "OK"

    @property
    def version(self) -> str | None:
        match = _VERSION.search(self.server)
        return match["version"] if match else None


@dataclass(frozen=True)
class PathStat:
    exists: bool
    is_socket: bool = False
    owner: str = ""
    group: str = ""
    mode: int = 0


@dataclass(frozen=True)
class RedisClient:
    """One line of Redis's CLIENT LIST, as far as it matters here."""

    fd: int
    subscriptions: int = 0
    flags: str = ""
    #: ``addr=``: the client's end, ``IP:PORT`` over TCP, ``/path:0`` over a socket.
    addr: str = ""

    @property
    def subscribed(self) -> bool:
        return self.subscriptions > 0 or "P" in self.flags

    @property
    def peer_host(self) -> str | None:
        """The client's IP address over TCP, None over a UNIX socket.

        >>> RedisClient(8, addr="10.99.0.2:41234").peer_host, RedisClient(9, addr="[fd00::2]:5").peer_host
        ('10.99.0.2', 'fd00::2')
        >>> RedisClient(8, addr="/run/redis-matrix-synapse/redis-server.sock:0").peer_host is None
        True
        """
        if not self.addr or self.addr.startswith("/"):
            return None
        return self.addr.rpartition(":")[0].strip("[]") or None


@dataclass(frozen=True)
class RedisFacts:
    #: ``unix:/path`` or ``host:port`` from conf.d/redis.yaml; "" when it has none.
    location: str
    #: The unit running it, for the dedicated instance and the guide's Redis.
    unit: str | None = None
    socket: PurePosixPath | None = None
    socket_stat: PathStat | None = None
    error: str = ""
    #: ``CONFIG GET port``: 0 means no TCP; None when not asked or refused.
    tcp_port: int | None = None
    clients: tuple[RedisClient, ...] = ()
    #: Redis server fd -> pid of the client process at the other end (from ss),
    #: None when connections cannot be attributed (not root, no ss).
    client_pids: Mapping[int, int] | None = None
    #: With the dedicated instance: the server package's own stock instance
    #: (redis-server.service), when it runs; apt starts it, Synapse does not use it.
    stock_unit: str | None = None

    @property
    def reachable(self) -> bool:
        return bool(self.location) and not self.error


@dataclass(frozen=True)
class Expected:
    """What the configuration on disk says should be running."""

    processes: tuple[Process, ...]
    socket_group: str = paths.DEFAULT_SOCKET_GROUP
    web_user: str = paths.DEFAULT_WEB_USER
    dir_owner: str = paths.SYNAPSE_USER
    dir_mode: int = paths.SOCKET_DIR_MODE
    #: Whether matrix-synapse must be in the server's group (our socket is 0770 redis:redis,
    #: or valkey:valkey), and that group.
    needs_redis_group: bool = True
    redis_group: str = "redis"


@dataclass(frozen=True)
class ConfigFacts:
    """The deployed files against the answers and the admin's homeserver.yaml."""

    #: Worker counts on disk, as ``answers.normalized_counts`` spells them.
    disk_workers: str
    #: The same from the debconf answers; None when debconf could not be read.
    answer_workers: str | None = None
    answer_error: str = ""
    #: From /var/lib/matrix-synapse-workers/applied; None when there is none.
    recorded_workers: str | None = None
    #: Our files whose content differs from what the package would write now.
    drifted: tuple[str, ...] = ()
    #: Our files that should exist and do not.
    missing: tuple[str, ...] = ()
    #: conf.d/workers.yaml re-emits every listener of the admin's config.
    listeners_match: bool | None = None
    error: str = ""


@dataclass(frozen=True)
class NginxFacts:
    #: Files the renderer produces for the web server, e.g. under etc/nginx/ (absolute paths).
    rendered: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    #: Rendered files ``nginx -T`` does not show as part of the configuration.
    not_included: tuple[str, ...] = ()
    test_ok: bool | None = None
    test_output: str = ""
    #: How the configuration nginx loads routes the worker paths (None: not read).
    routing: Routing | None = None
    #: The web server in front (nginx unless another was chosen; see system/webservers.py).
    server: str = "nginx"


@dataclass(frozen=True)
class Reach:
    """A probe of another host: whether it passed, and what was seen when not."""

    ok: bool
    detail: str = ""
    #: Something answered on the port (so a failure is not the network's).
    reached: bool = False
    #: What answered is the expected server, and it refused the secret or password.
    refused: bool = False


@dataclass(frozen=True)
class SecretFile:
    """One of the files in the cluster directory that hold a secret."""

    path: str
    #: None: not looked at (the directory is closed to this user).
    stat: PathStat | None
    #: Why its content cannot be used: "" (fine), "empty", or the error reading it.
    error: str = ""


@dataclass(frozen=True)
class PeerListener:
    """A stream writer's replication listener on another host, asked from this one.

    Every process sends a stream's writes to its writer's replication listener:
    a firewall that lets /health through but not that port breaks the stream.
    """

    name: str
    #: The host it runs on: a worker-host label, or ``main``.
    host: str
    address: str
    stream: str | None
    health: Health


@dataclass(frozen=True)
class ClusterFacts:
    """Synapse over several machines, as this host sees it."""

    #: :data:`MAIN_HOST` or :data:`WORKER_HOST`.
    role: str
    #: A worker host's own label.
    label: str | None = None
    #: Why cluster.yaml (or the worker-host mark) cannot be used; "" when it can.
    error: str = ""
    #: Main's replication listener and Redis on the private network (``host:port``).
    replication: str = ""
    redis: str = ""
    #: Worker-host label -> its private address.
    hosts: Mapping[str, str] = field(default_factory=dict)
    #: Worker host: the workers cluster.yaml gives it; None when unknown.
    listed_here: tuple[str, ...] | None = None
    #: This machine holds its private address (main: the replication address,
    #: worker host: its own); None when not known.
    address_here: bool | None = None
    #: The cluster directory; None when it cannot be looked at.
    directory: PathStat | None = None
    secrets: tuple[SecretFile, ...] = ()
    #: Redis AUTH with the password file over the private address; None: not tried.
    redis_reach: Reach | None = None
    #: Worker host: main's replication listener with the secret file's content;
    #: None: not tried.  ``secret_tested`` False: only TCP was tried (no secret).
    replication_reach: Reach | None = None
    secret_tested: bool = False
    #: GET /health on main's replication address over the private network.
    main_health: Health | None = None
    #: The replication listeners of stream writers on other hosts.
    writers: tuple[PeerListener, ...] = ()


#: The most exposure a unit of ours may show (systemd-analyze security, 0 to 10).
MAX_EXPOSURE = 1.5


@dataclass(frozen=True)
class Exposure:
    """A unit's sandbox as systemd scores it, and the drop-ins it is made of."""

    #: None: not measured (no systemd-analyze, or the unit is unknown).
    score: float | None
    dropins: tuple[str, ...] = ()

    @property
    def foreign_dropins(self) -> tuple[str, ...]:
        """Drop-ins neither this package nor Synapse's package ships: an admin's.

        >>> Exposure(4.0, ("/etc/systemd/system/u.service.d/matrix-synapse-workers.conf",
        ...                "/etc/systemd/system/u.service.d/override.conf")).foreign_dropins
        ('/etc/systemd/system/u.service.d/override.conf',)
        """
        return tuple(d for d in self.dropins if paths.PACKAGE not in d.rpartition("/")[2]
                     and not d.startswith(("/usr/lib/", "/lib/")))


@dataclass(frozen=True)
class DatabaseFacts:
    """PostgreSQL's connection limit against the pools of every Synapse process."""

    processes: int
    cp_min: int
    cp_max: int
    max_connections: int | None = None
    reserved: int | None = None
    #: Why PostgreSQL could not be asked.
    error: str = ""


@dataclass(frozen=True)
class MemoryFacts:
    """The memory budget of this host's Synapse processes against what they hold."""

    budget_mib: int
    #: How the budget was found (``set``, or how ``auto`` sized it).
    source: str
    #: Cache autotuning holds each process to its share (libjemalloc2 is installed).
    enforced: bool
    #: Each local process's share of the budget (MiB), by name.
    shares: Mapping[str, int] = field(default_factory=dict)
    #: Each running process's RSS (MiB), by name; a stopped one is absent.
    rss: Mapping[str, int] = field(default_factory=dict)
    #: Our caches keys the admin's own settings replace.
    overridden: tuple[str, ...] = ()

    @property
    def total_mib(self) -> int:
        return sum(self.rss.values())

    def as_json(self) -> dict[str, object]:
        return {"budget_mib": self.budget_mib, "source": self.source, "enforced": self.enforced,
                "rss_mib": self.total_mib, "processes": {
                    name: {"rss_mib": self.rss.get(name), "share_mib": share}
                    for name, share in self.shares.items()}}


@dataclass(frozen=True)
class Facts:
    expected: Expected
    units: Mapping[str, UnitState]
    health: Mapping[str, Health]
    #: The socket directory and every socket, by absolute path.
    paths: Mapping[str, PathStat]
    #: Group name -> its members, including users whose primary group it is;
    #: a missing group is absent.
    groups: Mapping[str, frozenset[str]]
    redis: RedisFacts
    installed_version: str | None
    config: ConfigFacts
    nginx: NginxFacts
    target_unit: UnitState | None = None
    #: None: one machine (no cluster.yaml, not a worker host).
    cluster: ClusterFacts | None = None
    #: Each local unit's sandbox, by unit name.
    exposure: Mapping[str, Exposure] = field(default_factory=dict)
    #: None: not checked here (a worker host, or no PostgreSQL configuration read).
    database: DatabaseFacts | None = None
    #: What an apply keeps only while it runs (the answers it applies, the service actions it
    #: owes), found on disk: one running now, or one killed half-way.
    unfinished: tuple[str, ...] = ()
    #: Why the last install or reconfigure configured nothing (None: it did not refuse).
    refused: str | None = None
    #: An admin's unit copies in /etc/systemd/system that shadow the package's (kept by a
    #: take-over because they differ from the guides').
    unit_copies: tuple[str, ...] = ()
    #: Where take-overs moved hand-made files, each with how many files it holds.
    adopted: tuple[tuple[str, int], ...] = ()
    #: The memory budget and the processes' RSS; a string: why it cannot be judged.
    memory: "MemoryFacts | str | None" = None


@dataclass(frozen=True)
class Row:
    check: str
    subject: str
    status: str
    detail: str
    advice: str | None = None


# --- records made from the plan ---------------------------------------------------


def upstream_version(version: str | None) -> str | None:
    """``1:1.163.2+bookworm1`` -> ``1.163.2``: the Synapse release a package carries."""
    if not version:
        return None
    version = version.split(":", 1)[-1]
    return re.split(r"[+~-]", version, maxsplit=1)[0] or None


def expected_processes(worker_names: Iterable[str]) -> tuple[Process, ...]:
    """Main and one process per worker file, with the sockets the catalog gives them."""
    found = [Process(MAIN, paths.MAIN_UNIT, paths.MAIN_HTTP_SOCKET, paths.MAIN_REPLICATION_SOCKET)]
    for name in worker_names:
        parsed = main_worker_name(name)
        role = parsed.role if parsed else None
        replication = (paths.worker_replication_socket(name)
                       if role is not None and role.needs_replication_listener else None)
        found.append(Process(name, paths.WORKER_UNIT_TEMPLATE.format(name=name),
                             paths.worker_http_socket(name), replication,
                             role.stream if role is not None else None))
    return tuple(found)


def worker_process(worker: Worker, *, remote: bool = False) -> Process:
    """The process of a planned worker: on a UNIX socket here, or over TCP on a worker host."""
    address = worker.http_address
    if address is None:
        return Process(worker.name, worker.unit, worker.http_socket, worker.replication_socket,
                       worker.role.stream)
    return Process(worker.name, worker.unit, None, None, worker.role.stream, worker.host,
                   str(address), remote)
