"""Pure: the catalog's endpoint table x a plan -> where each class of requests goes.

The reverse proxy needs, for every class of endpoints in :data:`catalog.ENDPOINTS`,
the pool of workers that serves it (or main), and how requests are spread over
that pool.  This module decides that once; the nginx templates only print it.

>>> from ..core.selection import select
>>> from ..core.plan import Plan, plan_workers
>>> plan = Plan(plan_workers(select(workers="sync:2,client")))
>>> destination(plan, "/_matrix/client/v3/sync", "GET")
('sync', ('sync-1', 'sync-2'))
>>> destination(plan, "/_matrix/client/v3/rooms/!r:x/typing/@a:x", "PUT")
('main', ())
>>> destination(plan, "/_matrix/client/v3/user/@a:x/account_data/t", "GET")
('client', ('client-1',))

A request only a stream's writer can answer goes to main when there is none:

>>> destination(plan, "/_matrix/client/v3/presence/@b:x/status", "GET")
('main', ())

Routes depend on the Synapse version (None: unknown, the newest table):

>>> destination(plan, "/_matrix/client/v3/account/deactivate", "POST", (1, 134, 0))
('main', ())
>>> destination(plan, "/_matrix/client/v3/account/deactivate", "POST")
('client', ('client-1',))

With the Matrix Authentication Service on, login and registration get no
location (MAS's own location, or main, answers them):

>>> destination(plan, "/_matrix/client/v3/login", "GET")
('client', ('client-1',))
>>> destination(plan, "/_matrix/client/v3/login", "GET", mas=True)
('main', ())
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from dataclasses import dataclass
from typing import Iterable

from ..core import paths
from ..core.catalog import ENDPOINTS, MIN_SYNAPSE_VERSION, ROLES, Balance, Endpoints, Version
from ..core.plan import Plan, Worker

MAIN = "main"
#: Methods a ``read_roles`` pool serves.
READ_METHODS = ("GET", "HEAD")
#: Synapse's default max_upload_size; the proxy must let such uploads through.
MAX_BODY_SIZE = "50M"
#: Where the Matrix Authentication Service calls Synapse (user and device
#: provisioning): always main, which serves it on every version that has it
#: (workers only from 1.162, and only some of it before).
MAS_TO_SYNAPSE = "/_synapse/mas/"

#: Synapse's size suffixes (synapse/config/_base.py parse_size), in bytes.
_SIZE_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def body_size(max_upload_size: object) -> str:
    """nginx's ``client_max_body_size`` for Synapse's ``max_upload_size`` (None: Synapse's
    default): the same number of bytes, in the largest unit nginx knows that fits.

    >>> body_size(None), body_size("100M"), body_size("1T"), body_size(1536), body_size("2K")
    ('50M', '100M', '1024G', '1536', '2K')

    Raises ValueError for a value Synapse would not accept either.
    """
    if max_upload_size is None:
        return MAX_BODY_SIZE
    if isinstance(max_upload_size, bool) or not isinstance(max_upload_size, (int, str)):
        raise ValueError(f"max_upload_size {max_upload_size!r} is not a size")
    text = str(max_upload_size).strip()
    unit = _SIZE_UNITS.get(text[-1:], 1) if text else 1
    number = text[:-1] if unit > 1 else text
    if not number.isdigit():
        raise ValueError(f"max_upload_size {max_upload_size!r} is not a size (a number of bytes, "
                         "or a number followed by K, M, G or T)")
    size = int(number) * unit
    for suffix in ("G", "M", "K"):
        if size and size % _SIZE_UNITS[suffix] == 0:
            return f"{size // _SIZE_UNITS[suffix]}{suffix}"
    return str(size)

#: The nginx variable each balance hashes on (set by maps in the http-context file).
HASH_KEYS: dict[Balance, str | None] = {
    Balance.ANY: None,
    Balance.USER: "$msw_user",
    Balance.ROOM: "$msw_room",
    Balance.ORIGIN: "$msw_origin",
}


#: A worker on another machine: one failed attempt (refused, or no connection
#: within :data:`CONNECT_TIMEOUT`) takes it out of its pool for 10 s.
REMOTE_SERVER_PARAMETERS = "max_fails=1 fail_timeout=10s"
#: How long nginx waits to connect to a worker before trying the next one, and
#: at last main: short, so a worker host whose link is cut costs seconds.
CONNECT_TIMEOUT = "3s"
#: Methods that are sent again (to main after a worker, as a 429 the client
#: retries after main) even when a process may have acted on them.  GET, HEAD and
#: OPTIONS only read.  The Matrix APIs use PUT and DELETE only where a repeat is
#: harmless: a PUT sends with a transaction id that Synapse looks up in its
#: database, or sets a value (state, profile, account data, tags, push rules,
#: typing, presence, backup keys), and an identical state event is not sent
#: twice; nginx itself resends PUT and DELETE to the next server of a pool.
#: POST (createRoom, join, invite, keys/upload, register, login...) and PATCH are
#: never resent once a byte of them reached a process.
REPEATABLE_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
#: The retry_after_ms of the 429 answered while main cannot be reached.  Element
#: (matrix-js-sdk) retries a rate-limited request 4 times after waiting this long
#: each, so 4 x 3 s covers a main restart (about 8 s measured); matrix-nio retries
#: without a limit.  Shorter would have every client poll a starting Synapse more
#: often for little gain (main takes seconds to start).
RETRY_AFTER_MS = 3000


@dataclass(frozen=True)
class Upstream:
    """A pool of servers and how nginx picks one of them."""

    name: str
    #: Arguments of nginx ``server`` lines: ``unix:/run/...sock`` for a process
    #: on this host, ``10.0.0.2:18001 max_fails=1 fail_timeout=10s`` for a worker
    #: on another one.
    servers: tuple[str, ...]
    #: nginx variable to hash on (consistent hashing); None: least connections.
    hash_key: str | None = None
    #: Names of the workers behind the servers (none for main).
    workers: tuple[str, ...] = ()
    #: The role of those workers (empty for main).
    role: str = ""

    @property
    def keeps_connections(self) -> bool:
        """Idle keepalive connections only to UNIX sockets: one kept to a worker host
        whose link is cut would hang the next request instead of failing over."""
        return all(server.startswith("unix:") for server in self.servers)


@dataclass(frozen=True)
class Location:
    """One regex location: an endpoint class and the upstream (or method map) it uses."""

    endpoints: Endpoints
    #: Every method goes to ``upstream``; None when only reads leave main.
    upstream: Upstream | None
    #: Only GET and HEAD go here (the rest to main); set when ``upstream`` is None.
    read_upstream: Upstream | None = None
    #: Requests without a ``since`` argument go here instead (initial syncs).
    initial_upstream: Upstream | None = None

    @property
    def regex(self) -> str:
        return combined_regex(self.endpoints.patterns)

    @property
    def main_stands_in(self) -> bool:
        """Whether main can answer what this location's pools failed (see :func:`main_stands_in`)."""
        return all(main_stands_in(u.role) for u in
                   (self.upstream, self.read_upstream, self.initial_upstream) if u is not None)

    @property
    def method_map(self) -> str:
        """Name of the nginx variable that picks the upstream by method."""
        return f"$msw_{self.endpoints.name}_by_method"

    @property
    def since_map(self) -> str:
        """Name of the nginx variable that picks the upstream by the ``since`` argument."""
        return f"$msw_{self.endpoints.name}_by_since"

    @property
    def proxy_target(self) -> str:
        """What ``proxy_pass`` names: an upstream, or the variable choosing one."""
        if self.initial_upstream is not None:
            return self.since_map
        if self.upstream is not None:
            return self.upstream.name
        return self.method_map


