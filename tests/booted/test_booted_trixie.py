"""Debian 13 trixie: the package built once (on bookworm) installs and runs there.

A trixie root (harness.ensure_base_root(suite="trixie"): the same packages as
the bookworm root, so systemd 257, PostgreSQL 17, Redis 8, nginx 1.26, Python
3.13) and the stand-in matrix-synapse-py3 built for trixie (its venv on
trixie's Python 3.13, tests/standin/build-standin ... trixie).  systemd 257
boots under nspawn on this cgroup v1 host as it is (sid's 258+ needs
unified_cgroup).

To keep the module short, ONE booted container walks through what an admin
does, in order (each test continues where the previous one stopped): install
with the default answers, status, reconfigure, a Matrix client's round trip
through nginx, Synapse upgraded (the trigger), purge, then the guide's way on a
Redis whose password is in an included file.  A second container is an image
build booted for the first time; a third has Redis and Valkey installed and
moves from one to the other.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from support import standin
from matrix_synapse_workers.core.catalog import ROLES
from matrix_synapse_workers.core.plan import worker_name
from matrix_synapse_workers.core.sizing import sized_counts
from booted_config import SERVER_NAME, STANDIN_MAIN_URL, VHOST
from harness import Container
from test_scenarios import (SOCKETS, active_since, assert_all_healthy, install_workers, poll, preseed,
                            reconfigure, round_trip_through_nginx, unit_of, workers_on_disk)

SUITE = "trixie"
OLD_SYNAPSE, NEW_SYNAPSE = "1.163.1", "1.163.2"
REDIS_UNIT = "redis-server@matrix-synapse.service"
REDIS_SOCKET = "/run/redis-matrix-synapse/redis-server.sock"


def build_standin(version: str, out: Path) -> Path:
    return standin.build_standin(version, out, SUITE)


@pytest.fixture(scope="module")
def trixie_root(booted_host: None) -> Path:
    return harness.ensure_base_root(suite=SUITE)


@pytest.fixture(scope="module")
def trixie_standins(booted_host: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("standin-trixie")
    return {v: build_standin(v, out / v) for v in (OLD_SYNAPSE, NEW_SYNAPSE)}


def _standin_layer(name: str, root: Path, deb: Path) -> Path:
    """``root`` plus the stand-in ``deb`` on PostgreSQL, cached as the layer ``name``."""
    setup = functools.partial(harness.install_standin_synapse, deb=deb, server_name=SERVER_NAME)
    return harness.ensure_derived_root(
        name, root, setup,
        inputs=[inspect.getsource(harness.synapse_setup), repr(harness.synapse_settings()),
                harness._SYNAPSE_SETUP_PY, STANDIN_MAIN_URL])


@pytest.fixture(scope="module")
def trixie_synapse_root(trixie_root: Path, trixie_standins: dict[str, Path]) -> Path:
    """trixie + the older stand-in Synapse on PostgreSQL 17, cached as a layer."""
    return _standin_layer("trixie-standin-synapse", trixie_root, trixie_standins[OLD_SYNAPSE])


class Walk:
    """The one booted trixie system the tests below walk through, and the steps taken on it.

    Each test names the state it starts from (:meth:`at`).  Steps it needs that have not been
    taken are taken first, so a test run alone (``-k``) starts where it would in the module's
    order; a test that would start from a state the walk is already past fails and says so,
    instead of asserting on a system other tests changed under it.
    """

    ORDER = ("booted", "installed", "reconfigured", "upgraded", "purged")

    def __init__(self, c: Container, package_deb: Path, standins: dict[str, Path]):
        self.c, self.package_deb, self.standins = c, package_deb, standins
        self.taken = ["booted"]

    def at(self, state: str) -> Container:
        wanted = self.ORDER.index(state)
        if self.ORDER.index(self.taken[-1]) > wanted:
            pytest.fail(f"this test starts from the state {state!r}, but the walk is past it "
                        f"({' -> '.join(self.taken)}): run this module in its order", pytrace=False)
        for step in self.ORDER[len(self.taken):wanted + 1]:
            self.take(step)
        return self.c

    def take(self, step: str) -> None:
        """Take ``step`` (from the state before it); each test of a step calls it once."""
        assert self.taken[-1] == self.ORDER[self.ORDER.index(step) - 1], (step, self.taken)
        if step == "installed":
            install_workers(self.c, self.package_deb, "")
        elif step == "reconfigured":
            # A stream writer (typing) changes the shared config: every process restarts, on purpose.
            reconfigure(self.c, preseed("custom", "sync, client, typing", "sync:2"))
        elif step == "upgraded":
            self.c.install_debs([self.standins[NEW_SYNAPSE]])  # its postinst restarts main; our trigger the rest
        elif step == "purged":
            self.c.exec(["dpkg", "--purge", "matrix-synapse-workers"], timeout=600)
        self.taken.append(step)


@pytest.fixture(scope="module")
def walk(trixie_synapse_root: Path, package_deb: Path, trixie_standins: dict[str, Path]) -> Iterator[Walk]:
    with Container(trixie_synapse_root, name="trixie") as c:
        yield Walk(c, package_deb, trixie_standins)


def status(c: Container) -> tuple[int, dict[str, Any]]:
    r = c.run(["matrix-synapse-workers", "status", "--json"], check=False, timeout=60)
    assert r.returncode in (0, 4, 5), (r.returncode, r.stdout, r.stderr)  # healthy, degraded, broken
    return r.returncode, json.loads(r.stdout)


def wait_healthy(c: Container, timeout: float = 90) -> dict[str, Any]:
    """Status until healthy (Synapse tells systemd READY before its Redis link is up)."""
    deadline = time.monotonic() + timeout
    while True:
        code, data = status(c)
        if code == 0:
            return data
        if time.monotonic() > deadline:
            problems = [ch for ch in data["checks"] if ch["status"] in ("warn", "fail")]
            raise AssertionError(f"status not healthy within {timeout} s: {json.dumps(problems, indent=1)}")
        time.sleep(1)


def subscribed_clients(c: Container) -> int:
    """Connections to our Redis that hold a subscription (Synapse's replication channel)."""
    out = c.run(["redis-cli", "-s", REDIS_SOCKET, "CLIENT", "LIST"]).stdout
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]
    return sum(1 for f in fields if int(f.get("sub", "0")) + int(f.get("psub", "0")) + int(f.get("ssub", "0")) > 0)


