"""Apache 2.4, Caddy 2 and HAProxy in front, nginx absent, on bookworm and trixie.

One booted container per release (a cached layer above the stand-in Synapse
root: nginx purged, and the three servers' .debs from that release's archive,
since containers have no network) serves the three servers in turn.  For each,
as an admin does it: the server installed (apt, from those .debs) and serving
the admin's site that proxies Synapse's single process as Synapse's own
reverse-proxy documentation shows; then ``dpkg -i`` of this package, which
detects that server; then the site changed the way the package says (``status``
names the line to add).  Through it: a client's round trip, /sync sticky per
user, the sync pool stopped (main answers), the client pool stopped (main takes
a POST nothing was sent of), and a POST whose worker died while handling it:
never sent again (the client gets the 502).  Then the package and the server are
purged, and the next server goes in.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import harness
from booted_config import SERVER_NAME, container_name
from harness import Container, http, login, psql, register_user
from test_booted_fallback import hold_table
from test_booted_trixie import trixie_root, trixie_standins, trixie_synapse_root  # noqa: F401 (fixtures)
from test_scenarios import SOCKETS, assert_all_healthy, install_workers, preseed, unit_of

#: The .debs of each server (and what it needs beyond the root), in the layer.
DEBS = "/var/cache/msw-test-webservers"
PACKAGES = {"apache": ("apache2",), "caddy": ("caddy",), "haproxy": ("haproxy",)}
#: The user each server runs as: the admin's answer to the web server user question.
USERS = {"apache": "www-data", "caddy": "caddy", "haproxy": "haproxy"}
UNITS = {"apache": "apache2.service", "caddy": "caddy.service", "haproxy": "haproxy.service"}
SITE = "http://127.0.0.1"
WORKERS = ["client-1", "sync-1", "sync-2"]
SYNC_POOL = ["sync-1", "sync-2"]
LOGS = {name: f"/var/log/matrix-synapse/{name}.log" for name in WORKERS}
LOGS["main"] = "/var/log/matrix-synapse/homeserver.log"
SERVERS = ("apache", "caddy", "haproxy")
#: Each server on bookworm, Apache on trixie: about 3 minutes each, so CI (a 60-minute
#: budget) runs four; MSW_WEBSERVERS_EVERY_RELEASE=1 runs all three on trixie too (18 min).
#: A known defect, not a limit of the test: HAProxy sometimes sends a POST whose worker died
#: while handling it on to main (a createRoom answered 200 by main: run twice), sometimes
#: answers 503.  Marked so CI stays honest about it until the renderer is fixed.
_HAPROXY_RESENDS = pytest.mark.xfail(
    reason="HAProxy may re-send a POST a dead worker had taken to main (issue 27: open defect)",
    strict=False)
CASES = [("bookworm", s) if s != "haproxy" else pytest.param("bookworm", s, marks=_HAPROXY_RESENDS)
         for s in SERVERS] + [
    ("trixie", s) for s in (SERVERS if os.environ.get("MSW_WEBSERVERS_EVERY_RELEASE") == "1"
                            else ("apache",))]
_probe = itertools.count(1)

# The admin's site before the package: Synapse's single process on 8008, as
# Synapse's reverse-proxy documentation shows for each server.
APACHE_BEFORE = """<VirtualHost *:80>
    ServerName example.test
    AllowEncodedSlashes NoDecode
    ProxyPreserveHost on
    ProxyPass /_matrix http://127.0.0.1:8008/_matrix nocanon
    ProxyPassReverse /_matrix http://127.0.0.1:8008/_matrix
    ProxyPass /_synapse/client http://127.0.0.1:8008/_synapse/client nocanon
    ProxyPassReverse /_synapse/client http://127.0.0.1:8008/_synapse/client
</VirtualHost>
"""
APACHE_AFTER = """<VirtualHost *:80>
    ServerName example.test
    Include /etc/apache2/matrix-synapse-workers.conf