@dataclass(frozen=True)
class NginxModel:
    """``locations`` go to the snippet for Matrix server blocks; ``admin_locations``
    (Synapse's admin API) to the admin snippet, which admins include only where they
    serve the admin API (Synapse advises against exposing it to everyone)."""

    main: Upstream
    upstreams: tuple[Upstream, ...]
    locations: tuple[Location, ...]
    connect_timeout: str = CONNECT_TIMEOUT
    repeatable_methods: tuple[str, ...] = REPEATABLE_METHODS
    retry_after_ms: int = RETRY_AFTER_MS
    #: Answer what a process could not take with a Matrix 429 clients retry, and keep
    #: from main what only a writer or the media repository can answer; False renders the
    #: error handling from before (the proxy's 502 or 504, every pool falling back to
    #: main), which only the restart benchmark uses, to measure the difference.
    client_retries: bool = True
    #: The Synapse version the routes were chosen for; None: unknown (the newest).
    synapse_version: Version | None = None
    #: The Matrix Authentication Service handles logins (Synapse's own setting).
    mas: bool = False
    admin_locations: tuple[Location, ...] = ()

    @property
    def routes_for(self) -> str:
        """The version in words, for the files' header."""
        if self.synapse_version is None:
            return "the newest Synapse (the installed version was not known)"
        return "Synapse " + ".".join(map(str, self.synapse_version))

    def after_failure(self, location: Location) -> str:
        """Which judgement follows a failure in ``location`` (the ``$msw_after_*`` maps):
        ``worker`` sends what may be repeated to main, ``main`` answers it with a Matrix
        429 (main failed, or nobody else can answer it while its own process is back)."""
        if location.main_stands_in or not self.client_retries:
            return "worker"
        return "main"

    @property
    def balances(self) -> frozenset[Balance]:
        return frozenset(l.endpoints.balance for l in self.locations + self.admin_locations
                         if l.upstream is not None)


