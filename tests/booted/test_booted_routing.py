"""Routing through real nginx to real Synapse workers, in a booted container.

nginx gets a vhost on 127.0.0.1:8080 that only includes the package's snippet,
exactly as README.Debian tells an admin.  Where a request went is proved from the
worker's own access log: each request carries a unique marker argument
(``msw_probe``) that Synapse logs with the path.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

import harness
from harness import Container, http, login, register_user
from booted_config import NGINX, VHOST
from test_scenarios import (SERVER, SOCKETS, assert_all_healthy, install_workers, preseed, reconfigure,
                            serve_through_nginx)

from matrix_synapse_workers.render import routing
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select

TYPES = "sync, client, federation_reader, media, typing, device_lists, user_dir"
COUNTS = "sync:2"
WORKERS = ["client-1", "device-lists-1", "federation-reader-1", "media-1", "sync-1", "sync-2",
           "typing-1", "user-dir-1"]
MAIN_LOG = "/var/log/matrix-synapse/homeserver.log"
_probe = itertools.count(1)


def log_of(name: str) -> str:
    return MAIN_LOG if name == "main" else f"/var/log/matrix-synapse/{name}.log"


def probe(c: Container, method: str, path: str, body=None, token: str | None = None,
          headers: dict | None = None) -> tuple[str, harness.HttpResponse]:
    """One request through nginx with a unique marker; returns (marker, response)."""
    marker = f"msw_probe=p{next(_probe)}x"
    sep = "&" if "?" in path else "?"
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    r = http(c, NGINX, method, f"{path}{sep}{marker}", body, hdrs)
    assert r.status != 502, (path, r.text)
    return marker, r


def logs_with(c: Container, marker: str, names: list[str]) -> list[str]:
    """Which of these processes logged the marker (waits a little for log flushes)."""
    files = [log_of(n) for n in names]
    for _ in range(20):
        out = c.run(["grep", "-l", "-F", marker, *files], check=False).stdout.split()
        if out:
            return sorted(n for n in names if log_of(n) in out)
        c.run(["sleep", "0.5"])
    return []


@pytest.fixture
def routed(synapse_root, package_deb, request):
    # MSW_PACKAGE_DEB: test a .deb built elsewhere instead of dist/'s.
    deb = Path(os.environ.get("MSW_PACKAGE_DEB") or package_deb)
    with Container(synapse_root, name=re.sub(r"^test_", "", request.node.name)) as c:
        install_workers(c, deb, preseed("custom", TYPES, COUNTS))
        assert_all_healthy(c, WORKERS)
        serve_through_nginx(c, VHOST)
        yield c


def expected(path: str, method: str) -> list[str]:
    counts = dict(item.split(":") for item in COUNTS.split(","))
    spec = ",".join(f"{t}:{counts.get(t, 1)}" for t in TYPES.replace(" ", "").split(","))
    plan = Plan(plan_workers(select(workers=spec)))
    role, workers = routing.destination(plan, path.split("?")[0], method)
    return list(workers) or ["main"]


def test_every_endpoint_class_lands_where_the_route_table_says(routed):
    c = routed
    assert c.run(["id", "-nG", "www-data"]).stdout.split().count("clubmatrix") == 1
    register_user(c, f"{SOCKETS}/main.sock", "alice", "alice-password-1")
    token = login(c, NGINX, "alice", "alice-password-1")["access_token"]
    assert token.startswith("syt_")
    _, room = probe(c, "POST", "/_matrix/client/v3/createRoom", {"name": "routing"}, token)
    room_id = room.json()["room_id"]
    requests = [
        ("GET", "/_matrix/client/v3/sync?timeout=0", None),
        ("GET", "/_matrix/client/v3/account/whoami", None),
        ("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b", None),
        ("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"}),
        ("PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/@alice:{SERVER}", {"typing": True, "timeout": 3000}),
        ("POST", "/_matrix/client/v3/keys/upload", {}),
        ("POST", "/_matrix/client/v3/user_directory/search", {"search_term": "ali"}),
        ("GET", "/_matrix/client/v1/media/config", None),
        ("GET", "/_matrix/media/v3/config", None),
        ("GET", "/_matrix/federation/v1/version", None),
        ("GET", "/_matrix/client/v3/pushers", None),
        # Reconciled with Synapse 1.163.2's worker servlets:
        ("PUT", f"/_matrix/client/v3/rooms/{room_id}/join/j1", {}),
        ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", {"lists": {}}),
        ("GET", f"/_matrix/client/v1/room_summary/{room_id}", None),
        ("GET", "/_matrix/client/v3/notifications", None),
    ]
    everyone = ["main", *WORKERS]
    seen = {}
    for method, path, body in requests:
        marker, r = probe(c, method, path, body, token)
        assert r.status < 500, (method, path, r.status, r.text)
        seen[(method, path)] = (logs_with(c, marker, everyone), expected(path, method))
    wrong = {k: v for k, v in seen.items() if len(v[0]) != 1 or v[0][0] not in v[1]}
    assert not wrong, wrong
    # Every worker type with endpoints got traffic; main got only what no worker serves.
    assert {v[0][0] for v in seen.values()} >= {"client-1", "device-lists-1", "federation-reader-1",
                                               "media-1", "typing-1", "user-dir-1", "main"}


def test_sync_is_sticky_per_user_and_falls_back_to_main(routed):
    c = routed
    tokens = {}
    for user in ("bob", "carol", "dave"):
        tokens[user] = register_user(c, f"{SOCKETS}/main.sock", user, f"{user}-password-1")["access_token"]
    pools = ["sync-1", "sync-2"]
    used: dict[str, set[str]] = {}
    for user, token in tokens.items():
        for i in range(20):
            # Header and query-argument tokens hash alike.
            if i % 2:
                marker, r = probe(c, "GET", f"/_matrix/client/v3/sync?timeout=0&access_token={token}")
            else:
                marker, r = probe(c, "GET", "/_matrix/client/v3/sync?timeout=0", token=token)
            assert r.status == 200, r.text
            used.setdefault(user, set()).update(logs_with(c, marker, ["main", *pools]))
    for user, where in used.items():
        assert len(where) == 1 and where <= set(pools), (user, where)

    # The whole sync pool stopped: sync still works, served by main.
    c.run(["systemctl", "stop", "matrix-synapse-worker@sync-1.service", "matrix-synapse-worker@sync-2.service"])
    for _ in range(3):
        marker, r = probe(c, "GET", "/_matrix/client/v3/sync?timeout=0", token=tokens["bob"])
        assert r.status == 200, r.text
        assert logs_with(c, marker, ["main", *pools]) == ["main"]
    # Back up: the pool serves again.
    c.run(["systemctl", "start", "matrix-synapse-worker@sync-1.service", "matrix-synapse-worker@sync-2.service"])
    for name in pools:
        harness.wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=60)


def test_a_failing_nginx_check_leaves_nginx_running_and_says_why(routed):
    c = routed
    before = c.read_file("/etc/nginx/conf.d/matrix-synapse-workers.conf")
    pid = c.run(["systemctl", "show", "-P", "MainPID", "nginx.service"]).stdout.strip()
    # The admin's own mistake elsewhere in nginx's configuration.
    c.write_file("/etc/nginx/conf.d/zz-admin-typo.conf", "this_is_not_a_directive on;\n")
    c.exec(["debconf-set-selections"], input=preseed("custom", TYPES, "sync:1"))
    r = c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], check=False, timeout=600)
    assert r.returncode != 0
    assert "nginx -t" in r.stderr + r.stdout and "this_is_not_a_directive" in r.stderr + r.stdout
    assert c.read_file("/etc/nginx/conf.d/matrix-synapse-workers.conf") == before
    assert c.run(["systemctl", "is-active", "nginx.service"]).stdout.strip() == "active"
    assert c.run(["systemctl", "show", "-P", "MainPID", "nginx.service"]).stdout.strip() == pid
    assert http(c, NGINX, "GET", "/_matrix/client/versions").status == 200
    # Nothing else changed either: both sync workers still there and running.
    assert c.exists("/etc/matrix-synapse/workers/sync-2.yaml")
    assert_all_healthy(c, WORKERS)
    # Once the admin fixes it, the change goes through and nginx is reloaded.
    c.run(["rm", "/etc/nginx/conf.d/zz-admin-typo.conf"])
    reconfigure(c, preseed("custom", TYPES, "sync:1"))
    assert "sync-2.sock" not in c.read_file("/etc/nginx/conf.d/matrix-synapse-workers.conf")
    assert http(c, NGINX, "GET", "/_matrix/client/versions").status == 200
