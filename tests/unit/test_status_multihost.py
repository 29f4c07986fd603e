"""status over several machines: verdicts from recorded facts of a main host with a
worker host and of the worker host itself.

The probes behind these facts are tested for real in test_status_netprobes.py
(a real Redis with a password on loopback, real TCP listeners, gather() on
rendered roots); the two-host proof with Synapse is the booted multi-host test.
"""

from __future__ import annotations

from dataclasses import replace

from matrix_synapse_workers.core.cluster import cluster_data, parse_cluster, plan_from_cluster
from matrix_synapse_workers.core.plan import Plan, remote_workers
from matrix_synapse_workers.status import evaluate, exit_code
from matrix_synapse_workers.status.model import (FAIL, INFO, MAIN_HOST, OK, WARN, WORKER_HOST, ClusterFacts,
                                                 ConfigFacts, Expected, Facts, Health, NginxFacts, PathStat,
                                                 PeerListener, Reach, RedisClient, RedisFacts, SecretFile,
                                                 UnitState, expected_processes, worker_process)
from matrix_synapse_workers.core.topology import main_topology, replication_port

from support.status_facts import REDIS_SOCKET, REDIS_UNIT, SOCKET_DIR_STAT, row, running

HOSTB = "10.99.0.2"
REPLICATION = "10.99.0.1:9093"
REDIS = "10.99.0.1:6379"
SECRET = "/etc/matrix-synapse/cluster/replication-secret"
PASSWORD = "/etc/matrix-synapse/cluster/redis-password"
VERSION = "Synapse/1.163.2"
TOPOLOGY = main_topology(f"hostb {HOSTB} sync,events", "10.99.0.1")
REMOTE = remote_workers(TOPOLOGY)


def secrets(mode: int = 0o640, owner: str = "root", group: str = "matrix-synapse") -> tuple[SecretFile, ...]:
    return tuple(SecretFile(path, PathStat(True, False, owner, group, mode)) for path in (SECRET, PASSWORD))


DIRECTORY = PathStat(True, False, "root", "matrix-synapse", 0o750)


def main_host() -> Facts:
    """A main host running main and sync-1, with hostb running sync-1-hostb and events-1-hostb."""
    local = expected_processes(("sync-1",))
    remote = tuple(worker_process(w, remote=True) for w in REMOTE)
    units, health, stats, clients, pids = running(local, version=VERSION,
                                                  client_addr=lambda index, n: f"{REDIS_SOCKET}:0")
    units.update({"matrix-synapse.target": UnitState("active"), REDIS_UNIT: UnitState("active", "running", 50)})
    stats["/run/matrix-synapse"] = SOCKET_DIR_STAT
    for index, process in enumerate(remote):
        for n, sub in ((0, 0), (1, 1)):
            clients.append(RedisClient(40 + 2 * index + n, sub, "P" if sub else "N",
                                       f"{HOSTB}:{41000 + 2 * index + n}"))
    for process in local + remote:
        health[process.name] = Health(200, "OK", VERSION)
    return Facts(
        expected=Expected(local + remote), units=units, health=health, paths=stats,
        groups={"clubmatrix": frozenset({"matrix-synapse", "www-data"}), "redis": frozenset({"matrix-synapse"})},
        redis=RedisFacts(f"unix:{REDIS_SOCKET}", REDIS_UNIT, REDIS_SOCKET,
                         PathStat(True, True, "redis", "redis", 0o770), tcp_port=6379,
                         clients=tuple(clients), client_pids=pids),
        installed_version="1.163.2",
        config=ConfigFacts("sync:1", "sync:1", recorded_workers="sync:1", listeners_match=True),
        nginx=NginxFacts(), target_unit=UnitState("active"),
        cluster=ClusterFacts(MAIN_HOST, None, "", REPLICATION, REDIS, {"hostb": HOSTB}, None, True,
                             DIRECTORY, secrets(), redis_reach=Reach(True, "", True),
                             main_health=Health(200, "OK", VERSION)))


