"""Pure: what the probes found -> rows of ok/info/warn/fail with one line of advice.

:mod:`.probe` does all the looking (systemd, sockets, Redis, nginx,
debconf) and hands over a :class:`Facts`; everything here is a function of
those facts, so every verdict can be tested with recorded facts.

The verdict (core/exitcodes): healthy, degraded (warnings), broken (a failure:
main down, Redis down, a process without replication, a stream without its writer).

When Synapse spans machines (:class:`ClusterFacts`), the main host also
judges each remote worker's /health over the private network, Redis's way in
for the worker hosts, and the shared secret files; a worker host judges its
own workers, its copy of the secrets, and whether main's replication and
Redis answer it and accept those secrets.
"""

from __future__ import annotations


from typing import Mapping

from ..core import dbconnections, paths
from ..core.words import plural
from ..core.redisserver import server_of_socket
from .model import (FAIL, INFO, MAIN, MAIN_HOST, MAX_EXPOSURE, OK, WARN, WORKER_HOST, ClusterFacts,
                    ConfigFacts, DatabaseFacts, Facts, Health, PathStat, Process, RedisClient, Row,
                    UnitState, upstream_version)
from .advice import CLUSTER_FILE, RECONFIGURE, RESTART_ALL, octal
from .cluster_checks import (check_cluster, check_main_unit_absent, check_remote_redis,
                             check_worker_host_redis, check_writers)
from .memory_checks import check_memory
from .web_checks import check_nginx


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
    want = f"{expected.dir_owner}:{expected.socket_group} {octal(expected.dir_mode)}"
    if not stat.exists:
        return Row("sockets", directory, FAIL, "directory missing",
                   f"systemd-tmpfiles --create, then {RESTART_ALL}")
    have = f"{stat.owner}:{stat.group} {octal(stat.mode)}"
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
                problems.append((process, str(path), f"mode {octal(stat.mode & 0o777)}, expected {octal(mode)}"))
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
    rows += check_memory(facts)
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
    rows += check_memory(facts)
    rows.append(Row("main host", "sockets, nginx", INFO,
                    f"main, its sockets, nginx and Redis run on the main host ({cluster.replication or '?'}); "
                    f"{paths.PACKAGE} status there checks them"))
    rows += check_config(facts)
    return rows
