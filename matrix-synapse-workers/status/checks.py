"""Pure: what the probes found -> rows of ok/info/warn/fail with one line of advice.

:mod:`.probe` does all the looking (systemd, sockets, Redis, nginx,
debconf) and hands over a :class:`Facts`; everything here is a function of
those facts, so every verdict can be tested with recorded facts.

Exit codes: 0 healthy, 1 degraded (warnings), 2 broken (a failure: main down,
Redis down, a process without replication, a stream without its writer).

When Synapse spans machines (:class:`ClusterFacts`), the main host also
judges each remote worker's /health over the private network, Redis's way in
for the worker hosts, and the shared secret files; a worker host judges its
own workers, its copy of the secrets, and whether main's replication and
Redis answer it and accept those secrets.
"""

from __future__ import annotations

from typing import Mapping

from ..core import dbconnections, paths, vhost
from ..core.vhost import Routing
from ..core.words import plural
from ..core.redisserver import REDIS, server_of_socket
from ..core.webserver import CHECK_TOOL, INCLUDE_ADVICE, WebServer
from .model import (FAIL, INFO, MAIN, MAIN_HOST, MAX_EXPOSURE, OK, WARN, WORKER_HOST, ClusterFacts, ConfigFacts,
                    DatabaseFacts, Facts, Health, PathStat, Process, RedisClient, Row, UnitState,
                    upstream_version)

RECONFIGURE = f"dpkg-reconfigure {paths.PACKAGE}"
RESTART_ALL = f"systemctl restart {paths.TARGET_UNIT}"
CLUSTER_FILE = f"/{paths.CLUSTER_FILE}"
COPY_AGAIN = (f"copy /{paths.CLUSTER_DIR} again from the main host, keeping owners and modes "
              f"(rsync -a MAINHOST:/{paths.CLUSTER_DIR}/ /{paths.CLUSTER_DIR}/), then {RESTART_ALL}")


def _mode(mode: int) -> str:
    return f"{mode:04o}" if mode > 0o777 else f"{mode:03o}"


# --- checks --------------------------------------------------------------------


def check_redis(facts: Facts) -> list[Row]:
    redis = facts.redis
    if not redis.location:
        return [Row("redis", "config", FAIL, f"/{paths.REDIS_CONF_D} names no Redis",
                    f"run: {RECONFIGURE}")]
    rows = []
    if redis.unit is not None:
        state = facts.units.get(redis.unit, UnitState("unknown"))
        if state.active != "active":
            rows.append(Row("redis", redis.unit, FAIL, state.active,
                            f"systemctl restart {redis.unit} (why it stopped: journalctl -u {redis.unit})"))
        else:
            rows.append(Row("redis", redis.unit, OK, "active"))
    if redis.socket is not None and (redis.socket_stat is None or not redis.socket_stat.exists):
        rows.append(Row("redis", str(redis.socket), FAIL, "socket missing",
                        f"restart Redis: systemctl restart {redis.unit or 'redis-server'}"))
    elif redis.error:
        rows.append(Row("redis", redis.location, FAIL, f"no answer: {redis.error}",
                        f"restart Redis: systemctl restart {redis.unit or 'redis-server'}"))
    else:
        tcp = redis.tcp_port
        cluster = facts.cluster
        private = cluster.redis if cluster is not None and cluster.role == MAIN_HOST else ""
        if private and redis.socket is not None and tcp is not None and tcp != 0 \
                and private.rpartition(":")[2] == str(tcp):
            rows.append(Row("redis", redis.location, OK,
                            f"answers on the socket, and on TCP port {tcp} for the worker hosts"))
        elif redis.socket is None:
            rows.append(Row("redis", redis.location, OK, "answers over TCP (an existing Redis)"))
        elif tcp is None:
            rows.append(Row("redis", redis.location, INFO, "answers; TCP port not readable (CONFIG refused)"))
        elif tcp != 0:
            ours = server_of_socket(redis.socket)
            where = (f"/{ours[0].instance_conf}" if ours is not None and ours[1] == "dedicated"
                     else "the Redis configuration")
            rows.append(Row("redis", redis.location, WARN, f"answers, but also listens on TCP port {tcp}",
                            f"set 'port 0' in {where} and restart Redis ({RECONFIGURE} does it for ours)"))
        else:
            rows.append(Row("redis", redis.location, OK, "answers on the socket, TCP closed (port 0)"))
    if redis.stock_unit is not None:
        rows.append(Row("redis", redis.stock_unit, INFO,
                        "also running: the package's stock instance (TCP 127.0.0.1:6379 as shipped), "
                        "which Synapse does not use",
                        f"if nothing else on this host uses it: systemctl disable --now {redis.stock_unit}"))
    return rows


