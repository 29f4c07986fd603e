"""A worker that fails in the middle of a request: each request runs once.

Real Synapse behind the package's nginx files, in a booted container.  The
client worker reads each request and starts on it, then waits on a table of the
database another session holds locked, until nginx gives up on it (the vhost's
5 s read timeout: 504), as it does for a worker that hangs or dies while handling
a request.  (Freezing the worker with SIGSTOP instead does not do: Synapse then
reads the request only after nginx closed the connection, and drops it.)  The
lock ends and the worker finishes.  Before the fix nginx also sent each request
to main: two rooms.  Now the client gets the worker's 504, main never sees the
request, and the worker's run is the only one: one room, one key upload.  Joins go
to main (where profile updates run), which holds the join the same way: its 504 is
not resent either, one join.

Then main is stopped: what nobody read is answered with a Matrix 429 the
client retries by itself.  One deployment serves the module (about a minute).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

import harness
from harness import Container, http, psql, register_user
from booted_config import NGINX, container_name
from test_scenarios import SERVER, SOCKETS, assert_all_healthy, install_workers, preseed, serve_through_nginx

from matrix_synapse_workers.render import routing

WORKERS = ["client-1"]
#: The admin's server block with a short read timeout, so a frozen worker costs 5 s.
VHOST = """server {
    listen 127.0.0.1:8080;
    server_name example.test;
    proxy_read_timeout 5s;
    include snippets/matrix-synapse-workers.conf;
}
"""
LOGS = {"main": "/var/log/matrix-synapse/homeserver.log",
        "client-1": "/var/log/matrix-synapse/client-1.log"}
_probe = itertools.count(1)


@pytest.fixture(scope="module")
def deployed(synapse_root: Path, package_deb: Path) -> Iterator[Container]:
    deb = Path(os.environ.get("MSW_PACKAGE_DEB") or package_deb)
    with Container(synapse_root, name=container_name("test_fallback")) as c:
        install_workers(c, deb, preseed("custom", "client", ""))
        assert_all_healthy(c, WORKERS)
        serve_through_nginx(c, VHOST)
        yield c


def send(c: Container, method: str, path: str, body, token: str) -> tuple[str, harness.HttpResponse]:
    """One request through nginx with a marker Synapse logs with the path."""
    marker = f"msw_probe=f{next(_probe)}x"
    r = http(c, NGINX, method, f"{path}?{marker}", body, {"Authorization": f"Bearer {token}"})
    return marker, r


def logged_by(c: Container, marker: str) -> list[str]:
    out = c.run(["grep", "-l", "-F", marker, *LOGS.values()], check=False).stdout.split()
    return sorted(name for name, log in LOGS.items() if log in out)


def count(c: Container, sql: str) -> int:
    return int(psql(c, sql).stdout.strip())


def hold_table(c: Container, table: str, seconds: int) -> None:
    """Lock a table of Synapse's database for ``seconds`` (in the background): a request
    that writes it is held after the worker has read it, until nginx gives up."""
    sql = f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT;"
    c.run(["sh", "-c", f"PGPASSWORD={harness.DB_PASSWORD} psql -X -q -h {harness.PG_SOCKET_DIR} "
                       f"-U {harness.DB_USER} -d {harness.DB_NAME} -c '{sql}' >/dev/null 2>&1 &"])
    held = (f"SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
            f"WHERE r.relname = '{table}' AND l.mode = 'AccessExclusiveLock' AND l.granted")
    deadline = time.monotonic() + 30
    while count(c, held) != 1:
        assert time.monotonic() < deadline, f"no lock on {table}"
        time.sleep(0.2)


def test_a_worker_that_fails_mid_request_runs_each_request_once(deployed):
    c = deployed
    alice = register_user(c, f"{SOCKETS}/main.sock", "alice", "alice-password-1")
    bob = register_user(c, f"{SOCKETS}/main.sock", "bob", "bob-password-1")
    _, r = send(c, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                alice["access_token"])
    assert r.status == 200, r.text
    lobby = r.json()["room_id"]
    rooms = f"SELECT count(*) FROM rooms WHERE creator = '{alice['user_id']}'"
    joins = (f"SELECT count(*) FROM room_memberships WHERE room_id = '{lobby}' "
             f"AND user_id = '{bob['user_id']}' AND membership = 'join'")
    keys = f"SELECT count(*) FROM e2e_one_time_keys_json WHERE user_id = '{alice['user_id']}'"
    asked = {  # what: (table the request writes, request, its count once run)
        "room": ("rooms", ("POST", "/_matrix/client/v3/createRoom", {"name": "once"},
                           alice["access_token"]), rooms, 2),
        "join": ("room_memberships", ("POST", f"/_matrix/client/v3/rooms/{lobby}/join", {},
                                      bob["access_token"]), joins, 1),
        "keys": ("e2e_one_time_keys_json", (
            "POST", "/_matrix/client/v3/keys/upload",
            {"one_time_keys": {"curve25519:AAAAAQ": "b25jZW9ubHlvbmNlb25seQ"}},
            alice["access_token"]), keys, 1),
    }
    markers = {}
    for what, (table, request, counted, once) in asked.items():
        # The worker reads the request and works on it; nginx gives up after the
        # vhost's 5 s read timeout (504), while the worker still holds it.
        hold_table(c, table, 8)
        markers[what], r = send(c, *request)
        assert r.status == 504, (what, r.status, r.text)
        deadline = time.monotonic() + 60
        while count(c, counted) < once and time.monotonic() < deadline:
            time.sleep(0.5)
    c.run(["sleep", "2"])  # anything run twice would be there by now
    log = c.run(["grep", "-h", "-E", "|".join(markers.values()), *LOGS.values()],
                check=False).stdout[-3000:]
    # Each ran once (the lobby and the room "once"), by the one process it was routed to:
    # the client worker, or for the join main (membership changes go where profile updates
    # run: the catalog's "membership" class), whose 504 is not resent either.
    assert (count(c, rooms), count(c, joins), count(c, keys)) == (2, 1, 1), log
    served_by = {"room": "client-1", "join": "main", "keys": "client-1"}
    for what, marker in markers.items():
        assert logged_by(c, marker) == [served_by[what]], (what, log)
    assert_all_healthy(c, WORKERS)


def test_main_down_answers_a_retry_the_client_repeats(deployed):
    """Stopping main stops the workers too (PartOf=), as a restart or an upgrade does."""
    c = deployed
    carol = register_user(c, f"{SOCKETS}/main.sock", "carol", "carol-password-1")
    token = carol["access_token"]
    c.run(["systemctl", "stop", "matrix-synapse.service"])
    try:
        asked = [  # main's own location, then the client pool's (down: on to main, down too)
            send(c, "GET", f"/_matrix/client/v3/presence/{carol['user_id']}/status", None, token),
            send(c, "POST", "/_matrix/client/v3/createRoom", {}, token),
            send(c, "GET", "/_matrix/client/v3/joined_rooms", None, token),
        ]
    finally:
        c.run(["systemctl", "start", "matrix-synapse.target"])
    for marker, r in asked:
        assert r.status == 429, (marker, r.status, r.text)
        assert r.json() == {"errcode": "M_LIMIT_EXCEEDED",
                            "error": "The server is restarting, try again shortly",
                            "retry_after_ms": routing.RETRY_AFTER_MS}
        assert r.headers["retry-after"] == str(routing.RETRY_AFTER_MS // 1000)
    assert_all_healthy(c, WORKERS)
    # The client's retry, once main is back, is the request's one run.
    _, r = send(c, "POST", "/_matrix/client/v3/createRoom", {}, token)
    assert r.status == 200, r.text
    assert count(c, f"SELECT count(*) FROM rooms WHERE creator = '{carol['user_id']}'") == 1
    assert all(logged_by(c, marker) == [] for marker, _ in asked)
    assert carol["user_id"].endswith(f":{SERVER}")