def worker_host() -> Facts:
    """hostb as it sees itself: sync-1-hostb and events-1-hostb over TCP, main and Redis on 10.99.0.1."""
    cluster = parse_cluster(cluster_data(Plan(REMOTE, TOPOLOGY.replication)), "cluster.yaml")
    local = tuple(worker_process(w) for w in plan_from_cluster(cluster, "hostb").local_workers)
    units, health, _, clients, pids = running(
        local, version=VERSION, first_pid=200, first_fd=30, sockets=False,
        client_addr=lambda index, n: f"{HOSTB}:{42000 + 2 * index + n}")
    units.update({"matrix-synapse.target": UnitState("active"),
                  "matrix-synapse.service": UnitState("inactive", "dead")})
    # Main's own connections, over the socket on the main host: not this host's.
    clients += [RedisClient(8, 1, "P", f"{REDIS_SOCKET}:0"), RedisClient(9, 0, "N", f"{REDIS_SOCKET}:0")]
    return Facts(
        expected=Expected(local), units=units, health=health, paths={}, groups={},
        redis=RedisFacts(REDIS, clients=tuple(clients), client_pids=pids),
        installed_version="1.163.2+standin",
        config=ConfigFacts(""), nginx=NginxFacts(), target_unit=UnitState("active"),
        cluster=ClusterFacts(WORKER_HOST, "hostb", "", REPLICATION, REDIS, {"hostb": HOSTB},
                             ("sync-1-hostb", "events-1-hostb"), True, DIRECTORY, secrets(),
                             redis_reach=Reach(True, "", True), replication_reach=Reach(True, "", True),
                             secret_tested=True, main_health=Health(200, "OK", VERSION)))


def problems(rows):
    return [(r.check, r.subject, r.status) for r in rows if r.status in (WARN, FAIL)]


def with_cluster(facts: Facts, **changes) -> Facts:
    return replace(facts, cluster=replace(facts.cluster, **changes))


# --- the main host ------------------------------------------------------------------


def test_main_host_sees_each_remote_worker_with_its_host_and_address():
    rows = evaluate(main_host())
    assert problems(rows) == [], rows
    assert exit_code(rows) == 0
    assert [r.subject for r in rows if r.check == "process"] == ["main", "sync-1", "sync-1-hostb",
                                                                  "events-1-hostb"]
    assert row(rows, "process", "sync-1-hostb").detail == \
        f"on hostb ({HOSTB}:18001): /health OK, Synapse 1.163.2"
    assert row(rows, "process", "events-1-hostb").detail.startswith(f"on hostb ({HOSTB}:18901)")
    # Redis on TCP is the worker hosts' way in, not a leak; they are counted by their address.
    assert row(rows, "redis", f"unix:{REDIS_SOCKET}").detail == \
        "answers on the socket, and on TCP port 6379 for the worker hosts"
    assert row(rows, "redis", "hostb").detail == \
        f"4 connections from {HOSTB}, 2 subscribed, for 2 workers answering /health"
    assert row(rows, "redis", REDIS).status == OK
    assert row(rows, "main", REPLICATION).status == OK
    assert row(rows, "versions", "synapse").detail == "every process runs 1.163.2, as installed"
    # The sockets row counts only the processes of this host.
    assert row(rows, "sockets", "modes").detail == "3 sockets: http 0660, replication 0600"


def test_remote_worker_down_is_reported_on_the_main_host_with_where_to_look():
    facts = main_host()
    health = dict(facts.health, **{"sync-1-hostb": Health(error="connection refused (nothing listens)")})
    rows = evaluate(replace(facts, health=health))
    assert problems(rows) == [("process", "sync-1-hostb", WARN)]
    sync = row(rows, "process", "sync-1-hostb")
    assert sync.detail == f"on hostb ({HOSTB}:18001): /health: connection refused (nothing listens)"
    assert sync.advice.startswith("on hostb: systemctl status matrix-synapse-worker@sync-1-hostb.service")
    assert exit_code(rows) == 4
    # The only writer of a stream, on another host, is as critical as on this one.
    health["events-1-hostb"] = Health(error="no answer within 1 s")
    rows = evaluate(replace(facts, health=health))
    assert row(rows, "process", "events-1-hostb").status == FAIL
    assert "the only writer of the events stream" in row(rows, "process", "events-1-hostb").detail
    assert exit_code(rows) == 5