def check_groups(facts: Facts) -> list[Row]:
    expected = facts.expected
    group = expected.socket_group
    members = facts.groups.get(group)
    if members is None:
        return [Row("groups", group, FAIL, "group does not exist", f"run: {RECONFIGURE}")]
    wanted = [paths.SYNAPSE_USER] + ([expected.web_user] if expected.web_user else [])
    missing = [user for user in wanted if user not in members]
    rows = []
    if missing:
        rows.append(Row("groups", group, FAIL if paths.SYNAPSE_USER in missing else WARN,
                        f"{', '.join(missing)} not in {group}",
                        f"adduser {missing[0]} {group}, then restart it ({RECONFIGURE} does both)"))
    else:
        rows.append(Row("groups", group, OK, f"{', '.join(wanted)} in {group}"))
    if expected.needs_redis_group:
        server_group = expected.redis_group
        redis_members = facts.groups.get(server_group, frozenset())
        if paths.SYNAPSE_USER not in redis_members:
            rows.append(Row("groups", server_group, FAIL, f"{paths.SYNAPSE_USER} not in {server_group}: "
                                                          "it cannot open the Redis socket",
                            f"adduser {paths.SYNAPSE_USER} {server_group}, then {RESTART_ALL}"))
        else:
            rows.append(Row("groups", server_group, OK, f"{paths.SYNAPSE_USER} in {server_group}"))
    return rows


def check_socket_dir(facts: Facts) -> Row:
    expected = facts.expected
    directory = str(paths.SOCKET_DIR)
    stat = facts.paths.get(directory, PathStat(False))
    want = f"{expected.dir_owner}:{expected.socket_group} {_mode(expected.dir_mode)}"
    if not stat.exists:
        return Row("sockets", directory, FAIL, "directory missing",
                   f"systemd-tmpfiles --create, then {RESTART_ALL}")
    have = f"{stat.owner}:{stat.group} {_mode(stat.mode)}"
    if have != want:
        return Row("sockets", directory, WARN, f"{have}, expected {want}",
                   f"run: {RECONFIGURE} (it sets owner, group and mode)")
    return Row("sockets", directory, OK, have)


def _socket_problems(facts: Facts) -> list[tuple[Process, str, str]]:
    """(process, socket, problem) for sockets of running processes with a wrong mode or group."""
    problems = []
    for process in facts.expected.processes:
        if process.remote or process.http_socket is None:
            continue  # it listens on TCP: no socket of its own
        if facts.units.get(process.unit, UnitState("unknown")).active != "active":
            continue  # a stopped process has no socket to judge; its row says so
        wanted = [(process.http_socket, paths.HTTP_SOCKET_MODE)]
        if process.replication_socket is not None:
            wanted.append((process.replication_socket, paths.REPLICATION_SOCKET_MODE))
        for path, mode in wanted:
            stat = facts.paths.get(str(path), PathStat(False))
            if not stat.exists:
                problems.append((process, str(path), "missing"))
            elif not stat.is_socket:
                problems.append((process, str(path), "not a socket"))
            elif stat.mode & 0o777 != mode:
                problems.append((process, str(path), f"mode {_mode(stat.mode & 0o777)}, expected {_mode(mode)}"))
            elif stat.group != facts.expected.socket_group:
                problems.append((process, str(path), f"group {stat.group}, expected "
                                                     f"{facts.expected.socket_group}"))
    return problems


def check_sockets(facts: Facts) -> list[Row]:
    rows = [check_socket_dir(facts)]
    problems = _socket_problems(facts)
    for process, path, problem in problems:
        rows.append(Row("sockets", path, WARN, problem,
                        f"Synapse sets it when it starts: systemctl restart {process.unit}"))
    if not problems:
        count = sum(1 + (p.replication_socket is not None) for p in facts.expected.processes
                    if p.http_socket is not None and not p.remote
                    and facts.units.get(p.unit, UnitState("unknown")).active == "active")
        rows.append(Row("sockets", "modes", OK, f"{plural(count, 'socket')}: http 0660, replication 0600"))
    return rows


def check_target(facts: Facts) -> Row:
    state = facts.target_unit or UnitState("unknown")
    if state.active != "active":
        return Row("units", paths.TARGET_UNIT, WARN, state.active,
                   f"systemctl start {paths.TARGET_UNIT}")
    return Row("units", paths.TARGET_UNIT, OK, "active")


def _redis_links(facts: Facts, pid: int) -> tuple[int, bool] | None:
    """(connections, subscribed) of one process, or None when not attributable."""
    redis = facts.redis
    if redis.client_pids is None or not redis.reachable:
        return None
    mine = [c for c in redis.clients if redis.client_pids.get(c.fd) == pid]
    return len(mine), any(c.subscribed for c in mine)


def check_process(facts: Facts, process: Process) -> Row:
    """Unit state, /health, version and Redis link of one process, in one row."""
    if process.remote:
        return check_remote_process(facts, process)
    state = facts.units.get(process.unit, UnitState("unknown"))
    health = facts.health.get(process.name, Health(error="not probed"))
    critical = process.name == MAIN or process.stream is not None
    down = FAIL if critical else WARN
    what = "main" if process.name == MAIN else (
        f"the only writer of the {process.stream} stream" if process.stream else "")
    logs = f"journalctl -u {process.unit}"
    if state.active != "active":
        verb = "restart" if state.active == "failed" else "start"
        detail = f"{process.unit} {state.active}" + (f" ({what})" if what else "")
        return Row("process", process.name, down, detail,
                   f"systemctl {verb} {process.unit} (why it stopped: {logs})")
    parts = ["active"]
    if not health.ok:
        got = health.error or f"HTTP {health.status} {health.body.strip()[:40]!r}"
        return Row("process", process.name, down, f"active, /health on {process.where}: {got}",
                   f"it runs but does not answer: see {logs}, then systemctl restart {process.unit}")
    parts.append("/health OK")
    if health.version:
        parts.append(f"Synapse {health.version}")
    links = _redis_links(facts, state.main_pid)
    if links is not None:
        connections, subscribed = links
        if not subscribed:
            return Row("process", process.name, FAIL,
                       ", ".join(parts) + f", no Redis replication subscription ({plural(connections, 'connection')})",
                       f"replication is not working for it: look for redis in {logs}, then "
                       f"systemctl restart {process.unit}")
        parts.append(f"Redis: {plural(connections, 'connection')}, subscribed")
    return Row("process", process.name, OK, ", ".join(parts))


