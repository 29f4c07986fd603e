"""status's probes of the other hosts, for real on loopback: a real redis-server with a
password, real TCP listeners (closed, hung), ss, and gather() on roots the command
rendered for a main host and its worker host.

Worker hosts get loopback addresses of their own (127.77.0.0/16: on Linux all of
127/8 is this machine), so nothing here collides with services on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from hostroot import make_root
from matrix_synapse_workers.core import paths
from matrix_synapse_workers import status
from matrix_synapse_workers.status import probe as statusprobe
from matrix_synapse_workers.status import clients as statusclients
from matrix_synapse_workers.status import deployed as statusdeployed
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.status.model import FAIL, OK, RedisClient, WORKER_HOST
from matrix_synapse_workers.system import netprobe
from matrix_synapse_workers.core.topology import Address, http_port, replication_port
from loopback import free_port
from realredis import redis_with_password

HOSTB = "127.77.0.2"
MAIN = "127.77.0.1"
PASSWORD = "right-password"


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on loopback with requirepass, as the main host's dedicated one."""
    with redis_with_password(tmp_path, PASSWORD) as address:
        yield address


def subscriber(address: Address, source: str | None = None) -> socket.socket:
    """A connection that AUTHs and subscribes, as each Synapse process holds one."""
    sock = socket.create_connection((address.host, address.port), 2,
                                    source_address=(source, 0) if source else None)
    sock.sendall(f"AUTH {PASSWORD}\r\nSUBSCRIBE msw-test\r\n".encode())
    data = b""
    while data.count(b"\r\n") < 7:  # +OK, then the 3-element subscribe reply
        data += sock.recv(4096)
    return sock


# --- Redis ------------------------------------------------------------------------------


def test_probe_redis_with_a_password_lists_clients_with_their_addresses(redis_server):
    with subscriber(redis_server):
        config = {"host": redis_server.host, "port": redis_server.port}
        error, port, clients = statusclients.probe_redis(config, 2, password=PASSWORD)
        assert error == "" and port == redis_server.port
        subscribed = [c for c in clients if c.subscribed]
        assert len(subscribed) == 1 and subscribed[0].peer_host == "127.0.0.1"
        error, _, clients = statusclients.probe_redis(config, 2, password="wrong")
        # Redis's own words, as python3-redis passes them on (without the error code).
        assert "invalid username-password pair" in error and clients == ()
        error, _, _ = statusclients.probe_redis(config, 2)
        assert error == "Authentication required."


def test_the_password_comes_from_password_path_under_the_root(tmp_path):
    secret = tmp_path / paths.REDIS_PASSWORD
    secret.parent.mkdir(parents=True)
    secret.write_text(f"{PASSWORD}\n")
    config = {"host": "10.99.0.1", "port": 6379, "password_path": f"/{paths.REDIS_PASSWORD}"}
    assert statusprobe._redis_password(tmp_path, config) == (PASSWORD, "")
    assert statusprobe._redis_password(tmp_path, {"path": "/run/x.sock"}) == (None, "")
    secret.unlink()
    password, error = statusprobe._redis_password(tmp_path, config)
    assert password is None and "No such file" in error


def test_parse_ss_tcp_on_recorded_output():
    text = ("ESTAB 0 0 10.99.0.2:41000 10.99.0.1:6379 users:((\"python\",pid=201,fd=20))\n"
            "ESTAB 0 0 10.99.0.2:41001 10.99.0.1:6379 users:((\"python\",pid=202,fd=21))\n"
            "ESTAB 0 0 10.99.0.2:41002 10.99.0.1:9093 users:((\"python\",pid=201,fd=22))\n"
            "ESTAB 0 0 [fd00::2]:41003 [fd00::1]:6379 users:((\"python\",pid=203,fd=23))\n")
    clients = (RedisClient(8, 1, "P", "10.99.0.2:41000"), RedisClient(9, 0, "N", "10.99.0.2:41001"),
               RedisClient(10, 0, "N", "10.99.0.2:41002"), RedisClient(11, 1, "P", "10.99.0.3:41000"))
    assert statusclients.parse_ss_tcp(text, clients, Address("10.99.0.1", 6379)) == {8: 201, 9: 202}
    six = (RedisClient(12, 1, "P", "[fd00::2]:41003"),)
    assert statusclients.parse_ss_tcp(text, six, Address("fd00::1", 6379)) == {12: 203}
    # Connections to Redis that Redis knows by other names (translated on the way): not attributable.
    translated = (RedisClient(8, 1, "P", "192.0.2.7:5000"),)
    assert statusclients.parse_ss_tcp(text, translated, Address("10.99.0.1", 6379)) is None
    # No connection to Redis at all: every process has none.
    assert statusclients.parse_ss_tcp("", clients, Address("10.99.0.1", 6379)) == {}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ss") is None, reason="ss shows owners to root only")