def test_a_remote_worker_without_its_redis_subscription_is_broken():
    facts = main_host()
    clients = tuple(c for c in facts.redis.clients if not (c.peer_host == HOSTB and c.subscribed)) + (
        RedisClient(99, 1, "P", f"{HOSTB}:43000"),)
    rows = evaluate(replace(facts, redis=replace(facts.redis, clients=clients)))
    hostb = row(rows, "redis", "hostb")
    assert hostb.status == FAIL
    assert hostb.detail == f"3 connections from {HOSTB}, 1 subscribed, for 2 workers answering /health"
    assert "status on hostb names them" in hostb.advice
    # Local processes are still judged by their own connections only.
    assert row(rows, "process", "sync-1").status == OK


def test_without_attribution_only_this_hosts_subscriptions_count():
    facts = main_host()
    local_subscriptions = [c for c in facts.redis.clients if c.subscribed and c.peer_host is None]
    rows = evaluate(replace(facts, redis=replace(facts.redis, client_pids=None)))
    assert row(rows, "redis", "replication").detail.startswith("2 subscriptions for 2 processes")
    fewer = tuple(c for c in facts.redis.clients if c is not local_subscriptions[0])
    rows = evaluate(replace(facts, redis=replace(facts.redis, client_pids=None, clients=fewer)))
    # hostb's two subscriptions do not hide main's missing one.
    assert row(rows, "redis", "replication").status == FAIL
    assert row(rows, "redis", "replication").detail == \
        "1 replication subscription for 2 running processes"


def test_redis_refusing_the_password_on_the_main_host():
    refused = Reach(False, f"Redis at {REDIS} refuses the password: -WRONGPASS invalid username-password "
                           "pair or user is disabled.", True, True)
    rows = evaluate(with_cluster(main_host(), redis_reach=refused))
    redis = row(rows, "redis", REDIS)
    assert redis.status == FAIL and "refuses the password" in redis.detail
    assert "/etc/redis/redis-matrix-synapse-auth.conf differ" in redis.advice
    assert exit_code(rows) == 5
    closed = Reach(False, f"Redis at {REDIS} is unreachable: Connection refused", False)
    rows = evaluate(with_cluster(main_host(), redis_reach=closed))
    assert "'bind' in /etc/redis/redis-matrix-synapse.conf" in row(rows, "redis", REDIS).advice
    # Not readable (status not run as root): said, not failed.
    rows = evaluate(with_cluster(main_host(), redis_reach=None))
    assert row(rows, "redis", REDIS).status == INFO


def test_main_host_whose_replication_address_is_not_its_own():
    rows = evaluate(with_cluster(main_host(), address_here=False))
    assert row(rows, "cluster", "main").status == FAIL
    assert "10.99.0.1:9093 is not this machine's" in row(rows, "cluster", "main").detail
    # Main answers on the socket but not on the private address: worker hosts cannot reach it.
    facts = with_cluster(main_host(), main_health=Health(error="connection refused (nothing listens)"))
    rows = evaluate(facts)
    assert row(rows, "main", REPLICATION).detail.startswith("worker hosts cannot reach main")
    # When main is down its own row says so; no second failure for the same cause.
    units = dict(facts.units, **{"matrix-synapse.service": UnitState("failed", "failed")})
    rows = evaluate(replace(facts, units=units))
    assert [r for r in rows if r.check == "main"] == []
    assert row(rows, "process", "main").status == FAIL


def test_remote_workers_left_on_an_old_version_name_their_host():
    facts = main_host()
    health = dict(facts.health, **{"sync-1-hostb": Health(200, "OK", "Synapse/1.163.1")})
    versions = row(evaluate(replace(facts, health=health)), "versions", "synapse")
    assert versions.status == WARN and versions.detail.endswith("not running 1.163.2: sync-1-hostb")
    assert versions.advice.endswith("on hostb: install Synapse 1.163.2 there too, then "
                                    "systemctl restart matrix-synapse.target")


# --- a worker host ------------------------------------------------------------------


