"""The looking half of ``matrix-synapse-workers status``: host -> :class:`status.Facts`.

Reads the deployed files, then asks systemd, every Synapse socket (GET
/health over HTTP/1.1 on AF_UNIX), Redis (RESP over its socket), ``ss``,
debconf and nginx, all at once in threads with short timeouts, so the whole
look stays well under two seconds with twenty workers.  Nothing here judges:
:mod:`status` turns the facts into verdicts.  Nothing here changes anything.

Over several machines the other side is asked too, in the same threads and
with the same one-second timeout, so an unreachable host costs one timeout,
not one per worker: on the main host each remote worker's /health over TCP
and Redis's private address with the password; on a worker host main's
replication listener (/health and the secret) and Redis with the password.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import socket
import stat as statmod
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

import yaml

from . import paths
from .answers import QUESTIONS, counts_from_workers, deployed_socket_group, from_answers, \
    normalized_counts
from .cluster import MAIN as CLUSTER_MAIN, Cluster, main_topology_of, plan_from_cluster, read_cluster
from .errors import WorkersError
from .dbconnections import pool_sizes
from .hostfacts import existing_worker_names, merged_admin_config, read_host_facts
from .plan import Plan, Worker, make_plan, remote_workers, split_worker_name
from .render import RenderedFile, dump_yaml, main_listeners, render
from .selection import select
from .redisserver import server_of_socket
from .settings import RedisMode, Settings, parse_redis
from .status import (MAIN_HOST, WORKER_HOST, ClusterFacts, ConfigFacts, DatabaseFacts, Expected, Facts, Health,
                     NginxFacts, PathStat, PeerListener, Reach, RedisClient, RedisFacts, SecretFile,
                     UnitState, expected_processes, worker_process)
from .system import netprobe
from .topology import Address, Topology

TIMEOUT = 1.0
APPLIED = paths.STATE_DIR / "applied"
STATOVERRIDE_DB = Path("/var/lib/dpkg/statoverride")
SYNAPSE_DIST_INFO = "opt/venvs/matrix-synapse/lib/python3*/site-packages/matrix_synapse-*.dist-info"
SYNAPSE_PACKAGE = "matrix-synapse-py3"


# --- small clients --------------------------------------------------------------


def _connect_unix(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def http_health(where: str | Address, timeout: float = TIMEOUT) -> Health:
    """GET /health over a UNIX socket (a path) or TCP (an :class:`Address`), HTTP/1.1,
    with X-Forwarded-For (Synapse needs it on sockets)."""
    request = (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 127.0.0.1\r\n"
               b"User-Agent: matrix-synapse-workers-status\r\nConnection: close\r\n\r\n")
    try:
        connection = (netprobe.connect(where, timeout) if isinstance(where, Address)
                      else _connect_unix(where, timeout))
        with connection as sock:
            sock.sendall(request)
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(8192)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
    except FileNotFoundError:
        return Health(error="socket missing")
    except ConnectionRefusedError:
        return Health(error="connection refused (nothing listens)")
    except socket.timeout:
        return Health(error=f"no answer within {timeout:g} s")
    except PermissionError:
        return Health(error="permission denied (run as root)")
    except OSError as exc:
        return Health(error=exc.strerror or str(exc))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0] if lines else "")
    if not match:
        return Health(error="not an HTTP answer")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _unchunk(body)
    return Health(int(match[1]), body.decode("utf-8", "replace"), headers.get("server", ""))


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return found is not None and len(body) >= int(found[1])


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


class RespError(Exception):
    pass


class Resp:
    """Just enough of the Redis protocol to ask a few questions."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")
        self.sock = sock

    def call(self, *words: str) -> Any:
        command = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
        self.sock.sendall(command.encode())
        return self._read()

    def _read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise RespError("connection closed")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RespError(f"unexpected reply {line[:20]!r}")


def parse_client_list(text: str) -> tuple[RedisClient, ...]:
    clients = []
    for line in text.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if "fd" in fields:
            clients.append(RedisClient(int(fields["fd"]), int(fields.get("sub", 0) or 0)
                                       + int(fields.get("psub", 0) or 0), fields.get("flags", ""),
                                       fields.get("addr", "")))
    return tuple(clients)