def nginx_check(c: Container) -> str:
    """nginx -t's whole output; it must hold no warning (an [emerg] fails the command)."""
    r = c.run(["nginx", "-t"])
    out = r.stdout + r.stderr
    assert "[warn]" not in out and "[emerg]" not in out, out
    return out


def test_trixie_boots_with_its_own_releases(walk: Walk) -> None:
    c = walk.at("booted")
    assert c.last_state == "running", c.last_failed_units
    assert c.read_file("/etc/os-release").count('VERSION_CODENAME=trixie') == 1
    assert c.run(["systemctl", "--version"]).stdout.startswith("systemd 257")
    assert c.run(["redis-server", "--version"]).stdout.startswith("Redis server v=8.")
    assert "nginx/1.26." in c.run(["nginx", "-v"]).stderr
    assert c.run(["pg_lsclusters", "-h"]).stdout.split()[:4] == ["17", "main", "5432", "online"]
    assert c.run(["readlink", "-f", "/opt/venvs/matrix-synapse/bin/python"]).stdout.strip() == \
        "/usr/bin/python3.13"
    harness.wait_for_http(c, STANDIN_MAIN_URL, "/health", timeout=60)


def test_install_with_the_default_answers(walk: Walk) -> None:
    c = walk.at("booted")
    walk.take("installed")
    # The default preset is auto, which sizes the workers for the machine as the package
    # sees it from inside the container: exactly those workers.
    shown = c.run(["debconf-show", "matrix-synapse-workers"]).stdout
    assert re.search(r"^\*? *matrix-synapse-workers/preset: auto$", shown, re.M), shown
    cores, memory = map(int, c.run(["python3", "-c", "from matrix_synapse_workers.system.machine import "
                                    "this_machine; print(*this_machine())"]).stdout.split())
    names = workers_on_disk(c)
    assert names == sorted(worker_name(ROLES[role], i) for role, count in sized_counts(cores, memory).items()
                           for i in range(1, count + 1)), (cores, memory, names)
    assert_all_healthy(c, names)
    # Redis 8 runs the instance config this package renders, unchanged.
    assert c.run(["systemctl", "is-active", REDIS_UNIT]).stdout.strip() == "active"
    assert c.run(["redis-cli", "-s", REDIS_SOCKET, "CONFIG", "GET", "port"]).stdout.split()[-1] == "0"
    assert c.run(["redis-cli", "-s", REDIS_SOCKET, "INFO", "server"]).stdout.count("redis_version:8.") == 1
    # Every process (main and each worker) holds its replication subscription.
    poll(lambda: subscribed_clients(c) >= len(names) + 1, 60, "every process subscribed in Redis")
    # The admin includes the routing snippet in a vhost, as README.Debian shows.
    c.write_file("/etc/nginx/sites-enabled/matrix-test", VHOST)
    nginx_check(c)
    c.run(["systemctl", "reload-or-restart", "nginx.service"])