def test_worker_host_healthy():
    rows = evaluate(worker_host())
    assert problems(rows) == [], rows
    assert exit_code(rows) == 0
    assert {r.check for r in rows}.isdisjoint({"sockets", "groups", "nginx"})
    assert row(rows, "cluster", "hostb").detail == f"worker host at {HOSTB}; main at {REPLICATION}"
    assert row(rows, "replication", "secret").detail == "main accepts this host's replication secret"
    assert row(rows, "redis", REDIS).detail == "accepts the password from /etc/matrix-synapse/cluster/redis-password"
    assert row(rows, "main", REPLICATION).detail == "replication listener answers /health, Synapse 1.163.2"
    assert row(rows, "units", "matrix-synapse.service").status == OK
    sync = row(rows, "process", "sync-1-hostb")
    assert sync.detail == "active, /health OK, Synapse 1.163.2, Redis: 2 connections, subscribed"
    assert row(rows, "versions", "synapse").detail == f"every worker here runs 1.163.2, as main does ({REPLICATION})"
    assert row(rows, "config", "workers").status == OK
    assert row(rows, "main host", "sockets, nginx").status == INFO


def test_wrong_secret_is_broken_and_says_to_copy_it_again():
    refused = Reach(False, f"main's replication listener at {REPLICATION} refuses the replication secret "
                           "(the secret file differs from the main host's)", True, True)
    rows = evaluate(with_cluster(worker_host(), replication_reach=refused))
    secret = row(rows, "replication", "secret")
    assert secret.status == FAIL and "refuses the replication secret" in secret.detail
    assert secret.advice.startswith("the secret differs from the main host's: copy "
                                    "/etc/matrix-synapse/cluster again from the main host")
    assert "rsync -a" in secret.advice and secret.advice.endswith("systemctl restart matrix-synapse.target")
    assert exit_code(rows) == 5


def test_main_unreachable_names_the_address_and_the_link():
    facts = with_cluster(
        worker_host(), main_health=Health(error="no answer within 1 s"),
        replication_reach=Reach(False, f"main's replication listener {REPLICATION} is unreachable: "
                                       "timed out", False),
        redis_reach=Reach(False, f"Redis at {REDIS} is unreachable: timed out", False))
    rows = evaluate(facts)
    main = row(rows, "main", REPLICATION)
    assert main.status == FAIL and main.detail == "main's replication listener: no answer within 1 s"
    assert main.advice.startswith("check the private link to the main host (ping 10.99.0.1; a firewall "
                                  "must let this host reach TCP port 9093)")
    # One cause, one failure: the secret could not be tried.
    assert row(rows, "replication", "secret").status == INFO
    assert "TCP port 6379" in row(rows, "redis", REDIS).advice
    assert row(rows, "versions", "synapse").detail.endswith("main's version not known (it did not answer)")
    assert exit_code(rows) == 5
    # /health answered but the secret probe found nothing listening: the probe's own failure.
    rows = evaluate(with_cluster(facts, main_health=Health(200, "OK", VERSION)))
    assert row(rows, "replication", "secret").status == FAIL


def test_redis_refusing_the_password_on_a_worker_host():
    refused = Reach(False, f"Redis at {REDIS} refuses the password: -WRONGPASS invalid", True, True)
    facts = with_cluster(worker_host(), redis_reach=refused)
    facts = replace(facts, redis=RedisFacts(REDIS, error="WRONGPASS invalid"))
    rows = evaluate(facts)
    redis = row(rows, "redis", REDIS)
    assert redis.status == FAIL
    assert redis.advice.startswith("the password differs from the main host's: copy /etc/matrix-synapse/cluster")
    assert [r for r in rows if r.subject == "clients"] == []  # no second row for the same refusal
    assert exit_code(rows) == 5