def probe_redis(config: Mapping[str, Any], timeout: float = TIMEOUT,
                password: str | None = None) -> tuple[str, int | None, tuple[RedisClient, ...]]:
    """(error, tcp port, clients) from the Redis conf.d/redis.yaml names.

    ``password``: read from its ``password_path`` by the caller; else its ``password``.
    """
    try:
        if config.get("path"):
            sock = _connect_unix(str(config["path"]), timeout)
        else:
            sock = socket.create_connection((str(config.get("host", "localhost")),
                                             int(config.get("port", 6379))), timeout)
    except OSError as exc:
        return exc.strerror or str(exc), None, ()
    with sock:
        resp = Resp(sock)
        try:
            password = password if password is not None else config.get("password")
            if password:
                resp.call("AUTH", str(password))
            resp.call("PING")
            clients = parse_client_list(resp.call("CLIENT", "LIST") or "")
        except (RespError, OSError) as exc:
            return _one_line(str(exc)), None, ()
        try:
            reply = resp.call("CONFIG", "GET", "port")
            port = int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None
        except (RespError, OSError, ValueError):
            port = None
    return "", port, clients


def parse_ss(text: str, server_path: str) -> dict[int, int]:
    """``ss -xpnH`` -> Redis server fd -> pid of the client at the other end."""
    server_fd_to_peer: dict[int, str] = {}
    inode_to_pid: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(None, 8)
        if len(fields) < 8 or fields[1] != "ESTAB":
            continue
        local, local_inode, peer_inode = fields[4], fields[5], fields[7]
        users = fields[8] if len(fields) > 8 else ""
        owner = re.search(r"pid=(\d+),fd=(\d+)", users)
        if owner is None:
            continue
        if local == server_path:
            server_fd_to_peer[int(owner[2])] = peer_inode
        else:
            inode_to_pid[local_inode] = int(owner[1])
    return {fd: inode_to_pid[peer] for fd, peer in server_fd_to_peer.items() if peer in inode_to_pid}


def _endpoint(text: str) -> str:
    """``[fd00::2]:41234`` and ``fd00::2:41234`` -> one spelling, for joining ss to Redis."""
    host, _, port = text.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def parse_ss_tcp(text: str, clients: Sequence[RedisClient], server: Address) -> dict[int, int] | None:
    """``ss -tpnH`` on a worker host -> Redis server fd -> pid of the local client.

    Redis names each client by its end of the connection (``addr=``), which is
    the local end of this host's connection to Redis in ``ss``.  None when this
    host has connections to Redis but Redis knows none of them by that name
    (address translation on the way): they cannot be attributed.
    """
    by_endpoint: dict[str, int] = {}
    peer = _endpoint(str(server))
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or fields[0] != "ESTAB" or _endpoint(fields[4]) != peer:
            continue
        owner = re.search(r"pid=(\d+),fd=(\d+)", fields[5])
        if owner is not None:
            by_endpoint[_endpoint(fields[3])] = int(owner[1])
    found = {c.fd: by_endpoint[_endpoint(c.addr)] for c in clients
             if c.addr and _endpoint(c.addr) in by_endpoint}
    return None if by_endpoint and not found else found


def _run(argv: Sequence[str], timeout: float = 1.5) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def unit_states(units: Sequence[str]) -> dict[str, UnitState]:
    done = _run(["systemctl", "show", "--property=Id,ActiveState,SubState,MainPID", "--", *units])
    states: dict[str, UnitState] = {}
    if done is None or done.returncode != 0:
        return states
    for block, unit in zip(done.stdout.strip().split("\n\n"), units):
        values = dict(line.partition("=")[::2] for line in block.splitlines())
        states[unit] = UnitState(values.get("ActiveState", "unknown"), values.get("SubState", ""),
                                 int(values.get("MainPID", "0") or 0))
    return states