def test_status_is_healthy(walk: Walk) -> None:
    c = walk.at("installed")
    data = wait_healthy(c)
    assert data["status"] == "healthy"
    processes = [ch for ch in data["checks"] if ch["check"] == "process"]
    assert [ch["subject"] for ch in processes] == ["main", *workers_on_disk(c)]
    assert all("subscribed" in ch["detail"] for ch in processes), processes
    # redis-server.service, which apt enabled, still runs beside our instance: said, not stopped.
    [stock] = [ch for ch in data["checks"] if ch["subject"] == "redis-server.service"]
    assert stock["status"] == "info" and "Synapse does not use" in stock["detail"], stock
    assert c.run(["systemctl", "is-active", "redis-server.service"]).stdout.strip() == "active"
    assert "127.0.0.1:6379" in c.run(["ss", "-Hltn"]).stdout


def test_reconfigure(walk: Walk) -> None:
    c = walk.at("installed")
    walk.take("reconfigured")
    names = ["client-1", "sync-1", "sync-2", "typing-1"]
    assert workers_on_disk(c) == names
    assert_all_healthy(c, names)
    poll(lambda: subscribed_clients(c) >= len(names) + 1, 60, "every process subscribed in Redis")
    wait_healthy(c)


def test_client_round_trip_through_nginx(walk: Walk) -> None:
    c = walk.at("reconfigured")
    round_trip_through_nginx(c, "trixie-alice")
    nginx_check(c)


def test_synapse_upgrade_restarts_the_workers_on_the_new_version(walk: Walk) -> None:
    c = walk.at("reconfigured")
    names = workers_on_disk(c)
    walk.take("upgraded")
    for name in ["main", *names]:
        harness.wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=90)
    versions = {n: harness.http_unix(c, f"{SOCKETS}/{n}.sock", "GET", "/health").headers.get("server")
                for n in ["main", *names]}
    assert set(versions.values()) == {f"Synapse/{NEW_SYNAPSE}"}, versions
    main_started = active_since(c, "matrix-synapse.service")
    assert all(active_since(c, unit_of(n)) >= main_started for n in names)
    wait_healthy(c)


def test_purge_leaves_a_working_single_process(walk: Walk) -> None:
    c = walk.at("upgraded")
    walk.take("purged")
    harness.wait_for_http(c, STANDIN_MAIN_URL, "/health", timeout=90)
    harness.register_user(c, STANDIN_MAIN_URL, "trixie-dave", "dave-password-1")
    leftovers = c.run("ls -d /etc/matrix-synapse/workers /etc/matrix-synapse/worker-logs "
                      "/etc/matrix-synapse/conf.d/workers.yaml /etc/matrix-synapse/conf.d/redis.yaml "
                      "/etc/redis/redis-matrix-synapse.conf /var/lib/matrix-synapse-workers "
                      "/etc/nginx/conf.d/matrix-synapse-workers.conf 2>/dev/null", check=False).stdout
    assert leftovers.strip() == ""
    assert c.run(["dpkg-statoverride", "--list", SOCKETS], check=False).stdout.strip() == ""
    assert c.run(["systemctl", "is-active", REDIS_UNIT], check=False).stdout.strip() != "active"


def test_image_build_then_first_boot(trixie_root: Path, trixie_standins: dict[str, Path],
                                     package_deb: Path) -> None:
    with Container(trixie_root, name="trixie-image", boot=False) as c:
        c.install_debs([trixie_standins[NEW_SYNAPSE]],
                       preseed=f"matrix-synapse-py3 matrix-synapse/server-name string {SERVER_NAME}\n")
        harness.synapse_setup(c, SERVER_NAME)
        done = install_workers(c, package_deb, preseed("custom", "sync, client"))
        assert "throwaway key" in done.stdout + done.stderr
        c.boot()
        assert c.last_state == "running", c.last_failed_units
        c.wait_until(["systemctl", "is-active", "--quiet", unit_of("sync-1"), unit_of("client-1")],
                     timeout=180)
        assert_all_healthy(c, ["client-1", "sync-1"])
        round_trip_through_nginx(c, "trixie-erin")
        nginx_check(c)
        wait_healthy(c)


