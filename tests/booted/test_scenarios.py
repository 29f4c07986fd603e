"""What an admin lives through, on a booted bookworm system with real Synapse.

Each test starts from the stand-in matrix-synapse-py3 (Synapse from PyPI)
already pointed at PostgreSQL (a cached layer, see conftest.synapse_root), then
installs matrix-synapse-workers with preseeded debconf answers, exactly as
`apt install` would, and checks the running result.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

import harness
from support.standin import build_standin
from booted_config import NGINX, SERVER_NAME as SERVER, VHOST, container_name
from harness import Container, http_unix, login, register_user, wait_for_http

SOCKETS = "/run/matrix-synapse"


def poll(check, timeout: float, what: str) -> None:
    """Wait until check() is true (for conditions that are not one command)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.5)


def preseed(preset: str = "small", types: str = "", counts: str = "") -> str:
    lines = [f"matrix-synapse-workers matrix-synapse-workers/preset select {preset}"]
    if types:
        lines.append(f"matrix-synapse-workers matrix-synapse-workers/worker-types multiselect {types}")
    lines.append(f"matrix-synapse-workers matrix-synapse-workers/worker-counts string {counts}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def synapse(synapse_root: Path, request: pytest.FixtureRequest):
    """A booted container with Synapse running on PostgreSQL, our package not installed."""
    with Container(synapse_root, name=container_name(request.node.name)) as c:
        yield c


@pytest.fixture
def synapse_unbooted(synapse_root: Path, request: pytest.FixtureRequest):
    """The same, prepared but not booted: an image being built."""
    with Container(synapse_root, name=container_name(request.node.name), boot=False) as c:
        yield c


def serve_through_nginx(c: Container, vhost: str = VHOST) -> None:
    """The admin's vhost in place, checked and loaded, and the client API answering through it."""
    c.write_file("/etc/nginx/sites-enabled/matrix-test", vhost)
    c.run(["nginx", "-t", "-q"])
    c.run(["systemctl", "reload-or-restart", "nginx.service"])
    harness.wait_for_http(c, NGINX, "/_matrix/client/versions", timeout=60)


def install_workers(c: Container, deb: Path, answers: str):
    return c.install_debs([deb], preseed=answers)


def reconfigure(c: Container, answers: str) -> None:
    c.exec(["debconf-set-selections"], input=answers)
    c.exec(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)


def workers_on_disk(c: Container) -> list[str]:
    out = c.run("ls /etc/matrix-synapse/workers/", check=False).stdout.split()
    return sorted(name[:-5] for name in out if name.endswith(".yaml"))


def main_pid(c: Container, unit: str) -> int:
    return int(c.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip())


def unit_of(name: str) -> str:
    return f"matrix-synapse-worker@{name}.service"


def assert_all_healthy(c: Container, names: list[str]) -> None:
    assert c.run(["systemctl", "is-active", "matrix-synapse.target"]).stdout.strip() == "active"
    for unit in ["matrix-synapse.service", *map(unit_of, names)]:
        state = c.run(["systemctl", "show", "-P", "ActiveState,Type", unit]).stdout.split()
        assert state == ["notify", "active"] or sorted(state) == ["active", "notify"], (unit, state)
    for name in ["main", *names]:
        wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=60)


def socket_modes(c: Container) -> dict[str, str]:
    out = c.run(["stat", "-c", "%n %U %G %a", *c.run(f"ls -d {SOCKETS} {SOCKETS}/*.sock").stdout.split()]).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


def redis_clients(c: Container) -> int:
    out = c.run(["redis-cli", "-s", "/run/redis-matrix-synapse/redis-server.sock", "CLIENT", "LIST"]).stdout
    return len([l for l in out.splitlines() if "cmd=" in l])


