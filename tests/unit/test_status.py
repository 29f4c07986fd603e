"""status: verdicts from recorded facts, and the probe parsers on recorded output."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from matrix_synapse_workers import status
from matrix_synapse_workers.status import model, report
from matrix_synapse_workers.status import probe as statusprobe
from matrix_synapse_workers.status import clients as statusclients
from matrix_synapse_workers.status import deployed as statusdeployed
from matrix_synapse_workers.status import evaluate, exit_code
from matrix_synapse_workers.status.model import (FAIL, INFO, OK, WARN, ConfigFacts, Expected, Facts, Health,
                                                 NginxFacts, PathStat, RedisClient, RedisFacts, UnitState,
                                                 expected_processes)

from support.status_facts import REDIS_SOCKET, REDIS_UNIT, SOCKET_DIR_STAT, row, running

WORKERS = ("client-1", "sync-1", "sync-2", "typing-1")


def healthy(workers=WORKERS, version="1.163.2") -> Facts:
    """What a working host with these workers looks like to the probes."""
    processes = expected_processes(workers)
    units, health, stats, clients, pids = running(processes, version=f"Synapse/{version}", subscriptions=2)
    units.update({"matrix-synapse.target": UnitState("active"), REDIS_UNIT: UnitState("active", "running", 50)})
    stats["/run/matrix-synapse"] = SOCKET_DIR_STAT
    return Facts(
        expected=Expected(processes),
        units=units, health=health, paths=stats,
        groups={"clubmatrix": frozenset({"matrix-synapse", "www-data"}), "redis": frozenset({"matrix-synapse"})},
        redis=RedisFacts(f"unix:{REDIS_SOCKET}", REDIS_UNIT, Path(REDIS_SOCKET),
                         PathStat(True, True, "redis", "redis", 0o770), tcp_port=0,
                         clients=tuple(clients), client_pids=pids),
        installed_version="1.163.2",
        config=ConfigFacts("sync:2,client:1,typing:1", "sync:2,client:1,typing:1",
                           recorded_workers="sync:2,client:1,typing:1", listeners_match=True),
        nginx=NginxFacts(), target_unit=UnitState("active"))


def problems(rows):
    return [r for r in rows if r.status in (WARN, FAIL)]


def test_healthy_host_is_exit_0_with_every_process_seen():
    rows = evaluate(healthy())
    assert problems(rows) == [], rows
    assert exit_code(rows) == 0
    assert [r.subject for r in rows if r.check == "process"] == ["main", *WORKERS]
    assert "subscribed" in row(rows, "process", "sync-2").detail
    assert row(rows, "versions", "synapse").detail == "every process runs 1.163.2, as installed"
    assert row(rows, "nginx", "routing").status == INFO


def test_one_worker_stopped_is_degraded_and_names_it():
    facts = healthy()
    units = dict(facts.units, **{"matrix-synapse-worker@sync-2.service": UnitState("inactive", "dead")})
    health = dict(facts.health, **{"sync-2": Health(error="socket missing")})
    rows = evaluate(replace(facts, units=units, health=health))
    assert [(r.subject, r.status) for r in problems(rows)] == [("sync-2", WARN)]
    assert "systemctl start matrix-synapse-worker@sync-2.service" in row(rows, "process", "sync-2").advice
    assert exit_code(rows) == 4


def test_an_unfinished_apply_is_a_warning_that_says_how_to_finish_it():
    """A killed dpkg-reconfigure leaves its pending answers: dpkg --configure -a alone
    does not rerun it, so status says what does."""
    owed = "/var/lib/matrix-synapse-workers/services-owed"
    rows = evaluate(replace(healthy(), unfinished=(owed,)))
    assert [(r.check, r.status) for r in problems(rows)] == [("apply", WARN)]
    found = row(rows, "apply", "unfinished")
    assert owed in found.detail and "dpkg-reconfigure matrix-synapse-workers" in found.advice
    assert exit_code(rows) == 4


def test_a_refused_install_is_a_row_that_says_why():
    """An install or reconfigure that could not configure the host exits 0 (dpkg stays
    healthy); status is where the admin sees why."""
    why = "Synapse uses the 'sqlite3' database engine here; workers need PostgreSQL"
    rows = evaluate(replace(healthy(), refused=why))
    found = row(rows, "apply", "not configured")
    assert found.status == WARN and found.detail == f"not configured: {why}"
    assert "dpkg-reconfigure matrix-synapse-workers" in found.advice
    assert rows[0] is found


def test_a_stopped_stream_writer_or_main_is_broken():
    facts = healthy()
    for unit, name in (("matrix-synapse-worker@typing-1.service", "typing-1"),
                       ("matrix-synapse.service", "main")):
        units = dict(facts.units, **{unit: UnitState("failed", "failed")})
        rows = evaluate(replace(facts, units=units))
        assert row(rows, "process", name).status == FAIL
        assert row(rows, "process", name).advice.startswith(f"systemctl restart {unit}")
        assert exit_code(rows) == 5


def test_redis_down_is_broken():
    facts = healthy()
    redis = replace(facts.redis, socket_stat=PathStat(False), error="No such file or directory",
                    clients=(), tcp_port=None)
    units = dict(facts.units, **{REDIS_UNIT: UnitState("inactive", "dead")})
    rows = evaluate(replace(facts, redis=redis, units=units))
    assert exit_code(rows) == 5
    assert row(rows, "redis", REDIS_UNIT).advice.startswith(f"systemctl restart {REDIS_UNIT}")
    assert row(rows, "redis", REDIS_SOCKET).detail == "socket missing"
    # The processes still answer /health: they are not blamed for Redis.
    assert row(rows, "process", "sync-1").status == OK


def test_a_worker_without_its_redis_subscription_is_broken():
    facts = healthy()
    pid = facts.units["matrix-synapse-worker@sync-1.service"].main_pid
    clients = tuple(c for c in facts.redis.clients if not (facts.redis.client_pids[c.fd] == pid and c.subscribed))
    rows = evaluate(replace(facts, redis=replace(facts.redis, clients=clients)))
    sync = row(rows, "process", "sync-1")
    assert sync.status == FAIL and "no Redis replication subscription (1 connection)" in sync.detail
    assert exit_code(rows) == 5


def test_without_attribution_subscriptions_are_counted():
    facts = healthy()
    rows = evaluate(replace(facts, redis=replace(facts.redis, client_pids=None)))
    assert row(rows, "redis", "replication").status == OK
    fewer = replace(facts.redis, client_pids=None, clients=facts.redis.clients[:-1])
    rows = evaluate(replace(facts, redis=fewer))
    assert row(rows, "redis", "replication").status == FAIL
    assert "4 replication subscriptions for 5 running processes" in row(rows, "redis", "replication").detail


def test_redis_on_tcp_is_a_warning():
    facts = healthy()
    rows = evaluate(replace(facts, redis=replace(facts.redis, tcp_port=6379)))
    assert row(rows, "redis", f"unix:{REDIS_SOCKET}").status == WARN
    assert "port 0" in row(rows, "redis", f"unix:{REDIS_SOCKET}").advice


def test_the_stock_redis_left_running_beside_ours_is_reported_not_stopped():
    facts = healthy()
    rows = evaluate(replace(facts, redis=replace(facts.redis, stock_unit="redis-server.service")))
    stock = row(rows, "redis", "redis-server.service")
    assert stock.status == INFO and "Synapse does not use" in stock.detail and "6379" in stock.detail
    assert stock.advice == ("if nothing else on this host uses it: "
                            "systemctl disable --now redis-server.service")
    assert exit_code(rows) == 0
    assert not [r for r in evaluate(facts) if r.subject == "redis-server.service"]


def test_wrong_socket_mode_is_reported_with_the_unit_to_restart():
    facts = healthy()
    stats = dict(facts.paths)
    stats["/run/matrix-synapse/sync-1.sock"] = PathStat(True, True, "matrix-synapse", "clubmatrix", 0o666)
    stats["/run/matrix-synapse/typing-1-replication.sock"] = PathStat(True, True, "matrix-synapse",
                                                                      "clubmatrix", 0o660)
    rows = evaluate(replace(facts, paths=stats))
    bad = row(rows, "sockets", "/run/matrix-synapse/sync-1.sock")
    assert bad.status == WARN and bad.detail == "mode 666, expected 660"
    assert bad.advice.endswith("systemctl restart matrix-synapse-worker@sync-1.service")
    assert row(rows, "sockets", "/run/matrix-synapse/typing-1-replication.sock").detail == \
        "mode 660, expected 600"
    assert exit_code(rows) == 4


def test_socket_directory_and_groups():
    facts = healthy()
    stats = dict(facts.paths, **{"/run/matrix-synapse": PathStat(True, False, "root", "root", 0o755)})
    groups = {"clubmatrix": frozenset({"matrix-synapse"}), "redis": frozenset()}
    rows = evaluate(replace(facts, paths=stats, groups=groups))
    assert row(rows, "sockets", "/run/matrix-synapse").detail == \
        "root:root 755, expected matrix-synapse:clubmatrix 2750"
    assert row(rows, "groups", "clubmatrix").status == WARN
    assert row(rows, "groups", "clubmatrix").advice.startswith("adduser www-data clubmatrix")
    assert row(rows, "groups", "redis").status == FAIL
    rows = evaluate(replace(facts, groups={}))
    assert row(rows, "groups", "clubmatrix").detail == "group does not exist"


def test_version_skew_names_the_process_left_behind():
    facts = healthy()
    health = dict(facts.health, **{"sync-1": Health(200, "OK", "Synapse/1.163.1")})
    rows = evaluate(replace(facts, health=health))
    versions = row(rows, "versions", "synapse")
    assert versions.status == WARN
    assert versions.detail.endswith("not running 1.163.2: sync-1")
    assert versions.advice.endswith("systemctl restart matrix-synapse.target")
    # Every process on the old version after the package was upgraded.
    old = {name: Health(200, "OK", "Synapse/1.163.1") for name in facts.health}
    rows = evaluate(replace(facts, health=old, installed_version="1.163.2+standin"))
    assert "not running 1.163.2: client-1, main, sync-1, sync-2, typing-1" in row(rows, "versions", "synapse").detail


def test_upstream_version_of_package_versions():
    assert model.upstream_version("1:1.163.2+bookworm1") == "1.163.2"
    assert model.upstream_version("1.163.2~rc1-1") == "1.163.2"
    assert model.upstream_version(None) is None


def test_health_that_fails_while_the_unit_runs():
    facts = healthy()
    health = dict(facts.health, **{"client-1": Health(error="no answer within 1 s")})
    rows = evaluate(replace(facts, health=health))
    client = row(rows, "process", "client-1")
    assert client.status == WARN and "no answer within 1 s" in client.detail
    assert "journalctl -u matrix-synapse-worker@client-1.service" in client.advice


def test_config_drift_asks_for_reconfigure():
    facts = healthy()
    config = replace(facts.config, answer_workers="sync:1", drifted=("/etc/matrix-synapse/conf.d/workers.yaml",),
                     listeners_match=False)
    rows = evaluate(replace(facts, config=config))
    assert row(rows, "config", "workers").detail == "on disk sync:2,client:1,typing:1, debconf answers sync:1"
    assert row(rows, "config", "/etc/matrix-synapse/conf.d/workers.yaml").status == WARN
    assert all(r.advice == "run: dpkg-reconfigure matrix-synapse-workers" for r in problems(rows))
    # No debconf: the record the postinst wrote is the reference.
    config = replace(facts.config, answer_workers=None, recorded_workers="sync:1")
    assert row(evaluate(replace(facts, config=config)), "config", "workers").status == WARN


def test_nginx_rows_only_when_routing_files_are_rendered():
    facts = healthy()
    files = ("/etc/nginx/conf.d/matrix-synapse-workers.conf", "/etc/nginx/snippets/matrix-synapse-workers.conf")
    rows = evaluate(replace(facts, nginx=NginxFacts(files, test_ok=True)))
    assert row(rows, "nginx", "routing").status == OK
    rows = evaluate(replace(facts, nginx=NginxFacts(files, not_included=files[1:], test_ok=False,
                                                    test_output="nginx: [emerg] unknown directive\n")))
    assert row(rows, "nginx", "include").advice.startswith(f"include {files[1]}")
    assert row(rows, "nginx", "nginx -t").detail == "nginx: [emerg] unknown directive"
    assert exit_code(rows) == 5


def test_outputs():
    facts = healthy()
    units = dict(facts.units, **{"matrix-synapse-worker@sync-2.service": UnitState("inactive", "dead")})
    rows = evaluate(replace(facts, units=units))
    data = status.as_json(rows, 0.25)
    assert data["status"] == "degraded" and data["exit_code"] == 4
    assert json.loads(json.dumps(data))["checks"][0].keys() == {"check", "subject", "status", "detail", "advice"}
    table = status.as_table(rows, 0.25)
    assert "\033[" not in table
    assert "-> systemctl start matrix-synapse-worker@sync-2.service" in table
    assert table.endswith("degraded: 1 problem in %d checks (0.25 s)" % len(rows))
    assert "\033[33mWARN\033[0m" in status.as_table(rows, 0.25, colour=True)


# --- probe parsers, on recorded output ---------------------------------------------


def test_parse_client_list():
    text = ("id=3 addr=/run/redis-matrix-synapse/redis-server.sock:0 laddr=/run/redis-matrix-synapse/"
            "redis-server.sock:0 fd=8 name= age=5 idle=5 flags=P db=0 sub=2 psub=0 cmd=subscribe\n"
            "id=4 addr=/run/redis-matrix-synapse/redis-server.sock:0 fd=9 name= flags=N sub=0 psub=0 "
            "cmd=publish\n")
    sock = "/run/redis-matrix-synapse/redis-server.sock:0"
    assert statusclients.parse_client_list(text) == (RedisClient(8, 2, "P", sock), RedisClient(9, 0, "N", sock))


def test_parse_ss_joins_redis_fds_to_client_pids():
    text = (f"u_str LISTEN 0 511 {REDIS_SOCKET} 1000 * 0 users:((\"redis-server\",pid=50,fd=6))\n"
            f"u_str ESTAB 0 0 {REDIS_SOCKET} 1001 * 2001 users:((\"redis-server\",pid=50,fd=8))\n"
            f"u_str ESTAB 0 0 {REDIS_SOCKET} 1002 * 2002 users:((\"redis-server\",pid=50,fd=9))\n"
            "u_str ESTAB 0 0 * 2001 * 1001 users:((\"python\",pid=101,fd=20))\n"
            "u_str ESTAB 0 0 * 2002 * 1002 users:((\"python\",pid=102,fd=21))\n"
            "u_str ESTAB 0 0 /run/matrix-synapse/main.sock 3000 * 3001 users:((\"python\",pid=100,fd=9))\n")
    assert statusclients.parse_ss(text, REDIS_SOCKET) == {8: 101, 9: 102}


@pytest.fixture
def unix_server(tmp_path):
    """A one-shot UNIX socket server answering with the given bytes; yields (path, set_reply, seen)."""
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    reply, seen = [b""], []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(4096))
                if reply[0]:
                    conn.sendall(reply[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, lambda data: reply.__setitem__(0, data), seen
    server.close()
    thread.join(timeout=2)


def test_http_health_over_a_unix_socket(unix_server):
    path, set_reply, seen = unix_server
    set_reply(b"HTTP/1.1 200 OK\r\nServer: Synapse/1.163.2\r\nContent-Length: 2\r\n\r\nOK")
    health = statusprobe.http_health(path, timeout=1)
    assert health.ok and health.version == "1.163.2"
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in seen[0] and seen[0].startswith(b"GET /health HTTP/1.1\r\n")
    set_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n")
    assert statusprobe.http_health(path, timeout=1).body == "OK"


def test_http_health_errors(tmp_path, unix_server):
    assert statusprobe.http_health(str(tmp_path / "absent.sock")).error == "socket missing"
    path, set_reply, _ = unix_server
    set_reply(b"")  # accepts, reads, answers nothing, closes
    assert statusprobe.http_health(path, timeout=0.3).error == "not an HTTP answer"


def test_settings_from_answers_and_redis_location():
    deployed = statusdeployed.Deployed(("sync-1",), {"enabled": True, "path": REDIS_SOCKET}, None)
    answers = {"matrix-synapse-workers/preset": "custom", "matrix-synapse-workers/worker-types": "sync, client",
               "matrix-synapse-workers/worker-counts": "sync:2", "matrix-synapse-workers/socket-group": "clubmatrix",
               "matrix-synapse-workers/web-user": "www-data", "matrix-synapse-workers/redis": "dedicated",
               "matrix-synapse-workers/redis-location": ""}
    settings, workers, error = statusdeployed.settings_from(answers, deployed, "clubmatrix")
    assert (workers, error, settings.web_user) == ("sync:2,client:1", "", "www-data")
    _, workers, error = statusdeployed.settings_from({**answers, "matrix-synapse-workers/preset": "huge"},
                                                  deployed, "clubmatrix")
    assert workers is None and "unknown preset 'huge'" in error
    assert statusdeployed.redis_location({"path": REDIS_SOCKET}) == f"unix:{REDIS_SOCKET}"
    assert statusdeployed.redis_location({"host": "10.0.0.5", "port": 6380}) == "10.0.0.5:6380"
    assert statusdeployed.redis_settings_of({"path": "/run/redis/redis-server.sock"}).mode.value == "guide"


def test_sandbox_rows_warn_when_an_admin_drop_in_loosens_a_unit():
    from dataclasses import replace
    from matrix_synapse_workers.status.model import Exposure
    from matrix_synapse_workers.status.checks import check_sandbox
    ours = "/etc/systemd/system/matrix-synapse-worker@sync-1.service.d/matrix-synapse-workers.conf"
    admin = "/etc/systemd/system/matrix-synapse-worker@sync-1.service.d/override.conf"
    facts = replace(healthy(), exposure={
        "matrix-synapse-worker@sync-1.service": Exposure(5.4, (ours, admin)),
        "matrix-synapse.service": Exposure(1.1, ()),
    })
    rows = {r.subject: r for r in check_sandbox(facts)}
    assert rows["matrix-synapse.service"].status == "ok"
    loosened = rows["matrix-synapse-worker@sync-1.service"]
    assert loosened.status == "warn" and admin in loosened.detail and ours not in loosened.detail
    assert "5.4" in loosened.detail and loosened.advice


# --- the memory budget ------------------------------------------------------------


def _memory(rss, enforced=True, overridden=()):
    shares = {"main": 700, "sync-1": 700, "typing-1": 300}
    return model.MemoryFacts(1700, "set", enforced, shares, rss, overridden)


def test_memory_within_the_budget_is_one_ok_row():
    rows = evaluate(replace(healthy(), memory=_memory({"main": 400, "sync-1": 300, "typing-1": 150})))
    memory = [r for r in rows if r.check == "memory"]
    assert [(r.status, r.detail) for r in memory] == [(OK, "850 MiB RSS of a 1700 MiB budget (set)")]


def test_memory_above_the_budget_warns_and_names_the_biggest_processes():
    facts = replace(healthy(), memory=_memory({"main": 900, "sync-1": 750, "typing-1": 120}))
    rows = evaluate(facts)
    found = row(rows, "memory", "3 Synapse processes")
    assert found.status == WARN and exit_code(rows) == 4
    assert "1770 MiB RSS of a 1700 MiB budget" in found.detail
    assert "biggest: main 900 MiB (share 700), sync-1 750 MiB (share 700), typing-1 120" in found.detail
    data = status.as_json(rows, 0.1, facts.memory.as_json())
    assert data["memory"]["rss_mib"] == 1770 and data["memory"]["processes"]["sync-1"] == {
        "rss_mib": 750, "share_mib": 700}
    assert any(c["check"] == "memory" and c["status"] == WARN for c in data["checks"])


def test_memory_says_when_nothing_holds_it_and_when_the_admin_s_settings_decide():
    rows = evaluate(replace(healthy(), memory=_memory({"main": 100}, enforced=False,
                                                      overridden=("cache_autotuning",))))
    infos = [r for r in rows if r.check == "memory" and r.status == INFO]
    assert "libjemalloc2 is not installed" in infos[0].detail
    assert "caches.cache_autotuning" in infos[1].detail
    rows = evaluate(replace(healthy(), memory="memory budget 300 MiB is too small"))
    assert row(rows, "memory", "budget").status == WARN