# --- Redis with a password, the guide's way (the same container, after the purge) -----------

GUIDE_PASSWORD = "trixie-guide-password"
GUIDE_PASSWORD_FILE = "/etc/matrix-synapse/redis-guide-password"
GUIDE_SOCKET = "/run/redis/redis-server.sock"


def guide(types: str) -> str:
    return preseed("custom", types) + "matrix-synapse-workers matrix-synapse-workers/redis select guide\n"


def subscribed_on(c: Container, cli: str, socket: str, password: str | None = None) -> int:
    auth = ["--no-auth-warning", "-a", password] if password else []
    out = c.run([cli, "-s", socket, *auth, "CLIENT", "LIST"]).stdout
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]
    return sum(1 for f in fields if int(f.get("sub", "0")) + int(f.get("psub", "0")) > 0)


def test_guide_mode_on_a_redis_whose_password_is_in_an_included_file(walk: Walk, package_deb: Path) -> None:
    """An admin's Redis that requires a password, set in a file redis.conf includes: Synapse
    gets it from a file only it and root read, never inline; every process subscribes.
    From the purged system (Synapse alone again), and purged again at its end."""
    c = walk.at("purged")
    c.write_file("/etc/redis/local.conf", f"requirepass {GUIDE_PASSWORD}\n", mode=0o640)
    c.run(["chown", "redis:redis", "/etc/redis/local.conf"])
    c.run(["sed", "-i", r"s|^# include /path/to/local.conf$|&\ninclude /etc/redis/local.conf|",
           "/etc/redis/redis.conf"])
    c.run(["systemctl", "restart", "redis-server.service"])
    admin_conf = c.read_file("/etc/redis/redis.conf")
    assert "\ninclude /etc/redis/local.conf\n" in admin_conf

    done = install_workers(c, package_deb, guide("sync, client"))
    out = done.stdout + done.stderr
    assert f"wrote {GUIDE_PASSWORD_FILE}" in out, out
    redis_yaml = c.read_file("/etc/matrix-synapse/conf.d/redis.yaml")
    assert GUIDE_PASSWORD not in redis_yaml and "password:" not in redis_yaml
    assert f"password_path: {GUIDE_PASSWORD_FILE}" in redis_yaml and f"path: {GUIDE_SOCKET}" in redis_yaml
    assert c.run(["stat", "-c", "%U %G %a", GUIDE_PASSWORD_FILE]).stdout.split() == [
        "root", "matrix-synapse", "640"]
    assert c.run(["runuser", "-u", "www-data", "--", "cat", GUIDE_PASSWORD_FILE], check=False).returncode != 0
    names = workers_on_disk(c)
    assert_all_healthy(c, names)
    poll(lambda: subscribed_on(c, "redis-cli", GUIDE_SOCKET, GUIDE_PASSWORD) >= len(names) + 1, 60,
         "every process subscribed with the password")
    data = wait_healthy(c)
    [row] = [ch for ch in data["checks"] if ch["check"] == "redis" and ch["subject"] == f"unix:{GUIDE_SOCKET}"]
    assert row["status"] == "ok", row

    # status checks AUTH: a wrong password in Synapse's copy is reported.
    c.run(["sh", "-c", f"echo wrong > {GUIDE_PASSWORD_FILE}"])
    code, data = status(c)
    [row] = [ch for ch in data["checks"] if ch["check"] == "redis" and ch["subject"] == f"unix:{GUIDE_SOCKET}"]
    assert code == 5 and row["status"] == "fail", row
    c.run(["sh", "-c", f"echo {GUIDE_PASSWORD} > {GUIDE_PASSWORD_FILE}"])

    c.exec(["dpkg", "--purge", "matrix-synapse-workers"], timeout=600)
    assert c.read_file("/etc/redis/redis.conf") == admin_conf
    assert not c.exists(GUIDE_PASSWORD_FILE)


# --- Valkey -----------------------------------------------------------------------------------