</VirtualHost>
"""
CADDY_BEFORE = """:80 {
\treverse_proxy /_matrix/* 127.0.0.1:8008
\treverse_proxy /_synapse/client/* 127.0.0.1:8008
}
"""
CADDY_AFTER = """:80 {
\timport /etc/caddy/matrix-synapse-workers.caddy
}
"""
HAPROXY_BEFORE = """
frontend matrix
    bind :80
    mode http
    use_backend matrix if { path_beg /_matrix/ /_synapse/client/ }

backend matrix
    mode http
    server synapse 127.0.0.1:8008
"""
HAPROXY_AFTER = """
frontend matrix
    bind :80
    mode http
    use_backend msw_entry if { path_beg /_matrix/ /_synapse/client/ }
"""


# --- the layer ---------------------------------------------------------------------------------

def stash_webservers(c: Container, parent: str, packages: dict[str, tuple[str, ...]]) -> None:
    """nginx purged; each server's .debs (what it needs beyond this root) under DEBS/<server>,
    downloaded by the root's own apt (its release, its archive keys) in a throwaway copy."""
    with Container(Path(parent), name="webserver-debs", boot=False) as d:
        d.chroot_run(["apt-get", "update", "-qq"], network=True, timeout=600)
        for server, names in packages.items():
            d.chroot_run(["mkdir", "-p", f"{DEBS}/{server}/partial"])
            d.chroot_run(["apt-get", "install", "-y", "-qq", "--download-only", "--no-install-recommends",
                          "-o", f"Dir::Cache::archives={DEBS}/{server}", *names], network=True, timeout=600)
            d.chroot_run(["rm", "-rf", f"{DEBS}/{server}/partial", f"{DEBS}/{server}/lock"])
        c.copy_in(d.path / DEBS.lstrip("/"), DEBS)
    nginx = c.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", "nginx*"], check=False).stdout
    installed = [line.split()[0] for line in nginx.splitlines() if line.endswith(" installed")]
    c.run(["dpkg", "--purge", *installed], timeout=300)


@pytest.fixture(scope="module")
def release(request: pytest.FixtureRequest, synapse_root: Path) -> Iterator[Container]:
    """The release's booted container: Synapse alone, no web server, the servers' .debs at hand."""
    suite = request.param
    parent = synapse_root if suite == "bookworm" else request.getfixturevalue("trixie_synapse_root")
    # The parent as a string: its key is in the layer's (a Path would be hashed as a file).
    setup = functools.partial(stash_webservers, parent=str(parent), packages=PACKAGES)
    root = harness.ensure_derived_root(f"webservers-{suite}", parent, setup)
    started = time.monotonic()
    with Container(root, name=container_name(f"webservers-{suite}")) as c:
        assert c.run(["sh", "-c", "command -v nginx"], check=False).returncode != 0
        harness.wait_for_http(c, "http://127.0.0.1:8008", "/health", timeout=90)
        yield c
    print(f"\n{suite}: the three servers took {time.monotonic() - started:.0f} s")


# --- helpers -----------------------------------------------------------------------------------

def send(c: Container, method: str, path: str, body=None, token: str | None = None,
         timeout: float = 60) -> tuple[str, harness.HttpResponse]:
    """One request through the server with a marker Synapse logs with the path."""
    marker = f"msw_probe=w{next(_probe)}x"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sep = "&" if "?" in path else "?"
    return marker, http(c, SITE, method, f"{path}{sep}{marker}", body, headers, timeout=timeout)


def logged_by(c: Container, marker: str, names: list[str]) -> list[str]:
    """Which processes logged the marker (Synapse logs a request when it is done)."""
    files = [LOGS[n] for n in names]
    for _ in range(20):
        out = c.run(["grep", "-l", "-F", marker, *files], check=False).stdout.split()
        if out:
            return sorted(n for n in names if LOGS[n] in out)
        time.sleep(0.5)
    return []


def count(c: Container, sql: str) -> int:
    return int(psql(c, sql).stdout.strip())


def install_server(c: Container, server: str) -> None:
    """The server as an admin installs it (apt, offline from the layer's .debs): enabled, running."""
    debs = c.run(["sh", "-c", f"ls {DEBS}/{server}/*.deb"]).stdout.split()
    c.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *debs], timeout=600,
          env={"DEBIAN_FRONTEND": "noninteractive"})
    assert c.run(["systemctl", "is-active", UNITS[server]]).stdout.strip() == "active"


def purge_server(c: Container, server: str) -> None:
    debs = c.run(["sh", "-c", f"ls {DEBS}/{server}/*.deb"]).stdout.split()
    names = [c.run(["dpkg-deb", "-f", deb, "Package"]).stdout.strip() for deb in debs]
    c.run(["dpkg", "--purge", *names], timeout=300)


def serve_site(c: Container, server: str, before: bool, advice: str = "") -> None:
    """The admin's site: Synapse's single process (``before``), or through the package's file
    as ``advice`` (the package's) says, then the server's own check and its reload."""
    if server == "apache":
        c.write_file("/etc/apache2/sites-available/matrix.conf", APACHE_BEFORE if before else APACHE_AFTER)
        if not before:
            [modules] = re.findall(r"'a2enmod ([a-z_ ]+)'", advice)
            c.run(["a2enmod", "-q", *modules.split()])
        if before:
            c.run(["a2enmod", "-q", "proxy_http"])
            c.run(["a2ensite", "-q", "matrix"])
            c.run(["a2dissite", "-q", "000-default"])
        c.run(["apache2ctl", "-t"])
        c.run(["systemctl", "reload", "apache2.service"])
    elif server == "caddy":
        c.write_file("/etc/caddy/Caddyfile", CADDY_BEFORE if before else CADDY_AFTER)
        c.run(["caddy", "validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"])
        c.run(["systemctl", "restart" if "systemctl restart caddy" in advice else "reload", "caddy.service"])
    else:
        stock = c.read_file("/etc/haproxy/haproxy.cfg").split("\nfrontend matrix\n")[0]
        if "remove 'chroot /var/lib/haproxy'" in advice:  # Debian's global section has it
            stock = stock.replace("\tchroot /var/lib/haproxy\n", "")
        for group in re.findall(r"set '(group \S+)'", advice):
            stock = stock.replace("\tgroup haproxy\n", f"\t{group}\n")
        c.write_file("/etc/haproxy/haproxy.cfg", stock + (HAPROXY_BEFORE if before else HAPROXY_AFTER))
        extra = [] if before else ["-f", "/etc/haproxy/matrix-synapse-workers.cfg"]
        if not before:  # as the package's file and README.Debian say
            c.write_file("/etc/default/haproxy",
                         'EXTRAOPTS="-S /run/haproxy-master.sock -f /etc/haproxy/matrix-synapse-workers.cfg"\n')
        c.run(["haproxy", "-c", "-q", "-f", "/etc/haproxy/haproxy.cfg", *extra])
        assert before or "systemctl restart haproxy" in advice, advice
        c.run(["systemctl", "restart", "haproxy.service"])
    harness.wait_for_http(c, SITE, "/_matrix/client/versions", timeout=60)


def status(c: Container) -> tuple[int, dict]:
    r = c.run(["matrix-synapse-workers", "status", "--json"], check=False, timeout=60)
    assert r.stdout.startswith("{"), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


# --- the test ----------------------------------------------------------------------------------

@pytest.mark.parametrize("release,server", CASES, indirect=["release"])
def test_server_in_front(release: Container, server: str, package_deb: Path) -> None:
    c = release
    started = time.monotonic()
    install_server(c, server)
    try:
        serve_site(c, server, before=True)
        # The web server user left at its default: it must follow the server detected.
        answers = preseed("custom", "sync, client", "sync:2")
        done = install_workers(c, package_deb, answers)
        assert "clubmatrix" in c.run(["id", "-nG", USERS[server]]).stdout.split()
        assert_all_healthy(c, WORKERS)
        rendered = {"apache": "/etc/apache2/matrix-synapse-workers.conf",
                    "caddy": "/etc/caddy/matrix-synapse-workers.caddy",
                    "haproxy": "/etc/haproxy/matrix-synapse-workers.cfg"}[server]
        assert c.exists(rendered), done.stdout + done.stderr
        assert not c.exists("/etc/nginx"), c.run(["ls", "-R", "/etc/nginx"], check=False).stdout
        # The install's last lines say what is left; status says the same; the admin does it.
        said = done.stdout + done.stderr
        code, data = status(c)
        [advice] = [ch["advice"] for ch in data["checks"]
                   if ch["check"] == server and ch["status"] in ("warn", "fail")]
        assert f"left to do: {advice}" in said, (advice, said)
        serve_site(c, server, before=False, advice=advice)
        code, data = status(c)
        bad = [ch for ch in data["checks"] if ch["status"] in ("warn", "fail")]
        assert not [ch for ch in bad if ch["check"] == server], bad
        round_trip(c, server)
        sticky_sync(c, server)
        sync_pool_down(c, server)
        # Before the client pool is stopped: the proxies leave a worker that refused out of
        # its pool for a while (Apache, Caddy: 10 s), and the request would not reach it.
        dead_worker_write_not_resent(c, server)
        client_pool_down(c, server)
    finally:
        c.run(["dpkg", "--purge", "matrix-synapse-workers"], check=False, timeout=600)
        purge_server(c, server)
    print(f"\n{server}: {time.monotonic() - started:.0f} s")


def round_trip(c: Container, server: str) -> None:
    """A client's round trip: log in, create a room, send, see it in /sync."""
    user = f"{server}-alice"
    register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")
    token = login(c, SITE, user, f"{user}-password-1")["access_token"]
    _, room = send(c, "POST", "/_matrix/client/v3/createRoom", {"name": server}, token)
    assert room.status == 200, room.text
    room_id = room.json()["room_id"]
    _, sent = send(c, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                   {"msgtype": "m.text", "body": f"hello through {server}"}, token)
    assert sent.status == 200, sent.text
    marker, synced = send(c, "GET", "/_matrix/client/v3/sync?timeout=0", None, token)
    assert synced.status == 200, synced.text
    events = synced.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert any(e.get("content", {}).get("body") == f"hello through {server}" for e in events), events
    assert logged_by(c, marker, ["main", *SYNC_POOL])[0] in SYNC_POOL


def sticky_sync(c: Container, server: str) -> None:
    """Every /sync of a user (token in the header or the query) on one sync worker; users spread."""
    where: dict[str, set[str]] = {}
    for name in ("bob", "carol", "dave", "erin", "frank", "grace"):
        user = f"{server}-{name}"
        token = register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")["access_token"]
        for i in range(4):
            path = "/_matrix/client/v3/sync?timeout=0"
            if i % 2:
                marker, r = send(c, "GET", f"{path}&access_token={token}")
            else:
                marker, r = send(c, "GET", path, None, token)
            assert r.status == 200, r.text
            where.setdefault(name, set()).update(logged_by(c, marker, ["main", *SYNC_POOL]))
    assert all(len(w) == 1 and w <= set(SYNC_POOL) for w in where.values()), where
    assert len(set().union(*where.values())) == 2, where


def sync_pool_down(c: Container, server: str) -> None:
    """Every sync worker stopped: each /sync is still answered, by main."""
    user = f"{server}-henry"
    token = register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")["access_token"]
    c.run(["systemctl", "stop", *map(unit_of, SYNC_POOL)])
    try:
        if server == "haproxy":
            # HAProxy learns a pool is down from its health check (inter 2s, fall 1): until
            # then, with every server refusing, it answers its own 503 (a known limit,
            # README.Debian); bounded by one check interval and a margin.
            started, seen = time.monotonic(), set()
            while True:
                _, r = send(c, "GET", "/_matrix/client/v3/sync?timeout=0", None, token)
                if r.status == 200:
                    break
                seen.add(r.status)
                assert seen == {503} and time.monotonic() - started < 4, (seen, r.text)
                time.sleep(0.2)
        for _ in range(3):
            marker, r = send(c, "GET", "/_matrix/client/v3/sync?timeout=0", None, token)
            assert r.status == 200, (r.status, r.text)
            assert logged_by(c, marker, ["main", *SYNC_POOL]) == ["main"]
    finally:
        c.run(["systemctl", "start", *map(unit_of, SYNC_POOL)])
    for name in SYNC_POOL:
        harness.wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=60)


def client_pool_down(c: Container, server: str) -> None:
    """The client worker stopped: a POST nothing was sent of goes to main, and runs."""
    user = f"{server}-ivan"
    token = register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")["access_token"]
    c.run(["systemctl", "stop", unit_of("client-1")])
    try:
        marker, r = send(c, "POST", "/_matrix/client/v3/createRoom", {}, token)
        assert r.status == 200, (r.status, r.text)
        assert logged_by(c, marker, ["main", "client-1"]) == ["main"]
    finally:
        c.run(["systemctl", "start", unit_of("client-1")])
    harness.wait_for_http(c, f"{SOCKETS}/client-1.sock", "/health", timeout=60)


def dead_worker_write_not_resent(c: Container, server: str) -> None:
    """The client worker takes a createRoom and dies before answering: the proxy must not
    send it to main (the worker may have acted on it); the client gets the 502."""
    user = register_user(c, f"{SOCKETS}/main.sock", f"{server}-judy", "judy-password-1")
    rooms = f"SELECT count(*) FROM rooms WHERE creator = '{user['user_id']}'"
    waiting = ("SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
               "WHERE r.relname = 'rooms' AND NOT l.granted")
    hold_table(c, "rooms", 6)
    answer: dict[str, object] = {}

    def client() -> None:
        answer["marker"], answer["response"] = send(c, "POST", "/_matrix/client/v3/createRoom",
                                                    {"name": "once"}, user["access_token"])
    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 20
    while count(c, waiting) < 1:  # the worker is in the request, waiting on the table
        assert time.monotonic() < deadline, "the createRoom never reached the database"
        time.sleep(0.2)
    c.run(["systemctl", "kill", "-s", "KILL", unit_of("client-1")])
    thread.join(60)
    held = ("SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
            "WHERE r.relname = 'rooms' AND l.mode = 'AccessExclusiveLock'")
    deadline = time.monotonic() + 30
    while count(c, held) and time.monotonic() < deadline:  # then anything sent again runs
        time.sleep(0.2)
    time.sleep(2)
    response = answer["response"]
    assert isinstance(response, harness.HttpResponse)
    # HAProxy names the same failure 503 "No server is available" (measured): an error the
    # client shows, never retries by itself, and the checks below show nothing ran twice.
    failed = {502, 503} if server == "haproxy" else {502}
    if response.status not in failed:
        ran_by = logged_by(c, str(answer["marker"]), ["main", "client-1"])
        errors = {"apache": "/var/log/apache2/error.log"}.get(server)
        said = c.run(["tail", "-n", "20", errors], check=False).stdout if errors else \
            c.journal(UNITS[server], 20)
        print(f"\n{server} after the worker died: {response.status}, run by {ran_by}; it said:\n{said}")
    assert response.status in failed, (server, response.status, response.text)
    assert count(c, rooms) == 0
    assert c.run(["grep", "-c", "-F", str(answer["marker"]), LOGS["main"]], check=False).stdout.strip() == "0"
    c.wait_until(["systemctl", "is-active", "--quiet", unit_of("client-1")], timeout=60)
    harness.wait_for_http(c, f"{SOCKETS}/client-1.sock", "/health", timeout=60)
    assert SERVER_NAME in user["user_id"]