def test_tcp_connections_to_redis_are_attributed_to_their_process(redis_server):
    with subscriber(redis_server):
        _, _, clients = statusclients.probe_redis({"host": redis_server.host, "port": redis_server.port}, 2,
                                                password=PASSWORD)
        ss = subprocess.run(["ss", "-tpnH"], capture_output=True, text=True, check=True).stdout
    pids = statusclients.parse_ss_tcp(ss, clients, redis_server)
    subscribed = [c.fd for c in clients if c.subscribed]
    assert len(subscribed) == 1 and pids.get(subscribed[0]) == os.getpid(), (clients, pids)


# --- HTTP over TCP -----------------------------------------------------------------------


@pytest.fixture
def hung():
    """Listening sockets that never accept: a host whose kernel answers but Synapse does not."""
    sockets = []

    def listen(host: str, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            pytest.skip(f"{host}:{port} is taken on this machine: {exc}")
        sock.listen(16)
        sockets.append(sock)

    yield listen
    for sock in sockets:
        sock.close()


def test_http_health_over_tcp(hung):
    closed = Address("127.0.0.1", free_port())
    assert statusprobe.http_health(closed, 1).error == "connection refused (nothing listens)"
    port = free_port(HOSTB)
    hung(HOSTB, port)
    started = time.monotonic()
    assert statusprobe.http_health(Address(HOSTB, port), 0.3).error == "no answer within 0.3 s"
    assert time.monotonic() - started < 2
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen = []

    def answer():
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(4096))
            conn.sendall(b"HTTP/1.1 200 OK\r\nServer: Synapse/1.163.2\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    health = statusprobe.http_health(Address("127.0.0.1", server.getsockname()[1]), 1)
    thread.join(2)
    server.close()
    assert health.ok and health.version == "1.163.2"
    assert seen[0].startswith(b"GET /health HTTP/1.1\r\n")


# --- gather() on rendered roots ------------------------------------------------------------


def _patch_cluster(root: Path, replication: Address, redis: Address) -> None:
    path = root / paths.CLUSTER_FILE
    data = yaml.safe_load(path.read_text())
    data["replication"] = {"host": replication.host, "port": replication.port}
    data["redis"] = {"host": redis.host, "port": redis.port}
    data["hosts"]["hostb"]["address"] = HOSTB
    path.write_text(yaml.safe_dump(data))


def _secrets(root: Path, password: str) -> None:
    for relative, value in ((paths.REPLICATION_SECRET, "a-secret"), (paths.REDIS_PASSWORD, password)):
        (root / relative).write_text(value + "\n")
        os.chmod(root / relative, 0o640)


@pytest.fixture
def two_roots(tmp_path, capsys):
    """(main root, worker root) as `render` writes them for main + hostb (sync:3, events)."""
    main_root = make_root(tmp_path / "a")
    assert main(["render", "--root", str(main_root), "--workers", "sync", "--worker-hosts",
                 "hostb 10.99.0.2 sync:3,events", "--replication-address", "10.99.0.1"]) == 0
    worker_root = make_root(tmp_path / "b")
    shutil.copytree(main_root / paths.CLUSTER_DIR, worker_root / paths.CLUSTER_DIR)
    assert main(["render", "--root", str(worker_root), "--host-role", "worker-host",
                 "--host-name", "hostb"]) == 0
    mark = worker_root / paths.WORKER_HOST_MARK
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text("hostb\n")
    capsys.readouterr()
    return main_root, worker_root


def test_gather_on_a_worker_host_with_main_down_and_redis_up(two_roots, redis_server):
    _, root = two_roots
    closed = Address("127.0.0.1", free_port())
    _patch_cluster(root, closed, redis_server)
    # The workers' own Redis settings (what status asks), pointed at the test's Redis.
    redis_yaml = root / paths.REDIS_CONF_D
    config = yaml.safe_load(redis_yaml.read_text())
    config["redis"].update(host=redis_server.host, port=redis_server.port)
    redis_yaml.write_text(yaml.safe_dump(config))
    _secrets(root, PASSWORD)
    facts = statusprobe.gather(root, timeout=1)
    cluster = facts.cluster
    assert cluster is not None and (cluster.role, cluster.label) == (WORKER_HOST, "hostb")
    assert cluster.address_here is True and cluster.listed_here == (
        "sync-1-hostb", "sync-2-hostb", "sync-3-hostb", "events-1-hostb")
    assert cluster.redis_reach is not None and cluster.redis_reach.ok
    assert cluster.main_health is not None and cluster.main_health.error == "connection refused (nothing listens)"
    assert cluster.replication_reach is not None and not cluster.replication_reach.reached
    assert cluster.secret_tested
    assert sorted(p.name for p in facts.expected.processes) == sorted(cluster.listed_here)
    assert facts.expected.processes[0].http_address.startswith(f"{HOSTB}:")
    assert facts.redis.reachable  # the client list was read with the password file
    rows = status.evaluate(facts)
    by = {(r.check, r.subject): r for r in rows}
    assert by[("redis", f"127.0.0.1:{redis_server.port}")].status == OK
    assert by[("main", str(closed))].status == FAIL
    assert f"TCP port {closed.port}" in by[("main", str(closed))].advice
    assert by[("config", "workers")].status == OK
    assert status.exit_code(rows) == 5

    _secrets(root, "wrong-password")
    facts = statusprobe.gather(root, timeout=1)
    assert facts.cluster.redis_reach.reached and not facts.cluster.redis_reach.ok
    redis = {(r.check, r.subject): r for r in status.evaluate(facts)}[("redis", f"127.0.0.1:{redis_server.port}")]
    assert redis.status == FAIL and "refuses the password" in redis.detail
    assert redis.advice.startswith("the password differs from the main host's")


def test_gather_on_a_main_host_costs_one_timeout_for_a_hung_worker_host(two_roots, redis_server, hung,
                                                                      monkeypatch):
    root, _ = two_roots
    replication = Address(MAIN, free_port(MAIN))
    hung(MAIN, replication.port)
    _patch_cluster(root, replication, redis_server)
    _secrets(root, PASSWORD)
    remote = [("sync-1-hostb", http_port("sync", 1)), ("sync-2-hostb", http_port("sync", 2)),
              ("sync-3-hostb", http_port("sync", 3)), ("events-1-hostb", http_port("events", 1))]
    for _, port in remote:
        hung(HOSTB, port)
    # The events writer's replication listener (main sends it the events' writes) hangs too.
    hung(HOSTB, replication_port("events", 1))
    # Six endpoints that each take the whole timeout: probed one after another that is 6 s.
    # Not timed against the clock (a loaded machine is slow): each probe's start and end are
    # noted, and all six were waiting at one same moment, which one after another cannot be.
    spans = []
    probe = statusprobe.http_health

    def noted(*args, **kwargs):
        start = time.monotonic()
        health = probe(*args, **kwargs)
        if health.error == "no answer within 1 s":  # a hung one (the others answer at once)
            spans.append((start, time.monotonic()))
        return health

    monkeypatch.setattr(statusprobe, "http_health", noted)
    facts = statusprobe.gather(root, timeout=1)
    assert len(spans) == 6, spans
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    for name, port in remote:
        assert facts.health[name].error == "no answer within 1 s", (name, facts.health[name])
    assert facts.cluster.main_health.error == "no answer within 1 s"
    assert [(w.name, w.address, w.health.error) for w in facts.cluster.writers] == [
        ("events-1-hostb", f"{HOSTB}:{replication_port('events', 1)}", "no answer within 1 s")]
    assert facts.cluster.redis_reach.ok
    rows = status.evaluate(facts)
    by = {(r.check, r.subject): r for r in rows}
    assert by[("process", "sync-2-hostb")].detail == \
        f"on hostb ({HOSTB}:{http_port('sync', 2)}): /health: no answer within 1 s"
    assert by[("process", "events-1-hostb")].status == FAIL
    assert by[("redis", f"127.0.0.1:{redis_server.port}")].status == OK


def test_netprobe_answers_are_classified_by_who_answered(redis_server):
    wrong = statusdeployed.reach_of(netprobe.redis_auth(redis_server, "wrong", 2))
    assert (wrong.ok, wrong.reached, wrong.refused) == (False, True, True)
    right = statusdeployed.reach_of(netprobe.redis_auth(redis_server, PASSWORD, 2))
    assert (right.ok, right.reached, right.refused) == (True, True, False)
    closed = statusdeployed.reach_of(netprobe.redis_auth(Address("127.0.0.1", free_port()), PASSWORD, 1))
    assert (closed.ok, closed.reached, closed.refused) == (False, False, False)
    # Something that is not Redis (here an HTTP server's answer) is reached, not a refusal.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    other = statusdeployed.reach_of(netprobe.redis_auth(Address("127.0.0.1", server.getsockname()[1]), PASSWORD, 2))
    thread.join(2)
    server.close()
    assert (other.ok, other.reached, other.refused) == (False, True, False)
    assert "\n" not in other.detail and other.detail.endswith("HTTP/1.1 400 Bad Request")
