"""Pure: status's checks of a deployment that spans machines (the worker hosts' way to
main and Redis, the shared secrets, the stream writers on other hosts)."""

from __future__ import annotations

from ..core import paths
from ..core.words import plural
from ..core.redisserver import REDIS
from .model import FAIL, INFO, OK, WARN, WORKER_HOST, ClusterFacts, Facts, Health, PathStat, Row, UnitState
from .advice import CLUSTER_FILE, COPY_AGAIN, RECONFIGURE, octal


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
                        f"{stat.owner}:{stat.group} {octal(stat.mode)}: {paths.SYNAPSE_USER} cannot enter it",
                        _fix_secret(directory, directory=True)))
    for secret in cluster.secrets:
        stat = secret.stat
        if stat is None:
            rows.append(Row("secrets", secret.path, INFO, f"not checked: {secret.error or 'not readable'}"))
            continue
        if not stat.exists:
            rows.append(Row("secrets", secret.path, FAIL, "missing", missing_advice))
            continue
        have = f"{stat.owner}:{stat.group} {octal(stat.mode)}"
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