def combined_regex(patterns: tuple[str, ...]) -> str:
    """One anchored regex for several ``^...`` patterns.

    >>> combined_regex(("^/a$", "^/b/"))
    '^(?:/a$|/b/)'
    """
    bodies = [p[1:] if p.startswith("^") else p for p in patterns]
    return "^(?:" + "|".join(bodies) + ")"


def upstream_name(role: str, balance: Balance) -> str:
    suffix = "" if balance is Balance.ANY else f"_by_{balance.value}"
    return f"msw_{role}{suffix}"


def main_upstream() -> Upstream:
    """Main, always on this host: its UNIX socket."""
    return Upstream("msw_main", (f"unix:{paths.MAIN_HTTP_SOCKET}",))


def server(worker: Worker) -> str:
    """The ``server`` arguments of one worker: its socket, or its TCP address with
    failure settings when it runs on another host."""
    if worker.remote:
        return f"{worker.http_upstream} {REMOTE_SERVER_PARAMETERS}"
    return worker.http_upstream


def main_stands_in(role: str) -> bool:
    """Whether main can answer, while a worker of ``role`` is down, what that worker serves.

    Only for generic workers (sync, client, federation readers): what they serve, main
    serves too.  A stream writer's requests need that writer (main would refuse them, or
    forward them over replication to the same writer and wait for it); media workers
    take the media repository from main (enable_media_repo: false); a duty's worker
    (background tasks, user directory) takes work that main then no longer does.  The
    catalog says which: a role that sets no shared key leaves main as it was.

    >>> [main_stands_in(r) for r in ("sync", "client", "federation_reader", "initial_sync")]
    [True, True, True, True]
    >>> [main_stands_in(r) for r in ("typing", "receipts", "media", "background", "user_dir")]
    [False, False, False, False, False]
    """
    return not role or ROLES[role].shared_scope is None


def _first_staffed(plan: Plan, roles: tuple[str, ...]) -> str | None:
    return next((role for role in roles if plan.of_role(role)), None)


def _pool(plan: Plan, role: str, balance: Balance) -> Upstream:
    workers = plan.of_role(role)
    return Upstream(upstream_name(role, balance), tuple(server(w) for w in workers),
                    HASH_KEYS[balance], tuple(w.name for w in workers), role)


def location_for(plan: Plan, endpoints: Endpoints) -> Location | None:
    """Where one class goes with this plan; None when main serves all of it."""
    initial_role = _first_staffed(plan, endpoints.initial_roles)
    initial = _pool(plan, initial_role, endpoints.balance) if initial_role else None
    role = _first_staffed(plan, endpoints.roles)
    if role is not None:
        return Location(endpoints, _pool(plan, role, endpoints.balance), initial_upstream=initial)
    reader = _first_staffed(plan, endpoints.read_roles)
    if reader is not None:
        return Location(endpoints, None, _pool(plan, reader, endpoints.balance))
    if initial is not None:
        return Location(endpoints, None, initial_upstream=initial)
    return None


def table_for(version: Version | None, mas: bool = False) -> tuple[Endpoints, ...]:
    """The catalog's classes that describe this Synapse, in matching order.

    Classes Synapse registers only with MAS are left out without it.  With
    MAS (``mas``) the classes left to it are not matched at all: an
    admin's MAS location then wins whether it comes before or after our
    include (nginx takes the first regex location that matches), and without
    one the request reaches main.
    """
    return tuple(e for e in ENDPOINTS.values() if e.applies_to(version)
                 and not (e.left_to_mas if mas else e.mas_only))


def nginx_model(plan: Plan, version: Version | None = None, mas: bool = False,
                client_retries: bool = True) -> NginxModel:
    """Upstreams and locations for a plan, a Synapse version and whether MAS is on
    (``client_retries``: see :attr:`NginxModel.client_retries`)."""
    locations = tuple(filter(None, (location_for(plan, e) for e in table_for(version, mas))))
    upstreams: dict[str, Upstream] = {}
    for location in locations:
        for upstream in (location.upstream, location.read_upstream, location.initial_upstream):
            if upstream is not None:
                upstreams.setdefault(upstream.name, upstream)
    return NginxModel(main_upstream(), tuple(upstreams.values()),
                      tuple(l for l in locations if not l.endpoints.admin),
                      client_retries=client_retries, synapse_version=version, mas=mas,
                      admin_locations=tuple(l for l in locations if l.endpoints.admin))


