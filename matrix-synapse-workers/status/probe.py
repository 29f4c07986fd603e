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

import json
import os
import pwd
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..core import paths
from ..core.adoption import ADOPTED_DIR, ADOPTING_RECORD, KNOWN_UNITS
from ..debconf.answers import counts_from_workers, normalized_counts
from ..core.cluster import MAIN as CLUSTER_MAIN, main_topology_of
from ..core.dbconnections import pool_sizes
from ..core.errors import WorkersError
from ..system.hostfacts import merged_admin_config
from ..core.plan import Worker
from ..render.webserver import routing_paths
from ..core.webserver import WebServer
from ..system import webservers
from ..core.settings import RedisMode, Settings
from ..core.catalog import MAIN_CACHE_WEIGHT
from ..core.memory import memory_plan
from ..core.plan import parse_worker_name
from ..system.memoryfacts import rss_mib
from .model import (MAIN as MAIN_PROCESS, WORKER_HOST, ClusterFacts, MemoryFacts, ConfigFacts, DatabaseFacts, Expected, Facts, Health,
                    Process, NginxFacts, PathStat, PeerListener, RedisClient, RedisFacts, SecretFile,
                    UnitState, expected_processes, worker_process)
from ..system.synapseversion import installed_release
from ..system import applied, netprobe, statoverride
from ..core.vhost import Routing
from ..system.accounts import group_name, user_name
from ..core.topology import Address, Topology
from ..deployment import redis_settings_of, socket_group
from .clients import (TIMEOUT, debconf_answers, exposures, group_members, http_health, nginx_dump,
                      parse_ss, parse_ss_tcp, path_stat, probe_redis, run_quietly, unit_states)
from .deployed import (Deployed, Side, holds_address, cluster_workers, compare_files, desired_files,
                       listeners_match, local_workers, plan_here, reach_of, read_deployed, read_secret,
                       read_side, redis_location, settings_from, writers_elsewhere)

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
                        metrics=deployed.metrics, web_server=web, memory_budget=deployed.memory_budget)
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
        "ss": lambda: run_quietly(["ss", "-tpnH" if worker_host else "-xpnH"]),
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
            jobs["redis-auth"] = lambda: reach_of(netprobe.redis_auth(seen.private_redis, seen.redis_secret,
                                                                    timeout))
        if worker_host:
            jobs["replication"] = lambda: reach_of(
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
    elif settings.web_server is None:  # auto: the server deployed, as the apply keeps it
        settings = replace(settings, web_server=seen.settings.web_server)
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
        refused=applied.refusal(root),
        memory=memory_facts(root, seen, unit_map))


def memory_facts(root: Path, seen: Look, units: Mapping[str, UnitState]) -> MemoryFacts | str | None:
    """The budget as deployed, split as render splits it, and each running process's RSS."""
    facts = seen.host
    if facts is None:
        return None
    local = [p for p in seen.processes if not p.remote]
    weighted = []
    for process in local:
        parsed = parse_worker_name(process.name)
        weighted.append((process.name, MAIN_CACHE_WEIGHT if process.name == MAIN_PROCESS
                         else parsed.role.cache_weight if parsed else 1))
    try:
        plan = memory_plan(seen.deployed.memory_budget, weighted, jemalloc=facts.jemalloc is not None,
                           ram_mib=facts.memory_mib, reserved=facts.memory_reserved,
                           admin_caches=facts.admin_caches)
    except WorkersError as exc:
        return str(exc)
    rss = {}
    for process in local:
        state = units.get(process.unit)
        found = rss_mib(state.main_pid) if state is not None and state.main_pid else None
        if found is not None:
            rss[process.name] = found
    return MemoryFacts(plan.budget_mib, plan.source, plan.enforced,
                       {s.name: s.mib for s in plan.shares}, rss, plan.overridden)


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
        address_here = holds_address(own) if own else None
        listed = cluster.workers.get(side.label or "")
    else:
        address_here = holds_address(cluster.replication.host)
        listed = None
    return ClusterFacts(
        side.role, side.label, "", str(cluster.replication), str(cluster.redis), dict(cluster.addresses),
        tuple(listed) if listed is not None else None, address_here, directory, secrets)