def path_stat(path: str) -> PathStat:
    try:
        st = os.lstat(path)
    except OSError:
        return PathStat(False)
    return PathStat(True, statmod.S_ISSOCK(st.st_mode), _user(st.st_uid), _group(st.st_gid),
                    st.st_mode & 0o7777)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def group_members(groups: Sequence[str], users: Sequence[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in groups:
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            continue
        members = set(entry.gr_mem)
        for user in users:
            try:
                if pwd.getpwnam(user).pw_gid == entry.gr_gid:
                    members.add(user)
            except KeyError:
                pass
        found[name] = frozenset(members)
    return found


def debconf_answers() -> dict[str, str] | str:
    """Our debconf answers, or the reason they cannot be read."""
    done = _run(["debconf-show", paths.PACKAGE])
    if done is None:
        return "debconf-show is not available"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["debconf-show failed"])[-1]
    answers = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.lstrip("* ").partition(":")
        if sep:
            answers[key.strip()] = value.strip()
    return answers if answers else "no answers recorded"


def installed_version(root: Path) -> str | None:
    for found in sorted(root.glob(SYNAPSE_DIST_INFO)):
        return found.name[len("matrix_synapse-"):-len(".dist-info")]
    done = _run(["dpkg-query", "--show", "--showformat=${Version}", SYNAPSE_PACKAGE])
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    return None


def statoverride(path: str, db: Path = STATOVERRIDE_DB) -> tuple[str, str, int] | None:
    try:
        lines = db.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=3)
        if len(fields) == 4 and fields[3] == path:
            return fields[0], fields[1], int(fields[2], 8)
    return None


def nginx_dump() -> tuple[bool | None, str, frozenset[str]]:
    """(nginx -T passed, its messages, the files its configuration is made of)."""
    done = _run(["nginx", "-T"], timeout=1.5)
    if done is None:
        return None, "", frozenset()
    files = frozenset(re.findall(r"^# configuration file (.+):$", done.stdout, re.M))
    return done.returncode == 0, done.stderr, files


# --- the deployed configuration -------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    workers: tuple[str, ...]
    redis_config: Mapping[str, Any]
    recorded_workers: str | None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def read_deployed(root: Path) -> Deployed:
    data = _read_yaml(root / paths.REDIS_CONF_D)
    redis = data.get("redis") if isinstance(data, dict) else None
    recorded = None
    try:
        for line in (root / APPLIED).read_text(encoding="utf-8").splitlines():
            if line.startswith("workers="):
                recorded = line.partition("=")[2]
    except OSError:
        pass
    return Deployed(existing_worker_names(root), redis if isinstance(redis, dict) else {}, recorded)


def redis_settings_of(config: Mapping[str, Any]):
    """The Redis choice conf.d/redis.yaml shows: our instance or guide edit (of Redis or
    Valkey, by the socket path), else an existing server."""
    path = config.get("path")
    ours = server_of_socket(path)
    if ours is not None:
        settings = parse_redis(ours[1], ours[0])
        if ours[1] == "guide" and config.get("password_path"):
            settings = replace(settings, password_path=PurePosixPath(config["password_path"]))
        return settings
    if path:
        return parse_redis(f"unix:{path}")
    return parse_redis(f"{config.get('host', 'localhost')}:{config.get('port', 6379)}")


def redis_location(config: Mapping[str, Any]) -> str:
    if config.get("path"):
        return f"unix:{config['path']}"
    if config.get("host") or config.get("port"):
        return f"{config.get('host', 'localhost')}:{config.get('port', 6379)}"
    return ""


def settings_from(answers: Mapping[str, str] | None, deployed: Deployed,
                  group: str, topology: Topology = Topology()) -> tuple[Settings, str | None, str]:
    """(settings, the workers the answers ask for, why the answers are unusable).

    On a worker host the answers choose no workers (cluster.yaml does): None.
    """
    fallback = Settings(socket_group=group, redis=redis_settings_of(deployed.redis_config),
                        topology=topology)
    if answers is None:
        return fallback, None, ""
    try:
        raw = [answers.get(q, "") for q in QUESTIONS]
        selection, settings = from_answers(*raw)
    except WorkersError as exc:
        return fallback, None, str(exc)
    # The answers do not say which server runs (what is installed does) nor hold the
    # guide-mode password file: those come from what is deployed.
    if settings.redis.mode is fallback.redis.mode:
        settings = replace(settings, redis=replace(settings.redis.with_server(fallback.redis.server),
                                                   password_path=fallback.redis.password_path))
    if selection is None:
        return settings, None, ""
    return settings, normalized_counts(selection.counts), ""