VALKEY_UNIT = "valkey-server@matrix-synapse.service"
VALKEY_SOCKET = "/run/valkey-matrix-synapse/valkey-server.sock"
VALKEY_GUIDE_SOCKET = "/run/valkey/valkey-server.sock"


@pytest.fixture(scope="module")
def valkey_synapse_root(booted_host: None, trixie_standins: dict[str, Path]) -> Path:
    """trixie with redis-server AND valkey-server installed (both stock instances want
    127.0.0.1:6379: Valkey's fails at boot, as on a host where an admin added it), and the
    stand-in Synapse on PostgreSQL; cached."""
    root = harness.ensure_base_root(suite=SUITE, extra=("valkey-server",))
    return _standin_layer("trixie-valkey-standin-synapse", root, trixie_standins[NEW_SYNAPSE])


def test_switching_from_redis_to_valkey_then_valkey_the_guides_way(valkey_synapse_root: Path,
                                                                   package_deb: Path) -> None:
    with Container(valkey_synapse_root, name="trixie-valkey") as c:
        c.write_file("/etc/nginx/sites-enabled/matrix-test", VHOST)  # the admin's vhost
        install_workers(c, package_deb, preseed("custom", "sync, client"))
        names = workers_on_disk(c)
        # Both installed, nothing deployed yet: Redis, the first alternative of Depends.
        assert c.run(["systemctl", "is-active", REDIS_UNIT]).stdout.strip() == "active"

        # The admin moves to Valkey: Redis goes, then the package is reconfigured.
        c.run(["dpkg", "--purge", "redis-server"])
        c.run(["systemctl", "restart", "valkey-server.service"])  # 6379 is free now
        r = c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)
        out = r.stdout + r.stderr
        assert "Synapse now uses valkey-server instead of redis-server" in out, out
        assert f"stopped and disabled {REDIS_UNIT}" in out, out
        assert c.run(["systemctl", "is-active", VALKEY_UNIT]).stdout.strip() == "active"
        assert c.run(["systemctl", "is-enabled", VALKEY_UNIT]).stdout.strip() == "enabled"
        assert c.run(["systemctl", "is-active", REDIS_UNIT], check=False).stdout.strip() != "active"
        assert not c.exists("/etc/redis/redis-matrix-synapse.conf")
        assert c.run(["stat", "-c", "%U %G %a", "/etc/valkey/valkey-matrix-synapse.conf"]).stdout.split() == [
            "valkey", "valkey", "640"]
        assert c.run(["valkey-cli", "-s", VALKEY_SOCKET, "CONFIG", "GET", "port"]).stdout.split()[-1] == "0"
        assert c.run(["valkey-cli", "-s", VALKEY_SOCKET, "CONFIG", "GET", "save"]).stdout.split("\n")[1] == ""
        assert "valkey" in c.run(["id", "-nG", "matrix-synapse"]).stdout.split()
        assert_all_healthy(c, names)
        poll(lambda: subscribed_on(c, "valkey-cli", VALKEY_SOCKET) >= len(names) + 1, 60,
             "every process subscribed in Valkey")
        data = wait_healthy(c)
        units = {ch["subject"]: ch for ch in data["checks"] if ch["check"] == "redis"}
        assert units[VALKEY_UNIT]["status"] == "ok", units
        assert units["valkey-server.service"]["status"] == "info", units  # the stock one, said not stopped
        assert c.run(["systemctl", "is-active", "valkey-server.service"]).stdout.strip() == "active"

        # Valkey the guide's way: the right file is edited.
        stock = c.read_file("/etc/valkey/valkey.conf")
        reconfigure(c, guide("sync, client"))
        edited = c.read_file("/etc/valkey/valkey.conf")
        assert f"\nunixsocket {VALKEY_GUIDE_SOCKET}\n" in edited and "\nport 0\n" in edited
        assert c.run(["systemctl", "is-active", VALKEY_UNIT], check=False).stdout.strip() != "active"
        assert_all_healthy(c, names)
        poll(lambda: subscribed_on(c, "valkey-cli", VALKEY_GUIDE_SOCKET) >= len(names) + 1, 60,
             "every process subscribed in the stock Valkey")
        wait_healthy(c)
        c.exec(["dpkg", "--purge", "matrix-synapse-workers"], timeout=600)
        assert c.read_file("/etc/valkey/valkey.conf") == stock
        assert not c.exists("/etc/valkey/valkey-matrix-synapse.conf")
