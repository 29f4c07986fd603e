"""Pure: a worker setup made by hand (the worker guide, Synapse's own docs), and how the
package takes it over.

Facts in (:class:`HandMade`, read by :mod:`..system.handmade`), a decision out
(:class:`Adoption`): the workers of each role that give the same capacity, the
Redis found, the files to move aside, the admin's unit copies kept, what the
package's conf.d overrides, and every blocker at once.  Nothing here reads the
host or the clock.

>>> found = HandMade(workers=(
...     HandMadeWorker(PurePosixPath("etc/matrix-synapse/workers/syncworker1.yaml"),
...                    {"worker_app": "synapse.app.generic_worker", "worker_name": "syncworker1",
...                     "worker_listeners": [{"type": "http", "path": "/run/x.sock",
...                                           "resources": [{"names": ["client", "federation"]}]}]}),
...     HandMadeWorker(PurePosixPath("etc/matrix-synapse/workers/fed.yaml"),
...                    {"worker_app": "synapse.app.federation_sender", "worker_name": "fed"})),
...     shared={"send_federation": False})
>>> decision = adopt(found)
>>> decision.counts, decision.blockers
({'sync': 1, 'federation_sender': 1}, ())
>>> [(w.name, w.roles) for w in decision.workers]
[('syncworker1', ('sync',)), ('fed', ('federation_sender',))]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

from . import paths
from .catalog import ROLES
from .redisserver import SERVERS
from .settings import RedisSettings, parse_redis

#: Where the files the package stops using go, under a directory per take-over.
ADOPTED_DIR = paths.SYNAPSE_ETC / "workers.hand-made"
#: The take-over a run began (JSON): a killed run's successor finishes it from this.
ADOPTING_RECORD = paths.STATE_DIR / "adopting"

#: Worker apps Synapse still accepts (all run as a generic worker) and the role each meant.
WORKER_APPS: Mapping[str, str | None] = {
    "synapse.app.generic_worker": None,
    "synapse.app.appservice": "appservice",
    "synapse.app.client_reader": "client",
    "synapse.app.event_creator": "client",
    "synapse.app.federation_reader": "federation_reader",
    "synapse.app.federation_sender": "federation_sender",
    "synapse.app.frontend_proxy": "client",
    "synapse.app.media_repository": "media",
    "synapse.app.pusher": "pusher",
    "synapse.app.synchrotron": "sync",
    "synapse.app.user_dir": "user_dir",
}
#: Legacy main-process switches that Synapse refuses next to the modern duty key
#: once the worker is a generic worker: only the admin can remove them.
LEGACY_CONFLICTING = {"notify_appservices": "notify_appservices_from_worker",
                      "update_user_directory": "update_user_directory_from_worker"}
#: Listener resources that say nothing about what a worker serves to clients.
_PLUMBING = frozenset({"replication", "health", "metrics", "static"})
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

# The units the worker guide and Synapse's docs/systemd-with-workers copy into
# /etc/systemd/system, as directives (Description= and comments left out: an
# admin who only renamed or annotated them changed nothing that runs).
_GUIDE_TEMPLATE = frozenset({
    "[Unit]", "AssertPathExists=/etc/matrix-synapse/workers/%i.yaml",
    "PartOf=matrix-synapse.target", "ReloadPropagatedFrom=matrix-synapse.target",
    "After=matrix-synapse.service", "[Service]", "Type=notify", "NotifyAccess=main",
    "User=matrix-synapse", "WorkingDirectory=/var/lib/matrix-synapse",
    "EnvironmentFile=-/etc/default/matrix-synapse",
    "ExecStart=/opt/venvs/matrix-synapse/bin/python -m synapse.app.generic_worker "
    "--config-path=/etc/matrix-synapse/homeserver.yaml --config-path=/etc/matrix-synapse/conf.d/ "
    "--config-path=/etc/matrix-synapse/workers/%i.yaml",
    "ExecReload=/bin/kill -HUP $MAINPID", "Restart=always", "RestartSec=3",
    "SyslogIdentifier=matrix-synapse-%i", "[Install]", "WantedBy=matrix-synapse.target"})
_GUIDE_TARGET = frozenset({"[Unit]", "After=network.target", "[Install]",
                           "WantedBy=multi-user.target"})
#: The unit copies that shadow the package's, with the content the guides give them.
KNOWN_UNITS: Mapping[str, frozenset[str]] = {
    "matrix-synapse-worker@.service": _GUIDE_TEMPLATE,
    paths.TARGET_UNIT: _GUIDE_TARGET,
}


@dataclass(frozen=True)
class HandMadeWorker:
    """A worker file without our marker: its path (under the root) and parsed content."""

    path: PurePosixPath
    #: None when it is not a YAML mapping (``error`` says why).
    config: Mapping[str, Any] | None
    error: str = ""

    @property
    def name(self) -> str:
        given = (self.config or {}).get("worker_name")
        return given if isinstance(given, str) and given else self.path.stem


@dataclass(frozen=True)
class UnitCopy:
    """A unit file an admin put in /etc/systemd/system that shadows one of the package's."""

    path: PurePosixPath
    content: str