def compare_files(root: Path, rendered: Sequence[RenderedFile]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    missing, drifted = [], []
    for item in rendered:
        target = root / item.path
        try:
            if target.read_text(encoding="utf-8") != item.content:
                drifted.append(f"/{item.path}")
        except FileNotFoundError:
            missing.append(f"/{item.path}")
        except (OSError, UnicodeDecodeError):
            drifted.append(f"/{item.path}")
    return tuple(missing), tuple(drifted)


def listeners_match(root: Path, facts: Any, replication: Address | None = None) -> bool | None:
    data = _read_yaml(root / paths.SHARED_CONF)
    if not isinstance(data, dict):
        return None
    listeners = (main_listeners(facts, remote_replication=replication) if replication is not None
                 else main_listeners(facts))
    wanted = yaml.safe_load(dump_yaml({"listeners": listeners}))["listeners"]
    return data.get("listeners") == wanted


def _ours(item: RenderedFile) -> bool:
    if item.path in (paths.REPLICATION_SECRET, paths.REDIS_PASSWORD):
        return False  # random content, written once: nothing to compare against
    return item.path.parts[:2] == paths.SYNAPSE_ETC.parts or item.path.parts[:2] == paths.NGINX_DIR.parts


def desired_files(root: Path, deployed: Deployed, settings: Settings,
                  side: "Side | None" = None) -> tuple[Any, tuple[RenderedFile, ...]]:
    """(host facts, the files the package would write now for the workers on disk).

    A worker host renders the plan cluster.yaml gives it; a main host the
    workers on disk plus the worker hosts of its topology.
    """
    facts = read_host_facts(root)
    if side is not None and side.role == WORKER_HOST:
        if side.plan is None:
            raise WorkersError(side.error or f"/{paths.CLUSTER_FILE} is not usable")
        plan = side.plan
    else:
        topology = settings.topology
        spec = normalized_counts(counts_from_workers(deployed.workers))
        if spec:
            plan = make_plan(select(workers=spec), facts, topology)
        else:
            plan = Plan(remote_workers(topology), topology.replication)
    return facts, tuple(f for f in render(plan, facts, settings) if _ours(f))


# --- several machines --------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """Which host this is: one machine, the main host of several, or a worker host."""

    role: str = MAIN_HOST
    label: str | None = None
    cluster: Cluster | None = None
    #: Why the worker-host mark or cluster.yaml cannot be used.
    error: str = ""
    #: Worker host: the deployment's plan rendered for this host.
    plan: Plan | None = None

    @property
    def spans_hosts(self) -> bool:
        return self.role == WORKER_HOST or self.cluster is not None or bool(self.error)


def read_side(root: Path) -> Side:
    try:
        label = (root / paths.WORKER_HOST_MARK).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not (root / paths.CLUSTER_FILE).exists():
            return Side()
        try:
            return Side(MAIN_HOST, cluster=read_cluster(root))
        except WorkersError as exc:
            return Side(MAIN_HOST, error=str(exc))
    except OSError as exc:
        return Side(WORKER_HOST, error=f"/{paths.WORKER_HOST_MARK} cannot be read: {exc.strerror}")
    if not label:
        return Side(WORKER_HOST, error=f"/{paths.WORKER_HOST_MARK} names no host: run: "
                                       f"dpkg-reconfigure {paths.PACKAGE}")
    try:
        cluster = read_cluster(root)
    except WorkersError as exc:
        return Side(WORKER_HOST, label, error=str(exc))
    try:
        plan = plan_from_cluster(cluster, label)
    except WorkersError:
        plan = None  # the verdict names the missing label from the cluster's hosts
    return Side(WORKER_HOST, label, cluster, plan=plan)


def cluster_workers(cluster: Cluster, label: str | None) -> tuple[Worker, ...]:
    """Workers cluster.yaml gives host ``label`` (None: every worker host)."""
    found = []
    for host, names in cluster.workers.items():
        if host == CLUSTER_MAIN or (label is not None and host != label):
            continue
        for name in names:
            parsed = split_worker_name(name)
            if parsed is not None:
                found.append(Worker(name, parsed[0], parsed[1], host, cluster.addresses.get(host)))
    return tuple(found)


def writers_elsewhere(side: Side) -> tuple[tuple[Worker, Address], ...]:
    """Stream writers on other hosts whose replication listeners this host's processes use."""
    cluster = side.cluster
    if cluster is None:
        return ()
    if side.role == WORKER_HOST:
        workers = side.plan.workers if side.plan is not None else ()
    else:
        workers = cluster_workers(cluster, None)
    found = []
    for worker in workers:
        if worker.host == side.label:
            continue  # this host's own
        address = worker.replication_address(cluster.replication)
        if address is not None:
            found.append((worker, address))
    return tuple(found)


def local_workers(names: Sequence[str], side: Side) -> tuple[Worker, ...]:
    """A worker host's workers on disk, at the address cluster.yaml gives the host."""
    address = side.cluster.addresses.get(side.label or "") if side.cluster is not None else None
    found = []
    for name in names:
        parsed = split_worker_name(name)
        if parsed is not None:
            found.append(Worker(name, parsed[0], parsed[1], parsed[2] or side.label,
                                address if address else None))
    return tuple(found)


def read_secret(root: Path, relative: Any) -> tuple[SecretFile, str | None]:
    """(what the status shows of a secret file, its content when readable and not empty)."""
    shown = f"/{relative}"
    path = root / relative
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return SecretFile(shown, PathStat(False)), None
    except PermissionError:
        return SecretFile(shown, None, "its directory is closed to this user (run as root)"), None
    except OSError as exc:
        return SecretFile(shown, None, exc.strerror or str(exc)), None
    stat = PathStat(True, False, _user(st.st_uid), _group(st.st_gid), st.st_mode & 0o7777)
    try:
        content = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        return SecretFile(shown, stat, "not readable by this user (run as root)"), None
    except (OSError, UnicodeDecodeError) as exc:
        return SecretFile(shown, stat, str(exc)), None
    if not content:
        return SecretFile(shown, stat, "empty"), None
    return SecretFile(shown, stat), content


def _one_line(text: str, limit: int = 200) -> str:
    """A peer's answer quoted in a row: its first line, not a whole HTTP header block."""
    return (text.strip().splitlines() or [""])[0][:limit]


#: How netprobe's details tell a refusal by the right server from anything else
#: that answered: main's 500 to a wrong secret, Redis's own errors to a wrong password.
_REFUSALS = ("refuses the replication secret", "WRONGPASS", "invalid password", "invalid username-password")


def _reach(probe: netprobe.Probe) -> Reach:
    # netprobe says "unreachable" when nothing answered; anything else was an answer.
    reached = probe.ok or "unreachable" not in probe.detail
    refused = not probe.ok and any(word in probe.detail for word in _REFUSALS)
    return Reach(probe.ok, _one_line(probe.detail), reached, refused)


def _address_here(host: str) -> bool | None:
    try:
        return netprobe.is_local_address(host)
    except (OSError, ValueError):
        return None


# --- all of it ------------------------------------------------------------------


def _redis_password(root: Path, config: Mapping[str, Any]) -> tuple[str | None, str]:
    """(the password conf.d/redis.yaml gives Synapse, why it cannot be read)."""
    if config.get("password"):
        return str(config["password"]), ""
    if not config.get("password_path"):
        return None, ""
    path = root / str(config["password_path"]).lstrip("/")
    try:
        return path.read_text(encoding="utf-8").strip(), ""
    except PermissionError:
        return None, f"{config['password_path']} is not readable by this user (run as root)"
    except OSError as exc:
        return None, f"{config['password_path']}: {exc.strerror or exc}"


def _address(text: str) -> Address | None:
    host, sep, port = text.rpartition(":")
    return Address(host.strip("[]"), int(port)) if sep and port.isdigit() else None


PG_LIMIT = Path(__file__).with_name("pg_limit.py")


def database_facts(root: Path, processes: int) -> DatabaseFacts | None:
    """Ask PostgreSQL for its limit as Synapse would connect: its python, user and credentials."""
    from .apply import synapse_python  # the edge that finds Synapse's interpreter
    try:
        database = merged_admin_config(root)[0].get("database")
    except WorkersError:
        return None
    if not isinstance(database, dict) or database.get("name") != "psycopg2":
        return None
    cp_min, cp_max = pool_sizes(database)
    python = synapse_python(root)
    if python is None:
        return DatabaseFacts(processes, cp_min, cp_max, error="Synapse's python not found")
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(paths.SYNAPSE_USER)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        except KeyError:
            pass
    try:
        done = subprocess.run([str(python), str(PG_LIMIT)], input=json.dumps(database),
                              capture_output=True, text=True, timeout=15, cwd="/", **kwargs)
        found = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return DatabaseFacts(processes, cp_min, cp_max, error=str(exc)[:200])
    if "error" in found:
        return DatabaseFacts(processes, cp_min, cp_max, error=str(found["error"]))
    return DatabaseFacts(processes, cp_min, cp_max, max_connections=int(found["max_connections"]),
                         reserved=int(found["reserved"]))


def gather(root: Path = Path("/"), timeout: float = TIMEOUT) -> Facts:
    deployed = read_deployed(root)
    side = read_side(root)
    worker_host = side.role == WORKER_HOST
    cluster = side.cluster
    # Where each process answers /health: a socket path, an Address, or why it cannot be asked.
    targets: dict[str, str | Address] = {}
    if worker_host:
        processes = []
        for worker in local_workers(deployed.workers, side):
            process = worker_process(worker)
            if worker.address is None:  # no usable cluster.yaml: its address is unknown
                process = replace(process, http_socket=None, replication_socket=None, host=side.label)
            processes.append(process)
        expected_list = tuple(processes)
    else:
        expected_list = expected_processes(deployed.workers)
        if cluster is not None:
            expected_list += tuple(worker_process(w, remote=True) for w in cluster_workers(cluster, None))
    for process in expected_list:
        if process.http_socket is not None:
            targets[process.name] = str(process.http_socket)
        elif process.http_address and _address(process.http_address):
            targets[process.name] = _address(process.http_address)  # type: ignore[assignment]
    redis_config: Mapping[str, Any] = deployed.redis_config
    if worker_host and not redis_config and cluster is not None:
        redis_config = {"host": cluster.redis.host, "port": cluster.redis.port,
                        "password_path": "/" + str(paths.REDIS_PASSWORD)}
    redis_settings = redis_settings_of(redis_config)
    server = redis_settings.server
    redis_unit = None if worker_host else {RedisMode.DEDICATED: server.instance_unit,
                                           RedisMode.GUIDE: server.stock_unit}.get(
        redis_settings.mode) if redis_config else None
    password, password_error = _redis_password(root, redis_config)
    override = statoverride(str(paths.SOCKET_DIR))
    group = override[1] if override else deployed_socket_group(root)

    # nginx files do not depend on the answers: known before anything is asked.
    topology = main_topology_of(cluster) if cluster is not None and not worker_host else Topology()
    first_settings = Settings(socket_group=group, redis=redis_settings, topology=topology)
    try:
        host, first_render = desired_files(root, deployed, first_settings, side)
        config_error = ""
    except WorkersError as exc:
        host, first_render, config_error = None, (), str(exc)
    nginx_files = tuple(f"/{f.path}" for f in first_render if f.path.parts[:2] == paths.NGINX_DIR.parts)

    # The other side's secrets, read here (small files) so the probes can use them.
    secrets: tuple[SecretFile, ...] = ()
    secret = redis_secret = None
    if side.spans_hosts:
        replication_file, secret = read_secret(root, paths.REPLICATION_SECRET)
        password_file, redis_secret = read_secret(root, paths.REDIS_PASSWORD)
        secrets = (replication_file, password_file)

    # With our own instance, the stock one apt started is reported when it runs (never stopped).
    stock_unit = server.stock_unit if redis_unit == server.instance_unit else None
    units = [paths.TARGET_UNIT, *(p.unit for p in expected_list if not p.remote),
             *([redis_unit] if redis_unit else []), *([stock_unit] if stock_unit else []),
             *([paths.MAIN_UNIT] if worker_host else [])]
    socket_paths = [] if worker_host else [str(paths.SOCKET_DIR)] + [
        str(s) for p in expected_list for s in (p.http_socket, p.replication_socket) if s]
    jobs: dict[str, Callable[[], Any]] = {
        "units": lambda: unit_states(units),
        "redis": lambda: probe_redis(redis_config, timeout, password) if redis_config and not password_error
        else (password_error, None, ()),
        "ss": lambda: _run(["ss", "-tpnH" if worker_host else "-xpnH"]),
        "debconf": debconf_answers,
        "installed": lambda: installed_version(root),
    }
    if nginx_files:
        jobs["nginx"] = nginx_dump
    if not worker_host:
        jobs["database"] = lambda: database_facts(root, len(expected_list))
    for name, target in targets.items():
        jobs[f"health:{name}"] = partial(http_health, target, timeout)
    # Redis's private address: on a worker host the one its workers use (conf.d/redis.yaml),
    # on the main host the one cluster.yaml gives the worker hosts.
    private_redis = cluster.redis if cluster is not None else None
    if worker_host and redis_settings.host and redis_settings.port:
        private_redis = Address(redis_settings.host, redis_settings.port)
    writers = writers_elsewhere(side)
    for worker, address in writers:
        jobs[f"writer:{worker.name}"] = partial(http_health, address, timeout)
    if cluster is not None:
        jobs["main"] = lambda: http_health(cluster.replication, timeout)
        if redis_secret is not None and private_redis is not None:
            jobs["redis-auth"] = lambda: _reach(netprobe.redis_auth(private_redis, redis_secret, timeout))
        if worker_host:
            jobs["replication"] = lambda: _reach(
                netprobe.replication_secret(cluster.replication, secret, timeout) if secret is not None
                else netprobe.tcp(cluster.replication, timeout))
    with ThreadPoolExecutor(max_workers=min(64, len(jobs))) as pool:
        futures: dict[str, Future[Any]] = {name: pool.submit(job) for name, job in jobs.items()}
        stats = {path: path_stat(path) for path in socket_paths}
        cluster_facts = _cluster_facts(root, side, secrets, deployed.workers)
        results = {name: future.result() for name, future in futures.items()}
    if cluster_facts is not None and cluster is not None:
        cluster_facts = replace(
            cluster_facts, redis=str(private_redis), main_health=results["main"],
            redis_reach=results.get("redis-auth"),
            writers=tuple(PeerListener(w.name, w.host or CLUSTER_MAIN, str(address), w.role.stream,
                                       results[f"writer:{w.name}"]) for w, address in writers),
            replication_reach=results.get("replication"), secret_tested=secret is not None)

    answers = results["debconf"] if isinstance(results["debconf"], dict) else None
    settings, answer_workers, answer_error = settings_from(answers, deployed, group, topology)
    if answers is None:
        answer_error = str(results["debconf"])
    web_user = settings.web_user if answers is not None else paths.DEFAULT_WEB_USER
    expected = Expected(
        processes=expected_list, socket_group=group, web_user=web_user,
        dir_owner=override[0] if override else paths.SYNAPSE_USER,
        dir_mode=override[2] if override else paths.SOCKET_DIR_MODE,
        needs_redis_group=redis_settings.mode in (RedisMode.DEDICATED, RedisMode.GUIDE),
        redis_group=server.user)

    missing: tuple[str, ...] = ()
    drifted: tuple[str, ...] = ()
    match: bool | None = None
    if host is not None:
        try:
            _, rendered = desired_files(root, deployed, settings, side) if answers else (host, first_render)
            missing, drifted = compare_files(root, rendered)
            if not worker_host:
                match = listeners_match(root, host, cluster.replication if cluster is not None else None)
        except WorkersError as exc:
            config_error = str(exc)
    config = ConfigFacts(
        disk_workers=normalized_counts(counts_from_workers(deployed.workers)),
        answer_workers=answer_workers, answer_error=answer_error,
        recorded_workers=deployed.recorded_workers, drifted=drifted, missing=missing,
        listeners_match=match, error=config_error)

    error, tcp_port, clients = results["redis"]
    ss = results["ss"]
    client_pids = None
    if ss is not None and ss.returncode == 0 and os.geteuid() == 0:
        if redis_settings.socket is not None and not worker_host:
            client_pids = parse_ss(ss.stdout, str(redis_settings.socket))
        elif worker_host and redis_settings.host and redis_settings.port and not error:
            client_pids = parse_ss_tcp(ss.stdout, clients, Address(redis_settings.host, redis_settings.port))
    redis = RedisFacts(
        location=redis_location(redis_config), unit=redis_unit, socket=redis_settings.socket,
        socket_stat=path_stat(str(redis_settings.socket)) if redis_settings.socket else None,
        error=error, tcp_port=tcp_port, clients=clients, client_pids=client_pids,
        stock_unit=stock_unit if stock_unit and _active(results["units"], stock_unit) else None)

    nginx = NginxFacts()
    if nginx_files:
        test_ok, output, included = results["nginx"]
        nginx = NginxFacts(
            rendered=nginx_files, missing=tuple(f for f in nginx_files if not (root / f.lstrip('/')).exists()),
            not_included=tuple(f for f in nginx_files if test_ok is not None and f not in included),
            test_ok=test_ok, test_output=output)

    unit_map = results["units"]
    health = {p.name: results[f"health:{p.name}"] if p.name in targets else
              Health(error=f"its address is unknown ({side.error or 'no cluster.yaml'})") for p in expected_list}
    return Facts(
        expected=expected, units=unit_map, health=health,
        paths=stats,
        groups={} if worker_host else group_members([group, server.user], [paths.SYNAPSE_USER, web_user]),
        redis=redis, installed_version=results["installed"], config=config, nginx=nginx,
        target_unit=unit_map.get(paths.TARGET_UNIT), cluster=cluster_facts,
        database=results.get("database"))


def _active(units: Mapping[str, UnitState], unit: str) -> bool:
    state = units.get(unit)
    return state is not None and state.active == "active"


def _cluster_facts(root: Path, side: Side, secrets: tuple[SecretFile, ...],
                   disk_workers: Sequence[str]) -> ClusterFacts | None:
    """What is known of the other hosts before probing them (None: one machine)."""
    if not side.spans_hosts:
        return None
    cluster = side.cluster
    try:
        st = os.stat(root / paths.CLUSTER_DIR)
        directory: PathStat | None = PathStat(True, False, _user(st.st_uid), _group(st.st_gid),
                                              st.st_mode & 0o7777)
    except FileNotFoundError:
        directory = PathStat(False)
    except OSError:
        directory = None  # closed to this user
    if cluster is None:
        return ClusterFacts(side.role, side.label, side.error or "cluster.yaml not readable",
                            directory=directory, secrets=secrets)
    if side.role == WORKER_HOST:
        own = cluster.addresses.get(side.label or "")
        address_here = _address_here(own) if own else None
        listed = cluster.workers.get(side.label or "")
    else:
        address_here = _address_here(cluster.replication.host)
        listed = None
    return ClusterFacts(
        side.role, side.label, "", str(cluster.replication), str(cluster.redis), dict(cluster.addresses),
        tuple(listed) if listed is not None else None, address_here, directory, secrets)