def check_remote_process(facts: Facts, process: Process) -> Row:
    """A worker on a worker host, seen from the main host: /health over the private network."""
    health = facts.health.get(process.name, Health(error="not probed"))
    down = FAIL if process.stream is not None else WARN
    on = f"on {process.host} ({process.http_address})"
    if not health.ok:
        got = health.error or f"HTTP {health.status} {health.body.strip()[:40]!r}"
        what = f" (the only writer of the {process.stream} stream)" if process.stream else ""
        return Row("process", process.name, down, f"{on}: /health: {got}{what}",
                   f"on {process.host}: systemctl status {process.unit} (logs: journalctl -u "
                   f"{process.unit}); {paths.PACKAGE} status there checks that host's side")
    return Row("process", process.name, OK, f"{on}: /health OK"
               + (f", Synapse {health.version}" if health.version else ""))


def _here(facts: Facts, client: RedisClient) -> bool:
    """Whether a Redis client is a process of this host (and so counted against its units)."""
    cluster = facts.cluster
    if cluster is None:
        return True
    if cluster.role == WORKER_HOST:
        address = cluster.hosts.get(cluster.label or "")
        return address is not None and client.peer_host == address
    return client.peer_host is None or client.peer_host not in cluster.hosts.values()


def check_replication_total(facts: Facts) -> Row | None:
    """Without per-process attribution: at least one subscriber per running process."""
    redis = facts.redis
    if redis.client_pids is not None or not redis.reachable:
        return None
    cluster = facts.cluster
    if cluster is not None and cluster.role == WORKER_HOST and cluster.label not in cluster.hosts:
        return None  # this host's address is unknown: its connections cannot be told apart
    running = sum(1 for p in facts.expected.processes if not p.remote
                  and facts.units.get(p.unit, UnitState("unknown")).active == "active")
    subscribed = sum(1 for c in redis.clients if c.subscribed and _here(facts, c))
    if subscribed < running:
        return Row("redis", "replication", FAIL,
                   f"{plural(subscribed, 'replication subscription')} for {plural(running, 'running process', 'running processes')}",
                   f"look for redis in journalctl -u 'matrix-synapse*', then {RESTART_ALL}")
    return Row("redis", "replication", OK,
               f"{plural(subscribed, 'subscription')} for {plural(running, 'process', 'processes')} (run as root to see each process)")


def check_versions(facts: Facts) -> Row:
    """One Synapse version everywhere: the installed one on the main host, main's on a worker host."""
    seen: dict[str, list[str]] = {}
    for process in facts.expected.processes:
        version = facts.health.get(process.name, Health()).version
        if version:
            seen.setdefault(version, []).append(process.name)
    installed = upstream_version(facts.installed_version)
    cluster = facts.cluster
    if cluster is not None and cluster.role == WORKER_HOST:
        return _worker_host_versions(seen, installed, cluster)
    if not seen:
        return Row("versions", "synapse", INFO, "no process answered with its version"
                   + (f"; installed: {installed}" if installed else ""))
    reference = installed or _majority(seen)
    if set(seen) == {reference}:
        return Row("versions", "synapse", OK, f"every process runs {reference}"
                   + (", as installed" if installed else ""))
    spread = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(seen.items()))
    odd = sorted(name for v, names in seen.items() if v != reference for name in names)
    hosts = sorted({p.host for p in facts.expected.processes if p.remote and p.name in odd and p.host})
    advice = f"restart them after the upgrade: {RESTART_ALL}"
    if hosts:
        advice += f"; on {', '.join(hosts)}: install Synapse {reference} there too, then {RESTART_ALL}"
    return Row("versions", "synapse", WARN,
               spread + (f" (installed: {installed})" if installed else "")
               + f"; not running {reference}: {', '.join(odd)}", advice)


def _worker_host_versions(seen: Mapping[str, list[str]], installed: str | None,
                          cluster: ClusterFacts) -> Row:
    main = cluster.main_health.version if cluster.main_health is not None else None
    if main is None:
        # Main did not say: compare the workers here among themselves.
        note = "main's version not known (it did not answer)"
        if len(seen) <= 1:
            only = next(iter(seen), None)
            return Row("versions", "synapse", INFO,
                       (f"every worker here runs {only}" if only else "no worker answered with its version")
                       + (f", installed {installed}" if installed else "") + f"; {note}")
        reference = installed or _majority(seen)
    else:
        reference = main
        if installed and installed != main:
            return Row("versions", "synapse", WARN,
                       f"installed here: {installed}, main runs {main}",
                       f"install Synapse {main} on this host (the main host's version), then {RESTART_ALL}")
        note = f"as main does ({cluster.replication})"
    if not seen:
        return Row("versions", "synapse", INFO, f"no worker answered with its version; main runs {main}"
                   if main else "no worker answered with its version")
    if set(seen) == {reference}:
        return Row("versions", "synapse", OK, f"every worker here runs {reference}, {note}")
    spread = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(seen.items()))
    odd = sorted(name for v, names in seen.items() if v != reference for name in names)
    return Row("versions", "synapse", WARN,
               spread + (f" (main: {main})" if main else "") + f"; not running {reference}: {', '.join(odd)}",
               f"restart them: {RESTART_ALL}")