@functools.lru_cache(maxsize=None)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(combined_regex(patterns))


def endpoint_class(path: str, table: Iterable[Endpoints] | None = None) -> Endpoints | None:
    """The first class of ``table`` (default: the newest) whose patterns match
    ``path``, as nginx tries regex locations in order."""
    classes = table_for(None) if table is None else table
    return next((e for e in classes if _compiled(e.patterns).match(path)), None)


def is_initial(query: str) -> bool:
    """No ``since`` argument, or an empty one (as nginx's ``$arg_since`` sees it).

    >>> is_initial(""), is_initial("timeout=0&since="), is_initial("since=s72_1")
    (True, True, False)
    """
    return not urllib.parse.parse_qs(query, keep_blank_values=True).get("since", [""])[0]


def destination(plan: Plan, path: str, method: str, version: Version | None = None,
                mas: bool = False) -> tuple[str, tuple[str, ...]]:
    """The role (or ``main``) and the workers a request (``path?query``) goes to
    while they are up (with ``mas``, main stands for main or the admin's MAS location)."""
    path, _, query = path.partition("?")
    endpoints = endpoint_class(path, table_for(version, mas))
    if endpoints is None:
        return MAIN, ()
    role = _first_staffed(plan, endpoints.initial_roles) if is_initial(query) else None
    role = role or _first_staffed(plan, endpoints.roles)
    if role is None and method.upper() in READ_METHODS:
        role = _first_staffed(plan, endpoints.read_roles)
    if role is None:
        return MAIN, ()
    return role, tuple(w.name for w in plan.of_role(role))


def route_table(plan: Plan, version: Version | None = None,
                mas: bool = False) -> list[dict[str, object]]:
    """Every endpoint class with where it goes, for people and for ``--json``."""
    rows: list[dict[str, object]] = []
    for endpoints in table_for(version, mas):
        location = location_for(plan, endpoints)
        upstream = location.upstream if location else None
        reads = location.read_upstream if location else None
        initial = location.initial_upstream if location else None
        target = upstream or reads
        rows.append({
            "endpoints": endpoints.name,
            "summary": endpoints.summary,
            "methods": "all" if upstream or not reads else "GET, HEAD (others: main)",
            "to": list(target.workers) if target else [MAIN],
            "initial_to": list(initial.workers) if initial else None,
            "balance": endpoints.balance.value if target or initial else None,
        })
    return rows


def check_table(table: Iterable[Endpoints] | None = None) -> list[str]:
    """Inconsistencies in an endpoint table, by default the catalog's (empty when sound)."""
    problems = []
    for endpoints in ENDPOINTS.values() if table is None else table:
        if not re.fullmatch(r"[a-z0-9_]+", endpoints.name):
            problems.append(f"{endpoints.name}: not usable in an nginx variable name")
        if endpoints.since and endpoints.until and endpoints.since >= endpoints.until:
            problems.append(f"{endpoints.name}: since {endpoints.since} is not before "
                            f"until {endpoints.until}")
        if endpoints.until and endpoints.until <= MIN_SYNAPSE_VERSION:
            problems.append(f"{endpoints.name}: ends before the oldest supported Synapse")
        if not endpoints.why.strip():
            problems.append(f"{endpoints.name}: no why (the handler that lets its roles serve it)")
        if endpoints.writers_only and (
                len(endpoints.roles) != 1 or ROLES.get(endpoints.roles[0]) is None
                or ROLES[endpoints.roles[0]].stream is None
                or endpoints.read_roles or endpoints.initial_roles):
            problems.append(f"{endpoints.name}: only its stream's writer can serve it, "
                            f"so its one role must be that writer (main takes it otherwise)")
        if endpoints.left_to_mas and endpoints.mas_only:
            problems.append(f"{endpoints.name}: left to MAS and only with MAS: never matched")
        if endpoints.initial_roles and endpoints.read_roles:
            problems.append(f"{endpoints.name}: initial_roles and read_roles cannot be combined")
        for role in endpoints.roles + endpoints.read_roles + endpoints.initial_roles:
            if role not in ROLES:
                problems.append(f"{endpoints.name}: unknown role {role}")
            elif endpoints.resource not in ROLES[role].http_resources:
                problems.append(f"{endpoints.name}: {role} workers do not serve "
                                f"the {endpoints.resource} resource")
        for pattern in endpoints.patterns:
            if not pattern.startswith("^"):
                problems.append(f"{endpoints.name}: {pattern} is not anchored")
            if any(c in pattern for c in ' ;{}"\''):
                problems.append(f"{endpoints.name}: {pattern} needs quoting in nginx")
    return problems