@dataclass(frozen=True)
class HandMade:
    """What the reader found on the host."""

    workers: tuple[HandMadeWorker, ...] = ()
    #: The admin's merged Synapse configuration (homeserver.yaml and conf.d, ours left out).
    shared: Mapping[str, Any] = field(default_factory=dict)
    unit_copies: tuple[UnitCopy, ...] = ()
    #: Symlinks in /etc/systemd/system that enable the hand-made workers or the admin's target.
    links: tuple[PurePosixPath, ...] = ()
    #: The admin's own conf.d/redis.yaml (same name as ours), parsed; None when absent or ours.
    redis_file: Mapping[str, Any] | None = None
    #: Each server whose stock configuration has an active ``unixsocket`` line: that socket.
    server_sockets: Mapping[str, str] = field(default_factory=dict)
    #: Log configurations the hand-made workers name (paths under the root that exist).
    log_configs: Mapping[str, PurePosixPath] = field(default_factory=dict)
    #: main's own log_config (never moved).
    main_log_config: str | None = None
    #: The group of an existing socket directory (None when there is none).
    socket_dir_group: str | None = None
    #: The listeners of the admin's files (positions count from 1 in messages).
    listeners: tuple[Mapping[str, Any], ...] = ()

    @property
    def found(self) -> bool:
        """Anything to take over: hand-made workers, or the guides' units."""
        return bool(self.workers or self.unit_copies)


@dataclass(frozen=True)
class Mapped:
    """One hand-made worker and the roles that take over its work."""

    name: str
    path: PurePosixPath
    roles: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Adoption:
    workers: tuple[Mapped, ...]
    #: Workers per role, in catalog order: the same capacity as the hand-made setup.
    counts: Mapping[str, int]
    #: The Redis the hand-made setup uses; None when it names none (the answer stands).
    redis: RedisSettings | None
    socket_group: str | None
    #: Files moved aside (workers, their log configs, unit copies, links, conf.d/redis.yaml).
    moves: tuple[PurePosixPath, ...]
    #: Units of the hand-made workers to stop before their files go.
    stop: tuple[str, ...]
    #: The admin's unit copies changed beyond the guides': kept (status warns).
    kept_units: tuple[PurePosixPath, ...]
    #: What the package's conf.d overrides in the admin's files, and other notes.
    notes: tuple[str, ...]
    blockers: tuple[str, ...]