def test_fresh_install_with_a_preset(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, client, typing", "sync:2"))
    names = workers_on_disk(c)
    assert names == ["client-1", "sync-1", "sync-2", "typing-1"]
    assert_all_healthy(c, names)
    modes = socket_modes(c)
    assert modes[SOCKETS] == "matrix-synapse clubmatrix 2750"
    assert modes[f"{SOCKETS}/replication.sock"] == "matrix-synapse clubmatrix 600"
    assert modes[f"{SOCKETS}/typing-1-replication.sock"] == "matrix-synapse clubmatrix 600"
    for name in ["main", *names]:
        assert modes[f"{SOCKETS}/{name}.sock"] == "matrix-synapse clubmatrix 660"
    # Redis only on its socket: nothing listens on TCP 6379, the main Redis untouched.
    listening = c.run(["ss", "-Hltnp"]).stdout
    assert "redis-server" not in listening or ":6379" in listening  # the admin's own Redis
    own = c.run(["redis-cli", "-s", "/run/redis-matrix-synapse/redis-server.sock", "CONFIG", "GET", "port"]).stdout
    assert own.split()[-1] == "0"
    # Each process holds its Redis connections (2 per process: subscribe + commands).
    poll(lambda: redis_clients(c) >= 2 * (len(names) + 1), 60, "every process connected to Redis")
    # www-data can reach the sockets through the group, others cannot.
    assert c.run(["id", "-nG", "www-data"]).stdout.split().count("clubmatrix") == 1
    r = c.run(["runuser", "-u", "www-data", "--", "curl", "-sf", "--unix-socket",
               f"{SOCKETS}/sync-1.sock", "http://localhost/health"], check=False)
    assert r.returncode == 0 and r.stdout == "OK"
    r = c.run(["runuser", "-u", "nobody", "--", "curl", "-sf", "--unix-socket",
               f"{SOCKETS}/sync-1.sock", "http://localhost/health"], check=False)
    assert r.returncode != 0


def test_traffic_reaches_the_worker_meant_for_it(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, client, typing"))
    assert_all_healthy(c, ["client-1", "sync-1", "typing-1"])
    register_user(c, f"{SOCKETS}/main.sock", "alice", "alice-password-1")
    token = login(c, f"{SOCKETS}/client-1.sock", "alice", "alice-password-1")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    room = http_unix(c, f"{SOCKETS}/client-1.sock", "POST", "/_matrix/client/v3/createRoom",
                     {"name": "lobby"}, auth)
    assert room.status == 200, room.text
    room_id = room.json()["room_id"]
    sent = http_unix(c, f"{SOCKETS}/client-1.sock", "PUT",
                     f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                     {"msgtype": "m.text", "body": "hello workers"}, auth)
    assert sent.status == 200, sent.text
    typing = http_unix(c, f"{SOCKETS}/typing-1.sock", "PUT",
                       f"/_matrix/client/v3/rooms/{room_id}/typing/@alice:{SERVER}",
                       {"typing": True, "timeout": 5000}, auth)
    assert typing.status == 200, typing.text
    synced = http_unix(c, f"{SOCKETS}/sync-1.sock", "GET", "/_matrix/client/v3/sync?timeout=0", None, auth)
    assert synced.status == 200, synced.text
    events = synced.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e.get("content", {}).get("body") == "hello workers" for e in events)
    # Evidence from each worker's own access log.
    for name, path in (("sync-1", "/_matrix/client/v3/sync"), ("client-1", "/createRoom"),
                       ("typing-1", "/typing/")):
        c.wait_until(["grep", "-q", path, f"/var/log/matrix-synapse/{name}.log"], timeout=30)


def test_reconfigure_adding_a_sync_worker_keeps_the_others_running(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, client", "sync:1"))
    assert_all_healthy(c, ["client-1", "sync-1"])
    before = {u: main_pid(c, u) for u in ["matrix-synapse.service", unit_of("sync-1"), unit_of("client-1")]}
    token = register_user(c, f"{SOCKETS}/main.sock", "bob", "bob-password-1")["access_token"]
    errors, requests, stop = [], [0], threading.Event()

    def client_loop() -> None:
        while not stop.is_set():
            try:
                r = http_unix(c, f"{SOCKETS}/client-1.sock", "GET", "/_matrix/client/v3/account/whoami",
                              None, {"Authorization": f"Bearer {token}"}, timeout=10)
                if r.status != 200:
                    errors.append(r.status)
            except harness.HarnessError as e:
                errors.append(str(e))
            requests[0] += 1

    loop = threading.Thread(target=client_loop)
    loop.start()
    try:
        reconfigure(c, preseed("custom", "sync, client", "sync:2"))
    finally:
        stop.set()
        loop.join()
    assert workers_on_disk(c) == ["client-1", "sync-1", "sync-2"]
    assert_all_healthy(c, ["client-1", "sync-1", "sync-2"])
    after = {u: main_pid(c, u) for u in before}
    assert after == before
    assert requests[0] > 0 and errors == []


def test_reconfigure_removing_workers(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, client, typing", "sync:2"))
    assert_all_healthy(c, ["client-1", "sync-1", "sync-2", "typing-1"])
    reconfigure(c, preseed("custom", "sync", "sync:1"))
    assert workers_on_disk(c) == ["sync-1"]
    for gone in ("sync-2", "client-1", "typing-1"):
        assert c.run(["systemctl", "is-active", unit_of(gone)], check=False).stdout.strip() != "active"
        assert not c.exists(f"/etc/matrix-synapse/worker-logs/{gone}.yaml")
        assert not c.exists(f"{SOCKETS}/{gone}.sock") or c.run(
            ["curl", "-s", "--unix-socket", f"{SOCKETS}/{gone}.sock", "http://x/health"], check=False).returncode != 0
    assert_all_healthy(c, ["sync-1"])
    # Typing is served by main again.
    token = register_user(c, f"{SOCKETS}/main.sock", "carol", "carol-password-1")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    room_id = http_unix(c, f"{SOCKETS}/main.sock", "POST", "/_matrix/client/v3/createRoom", {}, auth).json()["room_id"]
    r = http_unix(c, f"{SOCKETS}/main.sock", "PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/@carol:{SERVER}",
                  {"typing": True, "timeout": 3000}, auth)
    assert r.status == 200, r.text


def test_reboot_brings_everything_back(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, typing"))
    names = ["sync-1", "typing-1"]
    assert_all_healthy(c, names)
    modes = socket_modes(c)
    c.reboot()
    c.wait_until(["systemctl", "is-active", "--quiet", *map(unit_of, names)], timeout=120)
    assert_all_healthy(c, names)
    assert socket_modes(c) == modes


def test_image_build_comes_up_at_first_boot(synapse_unbooted, package_deb):
    c = synapse_unbooted
    install_workers(c, package_deb, preseed("custom", "sync, client"))
    assert sorted(n for n in c.chroot_run("ls /etc/matrix-synapse/workers").stdout.split()) == [
        "client-1.yaml", "sync-1.yaml"]
    c.boot()
    c.wait_until(["systemctl", "is-active", "--quiet", unit_of("sync-1"), unit_of("client-1")], timeout=180)
    assert_all_healthy(c, ["client-1", "sync-1"])


@pytest.fixture
def bare_unbooted(base_root: Path, request: pytest.FixtureRequest):
    """A bookworm image being built: PostgreSQL, nginx and Redis installed, nothing running,
    Synapse not installed yet."""
    with Container(base_root, name=container_name(request.node.name), boot=False) as c:
        yield c


def round_trip_through_nginx(c: Container, user: str) -> None:
    """A Matrix client's round trip through the admin's vhost: log in, create a room,
    send a message, see it in /sync."""
    c.write_file("/etc/nginx/sites-enabled/matrix-test", VHOST)
    c.run(["nginx", "-t", "-q"])
    c.run(["systemctl", "reload-or-restart", "nginx.service"])
    wait_for_http(c, NGINX, "/_matrix/client/versions", timeout=60)
    register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")
    token = login(c, NGINX, user, f"{user}-password-1")["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    room = harness.http(c, NGINX, "POST", "/_matrix/client/v3/createRoom", {"name": "first boot"}, auth)
    assert room.status == 200, room.text
    room_id = room.json()["room_id"]
    sent = harness.http(c, NGINX, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                        {"msgtype": "m.text", "body": "hello from the image"}, auth)
    assert sent.status == 200, sent.text
    synced = harness.http(c, NGINX, "GET", "/_matrix/client/v3/sync?timeout=0", None, auth)
    assert synced.status == 200, synced.text
    events = synced.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e.get("content", {}).get("body") == "hello from the image" for e in events)


def test_image_build_without_a_signing_key_comes_up_at_first_boot(bare_unbooted, standin_deb, package_deb):
    """Issue 11: Synapse installed with starts held back has no signing key (its unit
    makes it at the first start); our install must still check and configure."""
    c = bare_unbooted
    key = "/etc/matrix-synapse/homeserver.signing.key"
    c.install_debs([standin_deb], preseed=f"matrix-synapse-py3 matrix-synapse/server-name string {SERVER}\n")
    harness.synapse_setup(c, SERVER)  # the image recipe points Synapse at PostgreSQL
    assert not c.exists(key)
    done = install_workers(c, package_deb, preseed("custom", "sync, client"))
    out = done.stdout + done.stderr
    assert f"signing key {key} does not exist yet" in out and "throwaway key" in out, out
    assert "skipped: PostgreSQL's connection limit was not checked" in out, out
    assert "3 Synapse processes open 3 database connections at start" in out, out
    assert not c.exists(key)
    assert sorted(c.chroot_run("ls /etc/matrix-synapse/workers").stdout.split()) == [
        "client-1.yaml", "sync-1.yaml"]
    c.boot()
    c.wait_until(["systemctl", "is-active", "--quiet", unit_of("sync-1"), unit_of("client-1")], timeout=180)
    assert_all_healthy(c, ["client-1", "sync-1"])
    # Main's ExecStartPre made the key, as Synapse's user; the workers started after main.
    assert c.run(["stat", "-c", "%U", key]).stdout.strip() == "matrix-synapse"
    main_started = active_since(c, "matrix-synapse.service")
    assert all(active_since(c, unit_of(n)) >= main_started for n in ["client-1", "sync-1"])
    round_trip_through_nginx(c, "erin")
    # The check the image build skipped runs now.
    status = json.loads(c.run(["matrix-synapse-workers", "status", "--json"], check=False).stdout)
    [database] = [r for r in status["checks"] if r["check"] == "database"]
    assert database["status"] == "ok" and "3 processes x cp_max 5 = 15" in database["detail"], database


def test_crashed_worker_is_restarted(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync"))
    assert_all_healthy(c, ["sync-1"])
    old = main_pid(c, unit_of("sync-1"))
    c.run(["kill", "-9", str(old)])
    poll(lambda: main_pid(c, unit_of("sync-1")) not in (0, old), 60, "sync-1 restarted by systemd")
    wait_for_http(c, f"{SOCKETS}/sync-1.sock", "/health", timeout=60)


def test_purge_leaves_a_working_single_process(synapse, package_deb):
    c = synapse
    install_workers(c, package_deb, preseed("custom", "sync, typing"))
    assert_all_healthy(c, ["sync-1", "typing-1"])
    c.exec(["dpkg", "--purge", "matrix-synapse-workers"], timeout=600)
    wait_for_http(c, "http://127.0.0.1:8008", "/health", timeout=60)
    register_user(c, "http://127.0.0.1:8008", "dave", "dave-password-1")
    leftovers = c.run("ls /etc/matrix-synapse/workers /etc/matrix-synapse/worker-logs "
                      "/etc/matrix-synapse/conf.d/workers.yaml /etc/matrix-synapse/conf.d/redis.yaml "
                      "/etc/redis/redis-matrix-synapse.conf /var/lib/matrix-synapse-workers 2>/dev/null",
                      check=False).stdout.strip()
    assert leftovers == ""
    assert c.run(["dpkg-statoverride", "--list", SOCKETS], check=False).stdout.strip() == ""


@pytest.fixture(scope="session")
def old_standin_deb(tmp_path_factory) -> Path:
    """The stand-in at the previous Synapse release, to upgrade from."""
    return build_standin("1.163.1", tmp_path_factory.mktemp("standin-old"))


def server_versions(c: Container, names: list[str]) -> dict[str, str]:
    return {n: http_unix(c, f"{SOCKETS}/{n}.sock", "GET", "/health").headers.get("server", "")
            for n in ["main", *names]}


def active_since(c: Container, unit: str) -> int:
    return int(c.run(["systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", unit]).stdout)


def test_synapse_upgrade_restarts_workers_after_main(synapse, old_standin_deb, standin_deb, package_deb):
    c = synapse
    # Go back to the older Synapse first (the admin's starting point), then deploy workers.
    c.install_debs([old_standin_deb])
    install_workers(c, package_deb, preseed("custom", "sync, client, typing"))
    names = ["client-1", "sync-1", "typing-1"]
    assert_all_healthy(c, names)
    assert set(server_versions(c, names).values()) == {"Synapse/1.163.1"}
    c.install_debs([standin_deb])  # the upgrade: its own postinst restarts only main
    for name in names:
        wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=90)
    assert set(server_versions(c, names).values()) == {"Synapse/1.163.2"}
    main_started = active_since(c, "matrix-synapse.service")
    assert all(active_since(c, unit_of(n)) >= main_started for n in names)
