"""The looking half of ``matrix-synapse-workers status``: host -> :class:`status.Facts`.

Reads the deployed files, then asks systemd, every Synapse socket (GET
/health over HTTP/1.1 on AF_UNIX), Redis (RESP over its socket), ``ss``,
debconf and nginx, all at once in threads with short timeouts, so the whole
look stays well under two seconds with twenty workers.  Nothing here judges:
:mod:`.checks` turns the facts into verdicts.  Nothing here changes anything.

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
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ..core import paths
from ..core.adoption import ADOPTED_DIR, ADOPTING_RECORD, KNOWN_UNITS
from ..debconf.answers import QUESTIONS, counts_from_workers, from_answers, normalized_counts
from ..core.cluster import MAIN as CLUSTER_MAIN, Cluster, main_topology_of, plan_from_cluster
from ..system.clusterfile import read_cluster
from ..core.dbconnections import pool_sizes
from ..core.errors import WorkersError
from ..system.hostfacts import existing_worker_names, merged_admin_config, \
    metrics_deployed, read_host_facts
from ..core.plan import Plan, Worker, parse_worker_name
from ..render.files import RenderedFile, dump_yaml, main_listeners, nginx_paths, render
from ..render.webserver import routing_paths
from ..core.webserver import WebServer
from ..system import webservers
from ..core.settings import RedisMode, Settings
from .model import (MAIN_HOST, WORKER_HOST, ClusterFacts, ConfigFacts, DatabaseFacts, Expected, Exposure, Facts,
                    Health, Process,
                     NginxFacts, PathStat, PeerListener, Reach, RedisClient, RedisFacts, SecretFile,
                     UnitState, expected_processes, worker_process)
from ..system.synapseversion import installed_release
from ..system import applied, netprobe, nginx, statoverride
from ..core import vhost
from ..core.vhost import Routing
from ..system.accounts import group_name, user_name
from ..core.topology import Address, Topology
from ..deployment import read_deployment, redis_config, redis_settings_of, socket_group

TIMEOUT = 1.0


# --- small clients --------------------------------------------------------------


def http_health(where: str | Address, timeout: float = TIMEOUT) -> Health:
    """GET /health over a UNIX socket (a path) or TCP (an :class:`Address`), HTTP/1.1,
    with X-Forwarded-For (Synapse needs it on sockets)."""
    headers = {"X-Forwarded-For": "127.0.0.1", "User-Agent": "matrix-synapse-workers-status"}
    try:
        answer = netprobe.http_get(where, "/health", headers, timeout)
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
    except netprobe.NotHttp:
        return Health(error="not an HTTP answer")
    return Health(answer.status, answer.body, answer.headers.get("server", ""))


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
    where: str | Address = (str(config["path"]) if config.get("path") else
                            Address(str(config.get("host", "localhost")), int(config.get("port", 6379))))
    try:
        session = netprobe.RedisSession(where, timeout)
    except OSError as exc:
        return exc.strerror or str(exc), None, ()
    with session:
        try:
            password = password if password is not None else config.get("password")
            if password:
                session.call("AUTH", str(password))
            session.call("PING")
            clients = parse_client_list(session.call("CLIENT", "LIST") or "")
        except (netprobe.RespError, OSError) as exc:
            return _one_line(str(exc)), None, ()
        try:
            reply = session.call("CONFIG", "GET", "port")
            port = int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None
        except (netprobe.RespError, OSError, ValueError):
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


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")


def exposures(units: Sequence[str]) -> dict[str, Exposure]:
    """systemd's score of each unit's sandbox (one systemd-analyze for all) and its drop-ins."""
    if not units:
        return {}
    scored = _run(["systemd-analyze", "security", "--no-pager", *units], timeout=10)
    scores = {u: float(v) for u, v in _EXPOSURE.findall(scored.stdout)} if scored else {}
    shown = _run(["systemctl", "show", "--property=Id,DropInPaths", "--", *units])
    dropins: dict[str, tuple[str, ...]] = {}
    if shown is not None and shown.returncode == 0:
        for block in shown.stdout.strip().split("\n\n"):
            values = dict(line.partition("=")[::2] for line in block.splitlines())
            dropins[values.get("Id", "")] = tuple(values.get("DropInPaths", "").split())
    return {u: Exposure(scores.get(u), dropins.get(u, ())) for u in units}


def path_stat(path: str) -> PathStat:
    try:
        st = os.lstat(path)
    except OSError:
        return PathStat(False)
    return PathStat(True, statmod.S_ISSOCK(st.st_mode), user_name(st.st_uid), group_name(st.st_gid),
                    st.st_mode & 0o7777)


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


def nginx_dump() -> tuple[bool | None, str, frozenset[str], Routing | None]:
    """(nginx -T passed, its messages, the files its configuration is made of, how it routes
    the worker paths)."""
    done = nginx.dump(timeout=1.5)
    if done is None:
        return None, "", frozenset(), None
    files = frozenset(re.findall(r"^# configuration file (.+):$", done.stdout, re.M))
    routing = vhost.judge(done.stdout) if done.returncode == 0 else None
    return done.returncode == 0, done.stderr, files, routing


# --- the deployed configuration -------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    workers: tuple[str, ...]
    redis_config: Mapping[str, Any]
    recorded_workers: str | None
    #: Our shared file switches metrics on.
    metrics: bool = False


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def read_deployed(root: Path) -> Deployed:
    record = applied.read(root)
    return Deployed(existing_worker_names(root), redis_config(root),
                    record.workers if record is not None else None, metrics_deployed(root))


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
                        topology=topology, metrics=deployed.metrics)
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
    metrics = data.get("enable_metrics") is True
    listeners = (main_listeners(facts, remote_replication=replication, metrics=metrics)
                 if replication is not None else main_listeners(facts, metrics=metrics))
    wanted = yaml.safe_load(dump_yaml({"listeners": listeners}))["listeners"]
    return data.get("listeners") == wanted


def _ours(item: RenderedFile) -> bool:
    if item.path in (paths.REPLICATION_SECRET, paths.REDIS_PASSWORD):
        return False  # random content, written once: nothing to compare against
    return item.path.parts[:2] == paths.SYNAPSE_ETC.parts or item.path.parts[:2] == paths.NGINX_DIR.parts


def plan_here(root: Path, settings: Settings, side: "Side | None" = None,
              facts: Any = None) -> tuple[Any, Plan]:
    """(host facts, the plan for the workers on disk): a worker host's from cluster.yaml,
    a main host's the workers on disk plus the worker hosts of ``settings``' topology."""
    if side is not None and side.role == WORKER_HOST:
        facts = facts if facts is not None else read_host_facts(root)
        if side.plan is None:
            raise WorkersError(side.error or f"/{paths.CLUSTER_FILE} is not usable")
        return facts, side.plan
    deployment = read_deployment(root, settings=settings, facts=facts)
    return deployment.facts, deployment.plan


def desired_files(root: Path, settings: Settings, side: "Side | None" = None,
                  facts: Any = None) -> tuple[Any, tuple[RenderedFile, ...]]:
    """(host facts, the files the package would write now for the workers on disk)."""
    facts, plan = plan_here(root, settings, side, facts)
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
            parsed = parse_worker_name(name)
            if parsed is not None:
                found.append(parsed.worker(host, cluster.addresses.get(host)))
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
        parsed = parse_worker_name(name)
        if parsed is not None:
            found.append(parsed.worker(parsed.host or side.label, address if address else None))
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
    stat = PathStat(True, False, user_name(st.st_uid), group_name(st.st_gid), st.st_mode & 0o7777)
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


def _reach(probe: netprobe.Probe) -> Reach:
    return Reach(probe.ok, _one_line(probe.detail), probe.outcome is not netprobe.Outcome.UNREACHABLE,
                 probe.outcome is netprobe.Outcome.REFUSED)


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


#: Run with Synapse's python, like synapse_check.py beside it.
PG_LIMIT = Path(__file__).resolve().parent.parent / "pg_limit.py"


def database_facts(root: Path, processes: int) -> DatabaseFacts | None:
    """Ask PostgreSQL for its limit as Synapse would connect: its python, user and credentials."""
    from ..apply import synapse_python  # the edge that finds Synapse's interpreter
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


@dataclass(frozen=True)
class Look:
    """What the files say, before anything is probed: step 1 of :func:`gather`."""

    deployed: Deployed
    side: Side
    processes: tuple[Process, ...]
    #: Where each process answers /health: a socket path or an Address.
    targets: Mapping[str, str | Address]
    redis_config: Mapping[str, Any]
    redis_settings: Any
    redis_unit: str | None
    password: str | None
    password_error: str
    override: statoverride.Override | None
    group: str
    #: The topology the files give (the main host's cluster.yaml).
    topology: Topology
    #: The settings the files give: what the files are judged against without answers.
    settings: Settings
    #: The host's Synapse configuration, or why it cannot be planned from.
    host: Any
    config_error: str
    #: Our nginx files, when this host renders them.
    nginx_files: tuple[str, ...]
    secrets: tuple[SecretFile, ...]
    secret: str | None
    redis_secret: str | None
    #: Redis's private address: a worker host's (conf.d/redis.yaml) or the one cluster.yaml gives.
    private_redis: Address | None
    writers: tuple[tuple[Worker, Address], ...]

    @property
    def worker_host(self) -> bool:
        return self.side.role == WORKER_HOST


def _expected(deployed: Deployed, side: Side) -> tuple[Process, ...]:
    if side.role == WORKER_HOST:
        processes = []
        for worker in local_workers(deployed.workers, side):
            process = worker_process(worker)
            if worker.address is None:  # no usable cluster.yaml: its address is unknown
                process = replace(process, http_socket=None, replication_socket=None, host=side.label)
            processes.append(process)
        return tuple(processes)
    found = expected_processes(deployed.workers)
    if side.cluster is not None:
        found += tuple(worker_process(w, remote=True) for w in cluster_workers(side.cluster, None))
    return found


def look(root: Path) -> Look:
    """Step 1: read the deployed files and plan from them (nothing rendered, nothing probed)."""
    deployed = read_deployed(root)
    side = read_side(root)
    worker_host, cluster = side.role == WORKER_HOST, side.cluster
    processes = _expected(deployed, side)
    targets: dict[str, str | Address] = {}
    for process in processes:
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
    redis_unit = None if worker_host or not redis_config else {
        RedisMode.DEDICATED: server.instance_unit, RedisMode.GUIDE: server.stock_unit}.get(redis_settings.mode)
    password, password_error = _redis_password(root, redis_config)
    override = statoverride.read(str(paths.SOCKET_DIR), root)
    group = socket_group(root)  # the one rule: an admin's statoverride wins
    topology = main_topology_of(cluster) if cluster is not None and not worker_host else Topology()
    # nginx files do not depend on the answers: known before anything is asked.
    web = webservers.deployed(root) or WebServer.NGINX
    settings = Settings(socket_group=group, redis=redis_settings, topology=topology,
                        metrics=deployed.metrics, web_server=web)
    try:
        host, plan = plan_here(root, settings, side)
        config_error = ""
    except WorkersError as exc:
        host, plan, config_error = None, None, str(exc)
    nginx_files = tuple(f"/{p}" for p in routing_paths(web, plan)) if plan is not None else ()
    # The other side's secrets, read here (small files) so the probes can use them.
    secrets: tuple[SecretFile, ...] = ()
    secret = redis_secret = None
    if side.spans_hosts:
        replication_file, secret = read_secret(root, paths.REPLICATION_SECRET)
        password_file, redis_secret = read_secret(root, paths.REDIS_PASSWORD)
        secrets = (replication_file, password_file)
    private_redis = cluster.redis if cluster is not None else None
    if worker_host and redis_settings.host and redis_settings.port:
        private_redis = Address(redis_settings.host, redis_settings.port)
    return Look(deployed, side, processes, targets, redis_config, redis_settings, redis_unit, password,
                password_error, override, group, topology, settings, host, config_error, nginx_files,
                secrets, secret, redis_secret, private_redis, writers_elsewhere(side))


def probes(root: Path, seen: Look, timeout: float) -> dict[str, Callable[[], Any]]:
    """Step 2: every question to ask the system and the other hosts, by name."""
    worker_host, cluster = seen.worker_host, seen.side.cluster
    stock = stock_unit(seen)
    units = [paths.TARGET_UNIT, *(p.unit for p in seen.processes if not p.remote),
             *([seen.redis_unit] if seen.redis_unit else []), *([stock] if stock else []),
             *([paths.MAIN_UNIT] if worker_host else [])]
    jobs: dict[str, Callable[[], Any]] = {
        "units": lambda: unit_states(units),
        "redis": lambda: probe_redis(seen.redis_config, timeout, seen.password)
        if seen.redis_config and not seen.password_error else (seen.password_error, None, ()),
        "ss": lambda: _run(["ss", "-tpnH" if worker_host else "-xpnH"]),
        "debconf": debconf_answers,
        "exposure": lambda: exposures([p.unit for p in seen.processes if not p.remote]),
        "installed": lambda: installed_release(root),
    }
    if seen.nginx_files:
        web = webservers.deployed(root) or WebServer.NGINX
        jobs["nginx"] = nginx_dump if web is WebServer.NGINX else partial(
            webservers.dump, web, root, seen.nginx_files)
    if not worker_host:
        jobs["database"] = lambda: database_facts(root, len(seen.processes))
    for name, target in seen.targets.items():
        jobs[f"health:{name}"] = partial(http_health, target, timeout)
    for worker, address in seen.writers:
        jobs[f"writer:{worker.name}"] = partial(http_health, address, timeout)
    if cluster is not None:
        jobs["main"] = lambda: http_health(cluster.replication, timeout)
        if seen.redis_secret is not None and seen.private_redis is not None:
            jobs["redis-auth"] = lambda: _reach(netprobe.redis_auth(seen.private_redis, seen.redis_secret,
                                                                    timeout))
        if worker_host:
            jobs["replication"] = lambda: _reach(
                netprobe.replication_secret(cluster.replication, seen.secret, timeout)
                if seen.secret is not None else netprobe.tcp(cluster.replication, timeout))
    return jobs


def config_facts(root: Path, seen: Look, debconf: dict[str, str] | str) -> tuple[ConfigFacts, Settings]:
    """Step 4: the files as the answers (or, without them, the files) would have them,
    rendered once, against what is there."""
    answers = debconf if isinstance(debconf, dict) else None
    settings, answer_workers, answer_error = settings_from(answers, seen.deployed, seen.group, seen.topology)
    if answers is None:
        answer_error = str(debconf)
        settings = seen.settings
    config_error = seen.config_error
    missing: tuple[str, ...] = ()
    drifted: tuple[str, ...] = ()
    match: bool | None = None
    if seen.host is not None:
        try:
            _, rendered = desired_files(root, settings, seen.side, seen.host)
            missing, drifted = compare_files(root, rendered)
            if not seen.worker_host:
                cluster = seen.side.cluster
                match = listeners_match(root, seen.host, cluster.replication if cluster is not None else None)
        except WorkersError as exc:
            config_error = str(exc)
    return ConfigFacts(
        disk_workers=normalized_counts(counts_from_workers(seen.deployed.workers)),
        answer_workers=answer_workers, answer_error=answer_error,
        recorded_workers=seen.deployed.recorded_workers, drifted=drifted, missing=missing,
        listeners_match=match, error=config_error), settings


def stock_unit(seen: Look) -> str | None:
    """With our own instance, the server's stock instance apt started: reported when it runs
    (never stopped by us)."""
    server = seen.redis_settings.server
    return server.stock_unit if seen.redis_unit == server.instance_unit else None


def redis_facts(seen: Look, found: tuple[str, int | None, tuple[RedisClient, ...]],
                ss: subprocess.CompletedProcess[str] | None,
                units: Mapping[str, UnitState] | None = None) -> RedisFacts:
    error, tcp_port, clients = found
    settings = seen.redis_settings
    stock = stock_unit(seen)
    client_pids = None
    if ss is not None and ss.returncode == 0 and os.geteuid() == 0:
        if settings.socket is not None and not seen.worker_host:
            client_pids = parse_ss(ss.stdout, str(settings.socket))
        elif seen.worker_host and settings.host and settings.port and not error:
            client_pids = parse_ss_tcp(ss.stdout, clients, Address(settings.host, settings.port))
    return RedisFacts(
        location=redis_location(seen.redis_config), unit=seen.redis_unit, socket=settings.socket,
        socket_stat=path_stat(str(settings.socket)) if settings.socket else None,
        error=error, tcp_port=tcp_port, clients=clients, client_pids=client_pids,
        stock_unit=stock if stock and units and units.get(stock) is not None
        and units[stock].active == "active" else None)


def nginx_facts(root: Path, seen: Look,
                dump: tuple[bool | None, str, frozenset[str], Routing | None] | None) -> NginxFacts:
    if not seen.nginx_files or dump is None:
        return NginxFacts()
    test_ok, output, included, routing = dump
    return NginxFacts(
        server=(webservers.deployed(root) or WebServer.NGINX).value,
        rendered=seen.nginx_files,
        missing=tuple(f for f in seen.nginx_files if not (root / f.lstrip('/')).exists()),
        not_included=tuple(f for f in seen.nginx_files if test_ok is not None and f not in included),
        test_ok=test_ok, test_output=output, routing=routing)


def gather(root: Path = Path("/"), timeout: float = TIMEOUT) -> Facts:
    """Look at the files, probe everything at once, then judge the files once."""
    seen = look(root)
    jobs = probes(root, seen, timeout)
    socket_paths = [] if seen.worker_host else [str(paths.SOCKET_DIR)] + [
        str(s) for p in seen.processes for s in (p.http_socket, p.replication_socket) if s]
    # Step 3: the probes run together, while the local files are looked at.
    with ThreadPoolExecutor(max_workers=min(64, len(jobs))) as pool:
        futures: dict[str, Future[Any]] = {name: pool.submit(job) for name, job in jobs.items()}
        stats = {path: path_stat(path) for path in socket_paths}
        cluster_facts = _cluster_facts(root, seen.side, seen.secrets, seen.deployed.workers)
        results = {name: future.result() for name, future in futures.items()}
    if cluster_facts is not None and seen.side.cluster is not None:
        cluster_facts = replace(
            cluster_facts, redis=str(seen.private_redis), main_health=results["main"],
            redis_reach=results.get("redis-auth"),
            writers=tuple(PeerListener(w.name, w.host or CLUSTER_MAIN, str(address), w.role.stream,
                                       results[f"writer:{w.name}"]) for w, address in seen.writers),
            replication_reach=results.get("replication"), secret_tested=seen.secret is not None)
    config, settings = config_facts(root, seen, results["debconf"])
    web_user = settings.web_user if isinstance(results["debconf"], dict) else paths.DEFAULT_WEB_USER
    override = seen.override
    expected = Expected(
        processes=seen.processes, socket_group=seen.group, web_user=web_user,
        dir_owner=override.owner if override else paths.SYNAPSE_USER,
        dir_mode=override.mode if override else paths.SOCKET_DIR_MODE,
        needs_redis_group=seen.redis_settings.mode in (RedisMode.DEDICATED, RedisMode.GUIDE),
        redis_group=seen.redis_settings.server.user)
    unit_map = results["units"]
    health = {p.name: results[f"health:{p.name}"] if p.name in seen.targets else
              Health(error=f"its address is unknown ({seen.side.error or 'no cluster.yaml'})")
              for p in seen.processes}
    return Facts(
        expected=expected, units=unit_map, health=health, paths=stats,
        groups={} if seen.worker_host else group_members([seen.group, seen.redis_settings.server.user],
                                                         [paths.SYNAPSE_USER, web_user]),
        redis=redis_facts(seen, results["redis"], results["ss"], results["units"]),
        installed_version=results["installed"], config=config,
        nginx=nginx_facts(root, seen, results.get("nginx")),
        target_unit=unit_map.get(paths.TARGET_UNIT), cluster=cluster_facts,
        database=results.get("database"), exposure=results.get("exposure", {}),
        unfinished=tuple(f"/{p}" for p in (paths.PENDING_ANSWERS, paths.SERVICES_OWED, ADOPTING_RECORD)
                         if (root / p).exists()),
        unit_copies=tuple(f"/{p}" for p in (paths.SYSTEMD_ETC / name for name in KNOWN_UNITS)
                          if (root / p).is_file()),
        adopted=_adopted(root),
        refused=applied.refusal(root))


def _adopted(root: Path) -> tuple[tuple[str, int], ...]:
    """Each take-over's directory of hand-made files, and how many it holds."""
    base = root / ADOPTED_DIR
    if not base.is_dir():
        return ()
    return tuple((f"/{ADOPTED_DIR / d.name}", sum(1 for p in d.rglob("*") if not p.is_dir()))
                 for d in sorted(base.iterdir()) if d.is_dir())


def _cluster_facts(root: Path, side: Side, secrets: tuple[SecretFile, ...],
                   disk_workers: Sequence[str]) -> ClusterFacts | None:
    """What is known of the other hosts before probing them (None: one machine)."""
    if not side.spans_hosts:
        return None
    cluster = side.cluster
    try:
        st = os.stat(root / paths.CLUSTER_DIR)
        directory: PathStat | None = PathStat(True, False, user_name(st.st_uid), group_name(st.st_gid),
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