def test_secret_files_modes_and_presence():
    fix = f"chown root:matrix-synapse {PASSWORD} && chmod 0640 {PASSWORD}"
    world = (secrets()[0], SecretFile(PASSWORD, PathStat(True, False, "root", "matrix-synapse", 0o644)))
    rows = evaluate(with_cluster(worker_host(), secrets=world))
    bad = row(rows, "secrets", PASSWORD)
    assert (bad.status, bad.detail, bad.advice) == (WARN, "root:matrix-synapse 644: every user of this "
                                                           "machine can read it", fix)
    assert exit_code(rows) == 4
    unreadable = (secrets()[0], SecretFile(PASSWORD, PathStat(True, False, "root", "root", 0o600)))
    bad = row(evaluate(with_cluster(worker_host(), secrets=unreadable)), "secrets", PASSWORD)
    assert (bad.status, bad.detail, bad.advice) == (FAIL, "root:root 600: matrix-synapse cannot read it", fix)
    # Owned by matrix-synapse and private to it is fine too.
    own = secrets(0o600, "matrix-synapse", "matrix-synapse")
    assert row(evaluate(with_cluster(worker_host(), secrets=own)), "secrets", SECRET).status == OK
    missing = (SecretFile(SECRET, PathStat(False)), secrets()[1])
    bad = row(evaluate(with_cluster(worker_host(), secrets=missing)), "secrets", SECRET)
    assert bad.status == FAIL and bad.advice.startswith("copy /etc/matrix-synapse/cluster again")
    # On the main host the package writes them: reconfigure, not copy.
    bad = row(evaluate(with_cluster(main_host(), secrets=missing)), "secrets", SECRET)
    assert bad.advice == "run: dpkg-reconfigure matrix-synapse-workers (it writes them)"
    empty = (SecretFile(SECRET, PathStat(True, False, "root", "matrix-synapse", 0o640), "empty"), secrets()[1])
    assert row(evaluate(with_cluster(worker_host(), secrets=empty)), "secrets", SECRET).status == FAIL
    closed = (SecretFile(SECRET, None, "its directory is closed to this user (run as root)"), secrets()[1])
    assert row(evaluate(with_cluster(worker_host(), secrets=closed)), "secrets", SECRET).status == INFO
    shut = PathStat(True, False, "root", "root", 0o700)
    bad = row(evaluate(with_cluster(worker_host(), directory=shut)), "secrets", "/etc/matrix-synapse/cluster")
    assert bad.status == FAIL and bad.advice == ("chown root:matrix-synapse /etc/matrix-synapse/cluster && "
                                                 "chmod 0750 /etc/matrix-synapse/cluster")


def test_worker_host_versions_against_main():
    facts = worker_host()
    newer = with_cluster(facts, main_health=Health(200, "OK", "Synapse/1.163.3"))
    versions = row(evaluate(newer), "versions", "synapse")
    assert versions.status == WARN and versions.detail == "installed here: 1.163.2, main runs 1.163.3"
    assert versions.advice.startswith("install Synapse 1.163.3 on this host")
    # Installed as main, but one worker still runs the old code: restart.
    health = dict(facts.health, **{"sync-1-hostb": Health(200, "OK", "Synapse/1.163.1")})
    versions = row(evaluate(replace(facts, health=health)), "versions", "synapse")
    assert versions.detail.endswith("(main: 1.163.2); not running 1.163.2: sync-1-hostb")
    assert versions.advice == "restart them: systemctl restart matrix-synapse.target"
    # Main unknown: the workers here among themselves.
    unknown = replace(with_cluster(facts, main_health=Health(error="timed out")), health=health)
    versions = row(evaluate(unknown), "versions", "synapse")
    assert versions.status == WARN and versions.detail.endswith("not running 1.163.2: sync-1-hostb")


def test_main_running_on_a_worker_host_is_broken():
    facts = worker_host()
    units = dict(facts.units, **{"matrix-synapse.service": UnitState("active", "running", 77)})
    rows = evaluate(replace(facts, units=units))
    main = row(rows, "units", "matrix-synapse.service")
    assert main.status == FAIL and main.advice.startswith("systemctl stop matrix-synapse.service")
    assert exit_code(rows) == 5


def test_worker_host_without_a_usable_cluster_file():
    facts = replace(worker_host(), cluster=ClusterFacts(
        WORKER_HOST, "hostb", "/etc/matrix-synapse/cluster/cluster.yaml does not exist: ...",
        secrets=secrets()))
    rows = evaluate(facts)
    cluster = row(rows, "cluster", "/etc/matrix-synapse/cluster/cluster.yaml")
    assert cluster.status == FAIL and cluster.advice.startswith("copy /etc/matrix-synapse/cluster again")
    assert exit_code(rows) == 5
    # A label the main host did not name, and an address that is not this machine's.
    rows = evaluate(with_cluster(worker_host(), label="hostc"))
    assert "has no worker host 'hostc' (it has: hostb)" in row(rows, "cluster", "hostc").detail
    rows = evaluate(with_cluster(worker_host(), address_here=False))
    assert "its workers cannot listen on it" in row(rows, "cluster", "hostb").detail