def superseded_listeners(listeners: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """Positions of the admin's listeners that serve only replication on this host (a UNIX
    socket in the package's socket directory, or loopback TCP): the guides' replication
    listener.  The package's own replication listener replaces them in conf.d/workers.yaml;
    one on another address (for workers on other machines) stays.

    >>> superseded_listeners([{"port": 8008, "resources": [{"names": ["client"]}]},
    ...     {"path": "/run/matrix-synapse/replication.sock", "type": "http",
    ...      "resources": [{"names": ["replication"]}]},
    ...     {"port": 9093, "bind_addresses": ["127.0.0.1"], "type": "http",
    ...      "resources": [{"names": ["replication"]}]},
    ...     {"port": 9093, "bind_addresses": ["10.0.0.1"], "type": "http",
    ...      "resources": [{"names": ["replication"]}]}])
    (1, 2)
    """
    found = []
    for index, listener in enumerate(listeners):
        if listener.get("type", "http") != "http" or _resources(listener) != {"replication"}:
            continue
        if "path" in listener:
            if PurePosixPath(str(listener["path"])).parent == paths.SOCKET_DIR:
                found.append(index)
            continue
        binds = list(listener.get("bind_addresses") or [])
        if listener.get("bind_address"):
            binds.append(listener["bind_address"])
        if binds and all(str(b) in _LOOPBACK for b in binds):
            found.append(index)
    return tuple(found)


def _resources(listener: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for resource in listener.get("resources") or []:
        if isinstance(resource, Mapping):
            names |= {str(n) for n in resource.get("names") or []}
    return names


def _served(config: Mapping[str, Any]) -> set[str]:
    served: set[str] = set()
    for listener in config.get("worker_listeners") or []:
        if isinstance(listener, Mapping) and listener.get("type", "http") == "http":
            served |= _resources(listener)
    return served - _PLUMBING


def _named_in(value: Any, name: str) -> bool:
    if isinstance(value, str):
        return value == name
    return isinstance(value, (list, tuple)) and name in value


def _duty_roles(name: str, own: Mapping[str, Any], shared: Mapping[str, Any],
                blockers: list[str]) -> list[str]:
    """Roles from the duties the shared config (or the worker's own file) gives ``name``."""
    merged = {**shared, **own}
    roles = []
    for role in ROLES.values():
        keys = [role.duty.key] if role.duty else []
        # A writer's leader key (the quarantine writer's media jobs) does not make one: only
        # stream_writers does, below.
        keys += [role.leader_key] if role.leader_key and role.stream is None else []
        if any(_named_in(merged.get(key), name) for key in keys):
            roles.append(role.name)
    if own.get("enable_media_repo") is True and "media" not in roles:
        roles.append("media")
    writers = merged.get("stream_writers")
    for stream, names in (writers.items() if isinstance(writers, Mapping) else ()):
        if not _named_in(names, name):
            continue
        role = next((r for r in ROLES.values() if r.stream == stream), None)
        if role is None:
            blockers.append(f"{name}: stream_writers.{stream} names it, a stream this package "
                            "does not run on a worker; take it out of stream_writers")
        elif role.name not in roles:
            roles.append(role.name)
    return roles


def _generic_role(name: str, rest: set[str]) -> str | None:
    """The generic worker that serves ``rest`` (client, federation, media resources)."""
    if "media" in rest:
        return "media"
    if "client" in rest:
        lowered = name.lower()
        if "initial" in lowered:
            return "initial_sync"
        return "sync" if "sync" in lowered else "client"
    if rest & {"federation", "keys"}:
        return "federation_reader"
    return None


def map_worker(worker: HandMadeWorker, shared: Mapping[str, Any],
               blockers: list[str]) -> Mapped | None:
    """The roles one hand-made worker serves; a blocker when it cannot be told."""
    shown = f"/{worker.path}"
    config = worker.config
    if config is None:
        blockers.append(f"{shown}: {worker.error}")
        return None
    app = config.get("worker_app")
    if app not in WORKER_APPS:
        blockers.append(f"{shown}: worker_app {app!r} is not a worker this package knows "
                        f"(accepted: {', '.join(sorted(WORKER_APPS))}); remove the file or "
                        "change it, then run the take-over again")
        return None
    name = worker.name
    roles = _duty_roles(name, config, shared, blockers)
    legacy = WORKER_APPS[app]
    if legacy is not None and legacy not in roles:
        roles.insert(0, legacy)
    served = _served(config)
    covered = {r for role in roles for r in ROLES[role].resources}
    generic = _generic_role(name, served - covered)
    if generic is not None and generic not in roles:
        roles.append(generic)
    if not roles:
        blockers.append(f"{shown}: worker {name!r} serves no client, federation or media "
                        "listener and holds no duty in the shared configuration, so what it "
                        "does cannot be told; give it a duty or remove it")
        return None
    why = ", ".join(filter(None, [f"worker_app {app}" if legacy else "",
                                  f"listeners {', '.join(sorted(served))}" if served else "",
                                  "duties in the shared configuration"
                                  if set(roles) - {legacy, generic} else ""]))
    return Mapped(name, worker.path, tuple(roles), why or "generic worker")


def _redis(found: HandMade, blockers: list[str]) -> RedisSettings | None:
    """The Redis the hand-made setup uses: the guide's edit of a server's stock
    configuration, or the server it names (kept as found)."""
    source = "/" + str(paths.REDIS_CONF_D)
    section = (found.redis_file or {}).get("redis")
    if section is None:
        section, source = found.shared.get("redis"), "the Synapse configuration"
    if not isinstance(section, Mapping) or not section.get("enabled"):
        return None
    extra = sorted(set(section) - {"enabled", "path", "host", "port", "password_path"})
    if extra:
        blockers.append(f"redis in {source} sets {', '.join(extra)}, which this package does "
                        "not carry over (a password belongs in password_path); change it, then "
                        "run the take-over again")
        return None
    path = section.get("path")
    if isinstance(path, str):
        for server in SERVERS:
            if path == str(server.guide_socket) and found.server_sockets.get(server.package) == path:
                return parse_redis("guide", server)
        settings = parse_redis(f"unix:{path}")
    else:
        settings = parse_redis(f"{section.get('host', 'localhost')}:{section.get('port', 6379)}")
    if isinstance(section.get("password_path"), str):
        settings = replace(settings, password_path=PurePosixPath(section["password_path"]))
    return settings


def _unit_directives(text: str) -> frozenset[str]:
    lines = (re.sub(r"\s+", " ", line.strip()) for line in text.replace("\\\n", " ").splitlines())
    return frozenset(line for line in lines if line and not line.startswith(("#", ";"))
                     and not line.startswith("Description="))


def guide_unit(copy: UnitCopy) -> bool:
    """Whether an admin's unit copy says what the guides' does (comments and names aside)."""
    known = KNOWN_UNITS.get(copy.path.name)
    return known is not None and _unit_directives(copy.content) == known


def _log_moves(mapped: Iterable[Mapped], found: HandMade) -> list[PurePosixPath]:
    """Log configurations only the hand-made workers used (never main's), in /etc/matrix-synapse."""
    used = {str(m.path) for m in mapped}
    moves = []
    for worker in found.workers:
        if str(worker.path) not in used:
            continue
        log = found.log_configs.get(str(worker.path))
        if log is None or "/" + str(log) == found.main_log_config or log in moves:
            continue
        if log.parent in (paths.SYNAPSE_ETC, paths.SYNAPSE_ETC / "logconf.d") or \
                paths.SYNAPSE_ETC in log.parents:
            moves.append(log)
    return moves


def adopt(found: HandMade) -> Adoption:
    """The take-over of what ``found`` holds: every blocker is listed, none stops the look."""
    blockers: list[str] = []
    notes: list[str] = []
    mapped = [m for m in (map_worker(w, found.shared, blockers) for w in found.workers) if m]
    names = [w.name for w in found.workers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        blockers.append(f"worker name {name!r} is given by more than one file in "
                        f"/{paths.WORKERS_DIR}; give each worker its own name")
    counts: dict[str, int] = {}
    for item in mapped:
        for role in item.roles:
            counts[role] = counts.get(role, 0) + 1
    for role, count in counts.items():
        if count > 1 and not ROLES[role].scales:
            holders = [m.name for m in mapped if role in m.roles]
            blockers.append(f"{', '.join(holders)} each take the {role!r} duty, which Synapse "
                            "allows only one worker; keep one of them")
    for key, modern in LEGACY_CONFLICTING.items():
        role = next(r for r in ROLES.values() if r.duty and r.duty.key == modern)
        if key in found.shared and role.name in counts:
            blockers.append(f"{key} is set in the Synapse configuration: with a generic worker "
                            f"holding {modern} (as the package runs {role.name!r}) Synapse "
                            f"refuses both; remove {key} from /{paths.HOMESERVER_YAML}")
    redis = _redis(found, blockers)
    moves = [m.path for m in mapped] + _log_moves(mapped, found)
    if found.redis_file is not None:
        others = sorted(set(found.redis_file) - {"redis"})
        if others:
            blockers.append(f"/{paths.REDIS_CONF_D} also sets {', '.join(others)}; this package "
                            f"writes that file: move those keys to /{paths.HOMESERVER_YAML}")
        moves.append(paths.REDIS_CONF_D)
    kept = []
    for copy in found.unit_copies:
        if guide_unit(copy):
            moves.append(copy.path)
        else:
            kept.append(copy.path)
    moves.extend(found.links)
    for index in superseded_listeners(found.listeners):
        listener = found.listeners[index]
        where = listener.get("path") or f"port {listener.get('port')}"
        notes.append(f"listener {index + 1} of your Synapse configuration (replication on "
                     f"{where}) is replaced by the package's in /{paths.SHARED_CONF}; "
                     f"/{paths.HOMESERVER_YAML} is not changed")
    overridden = sorted(k for k in ("instance_map", "stream_writers", *(
        r.duty.key for r in ROLES.values() if r.duty)) if k in found.shared)
    if overridden:
        notes.append(f"{', '.join(overridden)} of your Synapse configuration "
                     f"{'are' if len(overridden) > 1 else 'is'} overridden in "
                     f"/{paths.SHARED_CONF}; /{paths.HOMESERVER_YAML} is not changed")
    old_http = [str(l.get("path") or f"port {l.get('port')}") for w in found.workers
                for l in (w.config or {}).get("worker_listeners") or []
                if isinstance(l, Mapping) and _resources(l) - _PLUMBING]
    if old_http:
        notes.append(f"the hand-made workers' listeners ({', '.join(old_http)}) are gone: "
                     f"a web server routing to them must include "
                     f"/{paths.NGINX_SNIPPET} in its server block instead")
    stop = tuple(paths.WORKER_UNIT_TEMPLATE.format(name=w.path.stem) for w in found.workers)
    ordered = {role: counts[role] for role in ROLES if role in counts}
    return Adoption(tuple(mapped), ordered, redis, found.socket_dir_group,
                    tuple(dict.fromkeys(moves)), stop, tuple(kept), tuple(notes), tuple(blockers))


def beside_deployed(adoption: Adoption, deployed: Mapping[str, int]) -> Adoption:
    """The take-over on a host where the package already runs workers: the hand-made ones
    come on top of them (a role only one worker may hold cannot be held twice).

    >>> taken = adopt(HandMade(workers=(HandMadeWorker(PurePosixPath("w/p.yaml"),
    ...                                                {"worker_app": "synapse.app.pusher"}),)))
    >>> dict(beside_deployed(taken, {"sync": 2, "pusher": 1}).counts)
    {'sync': 2, 'pusher': 2}
    """
    counts = dict(deployed)
    blockers = list(adoption.blockers)
    for role, count in adoption.counts.items():
        if role in counts and not ROLES[role].scales:
            blockers.append(f"the package already runs the {role!r} worker, which Synapse allows "
                            f"only once, and a hand-made worker holds it too; remove one of them")
        counts[role] = counts.get(role, 0) + count
    ordered = {role: counts[role] for role in ROLES if role in counts}
    return replace(adoption, counts=ordered, blockers=tuple(blockers))


def describe(adoption: Adoption) -> list[str]:
    """What the take-over does, for the output."""
    lines = [f"hand-made worker {m.name} ({m.why}) is taken over as {' + '.join(m.roles)}"
             for m in adoption.workers]
    if adoption.redis is not None:
        lines.append(f"Redis kept as found: {adoption.redis.describe()}"
                     + (f" ({adoption.redis.socket})" if adoption.redis.socket else ""))
    lines.extend(adoption.notes)
    for kept in adoption.kept_units:
        lines.append(f"your /{kept} differs from the guide's, so it is kept; it shadows the "
                     f"package's unit: compare, then move it away yourself")
    return lines


def blocked_message(adoption: Adoption) -> str:
    return ("a hand-made worker setup is here, and the package cannot take it over: "
            + "; ".join(adoption.blockers))