def _majority(seen: Mapping[str, list[str]]) -> str:
    return max(seen, key=lambda v: (MAIN in seen[v], len(seen[v])))


def check_config(facts: Facts) -> list[Row]:
    config = facts.config
    cluster = facts.cluster
    if cluster is not None and cluster.role == WORKER_HOST:
        return _worker_host_config(facts, cluster)
    if config.error:
        return [Row("config", "files", WARN, config.error, f"run: {RECONFIGURE}")]
    rows = []
    if config.answer_workers is None:
        if config.recorded_workers is not None and config.recorded_workers != config.disk_workers:
            rows.append(Row("config", "workers", WARN,
                            f"on disk {config.disk_workers or 'none'}, last applied "
                            f"{config.recorded_workers or 'none'}",
                            f"run: {RECONFIGURE}"))
        else:
            rows.append(Row("config", "workers", INFO, f"{config.disk_workers or 'none'}; debconf answers "
                                                       f"not readable{': ' + config.answer_error if config.answer_error else ''}"))
    elif config.answer_workers != config.disk_workers:
        rows.append(Row("config", "workers", WARN,
                        f"on disk {config.disk_workers or 'none'}, debconf answers {config.answer_workers}",
                        f"run: {RECONFIGURE}"))
    else:
        rows.append(Row("config", "workers", OK, f"{config.disk_workers} as the debconf answers say"))
    return rows + _file_rows(config)


def _file_rows(config: ConfigFacts) -> list[Row]:
    rows = []
    if config.listeners_match is False:
        rows.append(Row("config", f"/{paths.SHARED_CONF}", WARN,
                        f"its listeners differ from /{paths.HOMESERVER_YAML}'s (edited since the last apply)",
                        f"run: {RECONFIGURE}"))
    if config.missing or config.drifted:
        names = [*config.missing, *config.drifted]
        differ = "differs" if len(config.drifted) == 1 else "differ"
        detail = ((f"{len(config.missing)} missing, " if config.missing else "")
                  + f"{len(config.drifted)} {differ} from what the package writes: {', '.join(names[:4])}"
                  + (" ..." if len(names) > 4 else ""))
        rows.append(Row("config", "files", WARN, detail, f"run: {RECONFIGURE}"))
    elif config.listeners_match is not False:
        rows.append(Row("config", "files", OK, "as the package writes them"))
    return rows