def test_worker_host_workers_differ_from_the_cluster_file():
    rows = evaluate(with_cluster(worker_host(), listed_here=("sync-1-hostb", "sync-2-hostb", "events-1-hostb")))
    workers = row(rows, "config", "workers")
    assert workers.status == WARN
    assert workers.detail == ("on disk events-1-hostb, sync-1-hostb; /etc/matrix-synapse/cluster/cluster.yaml "
                              "lists events-1-hostb, sync-1-hostb, sync-2-hostb for hostb")
    assert workers.advice.startswith("run: dpkg-reconfigure matrix-synapse-workers")


def test_worker_host_counts_only_its_own_redis_connections_without_attribution():
    facts = worker_host()
    redis = replace(facts.redis, client_pids=None)
    rows = evaluate(replace(facts, redis=redis))
    # Main's subscription over the socket on the main host is not one of this host's.
    assert row(rows, "redis", "replication").detail.startswith("2 subscriptions for 2 processes")
    mine = [c for c in redis.clients if c.peer_host == HOSTB and c.subscribed]
    rows = evaluate(replace(facts, redis=replace(redis, clients=tuple(c for c in redis.clients
                                                                       if c is not mine[0]))))
    assert row(rows, "redis", "replication").status == FAIL


def test_something_else_answering_is_not_called_a_wrong_secret():
    other = Reach(False, f"main's replication listener at {REPLICATION} answered HTTP 404, not what "
                         "Synapse's replication endpoint answers", True)
    rows = evaluate(with_cluster(worker_host(), replication_reach=other))
    secret = row(rows, "replication", "secret")
    assert secret.status == FAIL and secret.advice.startswith(f"something else answers at {REPLICATION}")
    assert "copy" not in secret.advice
    other = Reach(False, f"Redis at {REDIS} refuses the password: HTTP/1.1 400 Bad Request", True)
    redis = row(evaluate(with_cluster(worker_host(), redis_reach=other)), "redis", REDIS)
    assert redis.status == FAIL and redis.advice.startswith(f"something else answers at {REDIS}")


def test_a_stream_writers_replication_listener_unreachable_from_the_other_host():
    address = f"{HOSTB}:{replication_port('events', 1)}"
    up = PeerListener("events-1-hostb", "hostb", address, "events", Health(200, "OK", VERSION))
    rows = evaluate(with_cluster(main_host(), writers=(up,)))
    assert row(rows, "replication", "events-1-hostb").detail == \
        f"its replication listener on hostb ({address}) answers"
    # /health answers on the HTTP port, but a firewall drops the replication port.
    down = replace(up, health=Health(error="no answer within 1 s"))
    rows = evaluate(with_cluster(main_host(), writers=(down,)))
    writer = row(rows, "replication", "events-1-hostb")
    assert writer.status == FAIL and "the events stream's writes cannot reach it" in writer.detail
    assert writer.advice.startswith(f"on hostb: a firewall must let the main host reach TCP port "
                                    f"{replication_port('events', 1)}")
    assert exit_code(rows) == 5
    # The worker itself down: one row for it, not two.
    facts = with_cluster(main_host(), writers=(down,))
    health = dict(facts.health, **{"events-1-hostb": Health(error="no answer within 1 s")})
    rows = evaluate(replace(facts, health=health))
    assert [r for r in rows if r.check == "replication"] == []
    # On a worker host: a writer on the main host, through the link.
    typing = PeerListener("typing-1", "main", f"10.99.0.1:{replication_port('typing', 1)}", "typing",
                          Health(error="connection refused (nothing listens)"))
    rows = evaluate(with_cluster(worker_host(), writers=(typing,)))
    assert row(rows, "replication", "typing-1").advice.startswith(
        f"check the private link to main (a firewall must let this host reach 10.99.0.1:"
        f"{replication_port('typing', 1)})")
    rows = evaluate(with_cluster(worker_host(), writers=(typing,), main_health=Health(error="timed out")))
    assert [r for r in rows if r.subject == "typing-1"] == []