def _worker_host_config(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """A worker host's workers come from cluster.yaml: the files on disk should match it."""
    config = facts.config
    here = sorted(p.name for p in facts.expected.processes)
    rows = []
    if cluster.listed_here is not None:
        listed = sorted(cluster.listed_here)
        if listed == here:
            rows.append(Row("config", "workers", OK, f"{', '.join(here) or 'none'}, as {CLUSTER_FILE} "
                                                     f"lists for {cluster.label}"))
        else:
            rows.append(Row("config", "workers", WARN,
                            f"on disk {', '.join(here) or 'none'}; {CLUSTER_FILE} lists "
                            f"{', '.join(listed) or 'none'} for {cluster.label}",
                            f"run: {RECONFIGURE} (it configures the workers {CLUSTER_FILE} gives this host)"))
    if config.error:
        return rows + [Row("config", "files", WARN, config.error, f"run: {RECONFIGURE}")]
    return rows + _file_rows(config)


def _reads(stat: PathStat, user: str, bits: tuple[int, int, int]) -> bool:
    """Whether ``user`` (in its own group only) gets ``bits`` (owner, group, other) on a file."""
    owner, group, other = bits
    if stat.owner == user:
        return bool(stat.mode & owner)
    if stat.group == user:
        return bool(stat.mode & group)
    return bool(stat.mode & other)


def _fix_secret(path: str, directory: bool = False) -> str:
    mode = "0750" if directory else "0640"
    return f"chown root:{paths.SYNAPSE_USER} {path} && chmod {mode} {path}"


def check_secrets(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """The cluster directory and its secret files: present, Synapse can read them, nobody else."""
    worker_host = cluster.role == WORKER_HOST
    missing_advice = COPY_AGAIN if worker_host else f"run: {RECONFIGURE} (it writes them)"
    directory = "/" + str(paths.CLUSTER_DIR)
    rows = []
    stat = cluster.directory
    if stat is not None and stat.exists and not _reads(stat, paths.SYNAPSE_USER, (0o100, 0o010, 0o001)):
        rows.append(Row("secrets", directory, FAIL,
                        f"{stat.owner}:{stat.group} {_mode(stat.mode)}: {paths.SYNAPSE_USER} cannot enter it",
                        _fix_secret(directory, directory=True)))
    for secret in cluster.secrets:
        stat = secret.stat
        if stat is None:
            rows.append(Row("secrets", secret.path, INFO, f"not checked: {secret.error or 'not readable'}"))
            continue
        if not stat.exists:
            rows.append(Row("secrets", secret.path, FAIL, "missing", missing_advice))
            continue
        have = f"{stat.owner}:{stat.group} {_mode(stat.mode)}"
        if not _reads(stat, paths.SYNAPSE_USER, (0o400, 0o040, 0o004)):
            rows.append(Row("secrets", secret.path, FAIL, f"{have}: {paths.SYNAPSE_USER} cannot read it",
                            _fix_secret(secret.path)))
        elif secret.error == "empty":
            rows.append(Row("secrets", secret.path, FAIL, f"{have}, empty", missing_advice))
        elif stat.mode & 0o007:
            rows.append(Row("secrets", secret.path, WARN, f"{have}: every user of this machine can "
                                                          f"{'read' if stat.mode & 0o004 else 'reach'} it",
                            _fix_secret(secret.path)))
        elif secret.error:
            rows.append(Row("secrets", secret.path, INFO, f"{have}; content not checked: {secret.error}"))
        else:
            rows.append(Row("secrets", secret.path, OK, have))
    return rows


def _not_ours(address: str, what: str) -> str:
    return (f"something else answers at {address}: check that it is {what} (the address comes from "
            f"{CLUSTER_FILE}; {RECONFIGURE} on the main host writes it)")


def _link_advice(address: str, what: str) -> str:
    host, _, port = address.rpartition(":")
    return (f"check the private link to the main host (ping {host.strip('[]')}; a firewall must let "
            f"this host reach TCP port {port}) and that {what} runs there")


def check_cluster(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """This host's place in a deployment over several machines, and the way to the other side."""
    worker_host = cluster.role == WORKER_HOST
    if cluster.error:
        advice = COPY_AGAIN if worker_host else f"run: {RECONFIGURE} (it writes {CLUSTER_FILE})"
        return [Row("cluster", CLUSTER_FILE, FAIL, cluster.error, advice)]
    rows = []
    if worker_host:
        address = cluster.hosts.get(cluster.label or "")
        if address is None:
            rows.append(Row("cluster", cluster.label or "?", FAIL,
                            f"{CLUSTER_FILE} has no worker host {cluster.label!r} (it has: "
                            f"{', '.join(sorted(cluster.hosts)) or 'none'})",
                            f"name this host on the main host ({RECONFIGURE} there), then {COPY_AGAIN}"))
        elif cluster.address_here is False:
            rows.append(Row("cluster", cluster.label or "?", FAIL,
                            f"{CLUSTER_FILE} gives {cluster.label} the address {address}, which is not "
                            "this machine's: its workers cannot listen on it",
                            f"give this host {address} on the private network, or correct the worker "
                            f"hosts on the main host ({RECONFIGURE} there) and copy the directory again"))
        else:
            rows.append(Row("cluster", cluster.label or "?", OK,
                            f"worker host at {address}; main at {cluster.replication}"))
    else:
        host = cluster.replication.rpartition(":")[0].strip("[]")
        if cluster.address_here is False:
            rows.append(Row("cluster", "main", FAIL,
                            f"the replication address {cluster.replication} is not this machine's: main "
                            "cannot listen on it, and worker hosts cannot reach it",
                            f"run: {RECONFIGURE} and give this host's private address"))
        else:
            labels = ", ".join(f"{label} ({address})" for label, address in sorted(cluster.hosts.items()))
            rows.append(Row("cluster", "main", OK, f"main host at {host}; worker hosts: {labels or 'none'}"))
    rows += check_secrets(facts, cluster)
    rows += _check_main_reach(facts, cluster)
    rows += _check_redis_reach(cluster)
    return rows


def _check_main_reach(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """GET /health on main's private replication address, and (worker host) the secret."""
    worker_host = cluster.role == WORKER_HOST
    rows = []
    health = cluster.main_health
    address = cluster.replication
    if health is not None:
        if health.ok:
            rows.append(Row("main", address, OK, "replication listener answers /health"
                            + (f", Synapse {health.version}" if health.version else "")))
        elif worker_host:
            got = health.error or f"HTTP {health.status}"
            rows.append(Row("main", address, FAIL, f"main's replication listener: {got}",
                            _link_advice(address, f"main ({paths.MAIN_UNIT})")))
        elif facts.units.get(paths.MAIN_UNIT, UnitState("unknown")).active == "active":
            got = health.error or f"HTTP {health.status}"
            rows.append(Row("main", address, FAIL,
                            f"worker hosts cannot reach main: its replication listener here: {got}",
                            f"run: {RECONFIGURE} (/{paths.SHARED_CONF} must list it), then "
                            f"systemctl restart {paths.MAIN_UNIT}"))
    reach = cluster.replication_reach
    if not worker_host or reach is None:
        return rows
    if reach.ok and cluster.secret_tested:
        rows.append(Row("replication", "secret", OK, "main accepts this host's replication secret"))
    elif reach.ok:
        rows.append(Row("replication", "secret", INFO, "main's replication listener answers; the secret "
                                                       "was not tested (its file is not readable)"))
    elif reach.refused:
        rows.append(Row("replication", "secret", FAIL, reach.detail,
                        f"the secret differs from the main host's: {COPY_AGAIN}"))
    elif reach.reached:
        rows.append(Row("replication", "secret", FAIL, reach.detail, _not_ours(address, "main's replication "
                                                                                        "listener")))
    elif health is not None and not health.ok:
        rows.append(Row("replication", "secret", INFO, "not tested: main is unreachable (above)"))
    else:
        rows.append(Row("replication", "secret", FAIL, reach.detail,
                        _link_advice(address, f"main ({paths.MAIN_UNIT})")))
    return rows


def _check_redis_reach(cluster: ClusterFacts) -> list[Row]:
    """Redis on main's private address, with the password worker hosts use."""
    reach = cluster.redis_reach
    if not cluster.redis:
        return []
    if reach is None:
        return [Row("redis", cluster.redis, INFO, "AUTH not tested: the password file is not readable")]
    if reach.ok:
        return [Row("redis", cluster.redis, OK, "accepts the password from "
                                                f"/{paths.REDIS_PASSWORD}")]
    # The main host's instance: named as Redis's (a worker host cannot see which server runs it).
    unit = REDIS.instance_unit
    if reach.reached and not reach.refused:
        advice = _not_ours(cluster.redis, f"the main host's Redis ({unit}, with its password)")
    elif cluster.role == WORKER_HOST:
        if reach.refused:
            advice = f"the password differs from the main host's: {COPY_AGAIN}"
        else:
            advice = _link_advice(cluster.redis, f"Redis ({unit})")
    elif reach.refused:
        advice = (f"the password file and Redis's /{REDIS.instance_auth_conf} differ: run: "
                  f"{RECONFIGURE}, then systemctl restart {unit}")
    else:
        advice = (f"Redis does not listen there: run: {RECONFIGURE} (it writes 'bind' in "
                  f"/{REDIS.instance_conf}), then systemctl restart {unit}")
    return [Row("redis", cluster.redis, FAIL, reach.detail, advice)]


def check_writers(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """Stream writers on other hosts: their replication listeners answer from here."""
    rows = []
    worker_host = cluster.role == WORKER_HOST
    for writer in cluster.writers:
        what = f"{writer.stream} stream" if writer.stream else "stream"
        if writer.health.ok:
            rows.append(Row("replication", writer.name, OK,
                            f"its replication listener on {writer.host} ({writer.address}) answers"))
            continue
        got = writer.health.error or f"HTTP {writer.health.status}"
        unit = paths.WORKER_UNIT_TEMPLATE.format(name=writer.name)
        port = writer.address.rpartition(":")[2]
        if worker_host:
            if cluster.main_health is None or not cluster.main_health.ok:
                continue  # main itself is unreachable: its row says so
            advice = (f"check the private link to {writer.host} (a firewall must let this host reach "
                      f"{writer.address}) and that {unit} runs there")
        else:
            if not facts.health.get(writer.name, Health()).ok:
                continue  # the worker itself does not answer: its process row says so
            advice = (f"on {writer.host}: a firewall must let the main host reach TCP port {port}; "
                      f"{paths.PACKAGE} status there checks the worker")
        rows.append(Row("replication", writer.name, FAIL,
                        f"its replication listener on {writer.host} ({writer.address}): {got}; the {what}'s "
                        "writes cannot reach it from here", advice))
    return rows


def check_remote_redis(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """Main host: each worker host's Redis connections, told apart by their address."""
    redis = facts.redis
    if not redis.reachable or not any(c.addr for c in redis.clients):
        return []
    rows = []
    for label, address in sorted(cluster.hosts.items()):
        mine = [c for c in redis.clients if c.peer_host == address]
        subscribed = sum(1 for c in mine if c.subscribed)
        answering = sum(1 for p in facts.expected.processes if p.remote and p.host == label
                        and facts.health.get(p.name, Health()).ok)
        detail = (f"{plural(len(mine), 'connection')} from {address}, {subscribed} subscribed, for "
                  f"{plural(answering, 'worker')} answering /health")
        if subscribed < answering:
            rows.append(Row("redis", label, FAIL, detail,
                            f"replication is not working for some of its workers: {paths.PACKAGE} "
                            f"status on {label} names them"))
        else:
            rows.append(Row("redis", label, OK, detail))
    return rows


def check_worker_host_redis(facts: Facts) -> list[Row]:
    """A worker host's own look at Redis: the connection the probes made, for the client list."""
    redis = facts.redis
    cluster = facts.cluster
    if redis.reachable or not redis.location or (
            cluster is not None and cluster.redis_reach is not None and not cluster.redis_reach.ok):
        return []  # reachable, or the row above says why not
    return [Row("redis", "clients", INFO, f"this host's Redis connections not counted: {redis.error}")]


def check_main_unit_absent(facts: Facts) -> Row:
    """On a worker host main must not run: it would be a second main of the same homeserver."""
    state = facts.units.get(paths.MAIN_UNIT, UnitState("unknown"))
    if state.active in ("active", "activating", "reloading"):
        return Row("units", paths.MAIN_UNIT, FAIL, f"{state.active} on a worker host: a second main process",
                   f"systemctl stop {paths.MAIN_UNIT}; the drop-in keeps it from starting while "
                   f"/{paths.WORKER_HOST_MARK} exists ({RECONFIGURE} writes both)")
    return Row("units", paths.MAIN_UNIT, OK, f"{state.active}: main runs on the main host")


def check_routing(routing: Routing) -> list[Row]:
    """Whether requests reach the workers as nginx really routes (:mod:`..core.vhost`)."""
    if routing.error:
        return [Row("nginx", "routing", WARN, routing.error)]
    rows = []
    if not routing.including:
        rows.append(Row("nginx", "include", FAIL, f"no server block includes {vhost.SNIPPET}: every "
                        "request goes to main", vhost.todo(routing)[0]))
    for shadow, advice in zip(routing.shadows, vhost.todo(routing)[0 if routing.including else 1:]):
        rows.append(Row("nginx", "shadowed", FAIL,
                        f"{shadow.location.where} '{shadow.location.text}' takes "
                        f"{plural(len(shadow.paths), 'worker path')} of {routing.checked} "
                        f"(e.g. {shadow.paths[0]}) before the snippet", advice))
    if routing.ok:
        names = ", ".join(s.where for s in routing.including)
        rows.append(Row("nginx", "routing", OK,
                        f"{plural(routing.checked, 'worker path')} reach the snippet in "
                        f"{plural(len(routing.including), 'server block')} ({names})"))
    return rows


def check_nginx(facts: Facts) -> list[Row]:
    nginx = facts.nginx
    if nginx.server != WebServer.NGINX.value:
        return check_web_server(facts)
    if not nginx.rendered:
        return [Row("nginx", "routing", INFO, "this version renders no nginx files: not checked")]
    rows = []
    if nginx.missing:
        rows.append(Row("nginx", "files", WARN, f"missing: {', '.join(nginx.missing)}", f"run: {RECONFIGURE}"))
    admin = "/" + str(paths.NGINX_ADMIN_SNIPPET)
    if admin in nginx.not_included:  # optional: only where admins reach the admin API
        rows.append(Row("nginx", "admin API", INFO, f"{admin} is not included",
                        "include it in the server block where admins reach /_synapse/admin "
                        "(the media admin API needs it once media workers run)"))
    # The snippet's include is judged with the routing, below.
    not_included = [f for f in nginx.not_included if f != admin
                    and (nginx.routing is None or f != vhost.SNIPPET)]
    if not_included:
        rows.append(Row("nginx", "include", WARN, f"not in nginx's configuration: {', '.join(not_included)}",
                        f"include {not_included[0]} in the context its first lines name, then "
                        f"{vhost.RELOAD.removeprefix('then: ')}"))
    if nginx.test_ok is False:
        first = next((line for line in nginx.test_output.splitlines() if "emerg" in line or "error" in line),
                     nginx.test_output.strip().splitlines()[-1] if nginx.test_output.strip() else "")
        rows.append(Row("nginx", "nginx -t", FAIL, first[:200] or "fails",
                        "fix what nginx -t reports; the running nginx keeps its old configuration until then"))
    elif nginx.test_ok is None:
        rows.append(Row("nginx", "nginx -t", INFO, "nginx not found: not tested"))
    if nginx.routing is not None:
        rows += check_routing(nginx.routing)
    elif not rows or all(r.status == INFO for r in rows):
        included = len(nginx.rendered) - len(nginx.not_included)
        rows.insert(0, Row("nginx", "routing", OK, f"{plural(included, 'file')} included"
                           + (", nginx -t passes" if nginx.test_ok else "")))
    return rows



def check_web_server(facts: Facts) -> list[Row]:
    """As :func:`check_nginx`, for Apache, Caddy or HAProxy in front."""
    web = facts.nginx
    server = WebServer(web.server)
    tool = CHECK_TOOL[server].replace("FILE", web.rendered[0] if web.rendered else "")
    rows = []
    if web.missing:
        rows.append(Row(web.server, "files", WARN, f"missing: {', '.join(web.missing)}", f"run: {RECONFIGURE}"))
    if web.not_included:
        rows.append(Row(web.server, "include", WARN,
                        f"not in {web.server}'s configuration: {', '.join(web.not_included)}",
                        INCLUDE_ADVICE[server].replace("FILE", web.not_included[0])))
    if web.test_ok is False:
        lines = web.test_output.strip().splitlines()
        first = next((line for line in lines if "rror" in line or "ALERT" in line), lines[-1] if lines else "")
        rows.append(Row(web.server, tool, FAIL, first[:200] or "fails",
                        f"fix what {tool} reports; the running {web.server} keeps its old configuration until then"))
    elif web.test_ok is None:
        rows.append(Row(web.server, tool, INFO, f"{web.server} not found: not tested"))
    if not rows:
        rows.append(Row(web.server, "routing", OK, f"{len(web.rendered)} files included, {tool} passes"))
    return rows

def check_sandbox(facts: Facts) -> list[Row]:
    """Each unit's exposure; a warning when a drop-in of the admin's has loosened it."""
    rows = []
    for unit, exposure in sorted(facts.exposure.items()):
        if exposure.score is None:
            rows.append(Row("sandbox", unit, INFO, "exposure not measured (systemd-analyze)"))
        elif exposure.score <= MAX_EXPOSURE:
            rows.append(Row("sandbox", unit, OK, f"exposure {exposure.score:.1f}"))
        else:
            foreign = exposure.foreign_dropins
            by = f", loosened by {', '.join(foreign)}" if foreign else ""
            rows.append(Row("sandbox", unit, WARN,
                            f"exposure {exposure.score:.1f}, above {MAX_EXPOSURE}{by}",
                            f"see `systemd-analyze security {unit}`; narrow or remove "
                            f"{'that drop-in' if foreign else 'the change'}, then "
                            f"systemctl daemon-reload and restart {unit}"))
    return rows


def check_unfinished(facts: Facts) -> list[Row]:
    """An apply killed half-way (power loss, a killed dpkg) leaves the host half-changed until
    it is finished; ``dpkg --configure -a`` does not rerun a killed dpkg-reconfigure."""
    if not facts.unfinished:
        return []
    return [Row("apply", "unfinished", WARN,
                f"an apply is running or was interrupted ({', '.join(facts.unfinished)} present)",
                f"unless one is running now: dpkg --configure -a, then {RECONFIGURE}")]


def check_refused(facts: Facts) -> list[Row]:
    """An install or reconfigure that found a host it cannot configure changed nothing and
    exited 0 (dpkg stays healthy): this row is where the admin sees it afterwards."""
    if not facts.refused:
        return []
    return [Row("apply", "not configured", WARN, f"not configured: {facts.refused}",
                f"once that is solved: {RECONFIGURE}")]


def check_hand_made(facts: Facts) -> list[Row]:
    """Unit copies of an admin's that shadow the package's sandboxed units, and where a
    take-over put the hand-made files it replaced."""
    rows = [Row("unit copy", copy, WARN, "your copy shadows the package's unit (and its sandbox)",
                f"compare it with /usr/lib/systemd/system/{copy.rsplit('/', 1)[-1]}, move it "
                "away, then: systemctl daemon-reload && systemctl restart matrix-synapse.target")
            for copy in facts.unit_copies]
    rows += [Row("take-over", directory, INFO, f"{count} hand-made files kept here (not used)")
             for directory, count in facts.adopted]
    return rows


def check_database(db: DatabaseFacts) -> Row:
    """The check an image build cannot make: do the pools fit in max_connections?"""
    subject = "connections"
    if db.max_connections is None or db.reserved is None:
        return Row("database", subject, WARN, f"PostgreSQL not asked: {db.error}",
                   dbconnections.unchecked(db.processes, cp_min=db.cp_min, cp_max=db.cp_max,
                                           reason="PostgreSQL did not answer"))
    found = dbconnections.verdict(db.processes, cp_min=db.cp_min, cp_max=db.cp_max,
                                  max_connections=db.max_connections, reserved=db.reserved)
    if found.error:
        return Row("database", subject, FAIL, "pools do not fit", found.error)
    if found.warning:
        return Row("database", subject, WARN, "pools may not fit under load", found.warning)
    return Row("database", subject, OK,
               f"{plural(db.processes, 'process', 'processes')} x cp_max {db.cp_max} = {db.processes * db.cp_max} "
               f"<= {db.max_connections - db.reserved} (max_connections {db.max_connections}, "
               f"{db.reserved} reserved)")


def evaluate(facts: Facts) -> list[Row]:
    """Every check, in the order a person reads them."""
    cluster = facts.cluster
    if cluster is not None and cluster.role == WORKER_HOST:
        return evaluate_worker_host(facts, cluster)
    rows = [*check_refused(facts), *check_unfinished(facts), *check_redis(facts), *check_groups(facts), *check_sockets(facts),
            check_target(facts)]
    if cluster is not None:
        rows += check_cluster(facts, cluster)
    rows += [check_process(facts, p) for p in facts.expected.processes]
    total = check_replication_total(facts)
    if total is not None:
        rows.append(total)
    if cluster is not None:
        rows += check_writers(facts, cluster)
        rows += check_remote_redis(facts, cluster)
    rows.append(check_versions(facts))
    rows += check_sandbox(facts)
    if facts.database is not None:
        rows.append(check_database(facts.database))
    rows += check_nginx(facts)
    rows += check_config(facts)
    rows += check_hand_made(facts)
    return rows


def evaluate_worker_host(facts: Facts, cluster: ClusterFacts) -> list[Row]:
    """A host that runs only workers: the way to main and Redis, and its own workers."""
    rows = [*check_refused(facts), *check_unfinished(facts), *check_cluster(facts, cluster)]
    rows += [check_main_unit_absent(facts), check_target(facts)]
    rows += [check_process(facts, p) for p in facts.expected.processes]
    rows += check_writers(facts, cluster)
    rows += check_worker_host_redis(facts)
    total = check_replication_total(facts)
    if total is not None:
        rows.append(total)
    rows.append(check_versions(facts))
    rows += check_sandbox(facts)
    rows.append(Row("main host", "sockets, nginx", INFO,
                    f"main, its sockets, nginx and Redis run on the main host ({cluster.replication or '?'}); "
                    f"{paths.PACKAGE} status there checks them"))
    rows += check_config(facts)
    return rows
