"""A homeserver that hands logins to the Matrix Authentication Service, with workers.

The real MAS cannot be had here (neither Debian nor PyPI carries it), so the
stand-in in tests/standin/mas/ plays it (its README lists what differs).  The
admin's vhost is what MAS's documentation suggests, with its compat location
*after* our include (the order that used to send ``GET /login`` to a client
worker).  A client then logs in through MAS's compat login via nginx, its
/sync sticks to one sync worker, messages flow through the workers, and MAS's
calls into Synapse (/_synapse/mas/) reach main through our snippet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import harness
from harness import Container, http
from booted_config import NGINX, REPO, SERVER_NAME as SERVER
from test_scenarios import assert_all_healthy, install_workers, preseed, serve_through_nginx
from test_booted_routing import logs_with

MAS_PORT = 8090
MAS = f"http://127.0.0.1:{MAS_PORT}"
MAS_LOG = "/var/log/mas-standin.jsonl"
SECRET = "a-secret-shared-by-synapse-and-mas"
STANDIN = REPO / "tests" / "standin" / "mas" / "mas_standin.py"
WORKERS = ["client-1", "sync-1", "sync-2", "sync-3"]

#: Synapse's side: the stable setting (1.136+) and password login off (Synapse refuses both).
MAS_CONF_D = f"""matrix_authentication_service:
  enabled: true
  endpoint: {MAS}/
  secret: {SECRET}
password_config:
  enabled: false
"""

#: The admin's vhost: our include, then MAS's compat location as MAS's docs write it.
VHOST = f"""server {{
    listen 127.0.0.1:8080;
    server_name {SERVER};
    include snippets/matrix-synapse-workers.conf;
    location ~ ^/_matrix/client/(.*)/(login|logout|refresh) {{
        proxy_http_version 1.1;
        proxy_pass {MAS};
        proxy_set_header X-Forwarded-For $remote_addr;
    }}
}}
"""

UNIT = f"""[Unit]
Description=Matrix Authentication Service stand-in (tests)
After=network.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/mas-standin/mas_standin.py --listen 127.0.0.1:{MAS_PORT} \\
    --homeserver {NGINX}/ --server-name {SERVER} --secret-file /etc/mas-standin/secret --log {MAS_LOG}

[Install]
WantedBy=multi-user.target
"""


def mas_requests(c: Container) -> list[dict]:
    text = c.run(["cat", MAS_LOG], check=False).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def mas_homeserver(synapse_root: Path, package_deb: Path, request):
    with Container(synapse_root, name=re.sub(r"^test_", "", request.node.name)) as c:
        c.copy_in(STANDIN, "/usr/local/lib/mas-standin/mas_standin.py", mode=0o755)
        c.write_file("/etc/mas-standin/secret", SECRET, mode=0o600)
        c.write_file("/etc/systemd/system/mas-standin.service", UNIT)
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "mas-standin.service"])
        harness.wait_for_http(c, MAS, "/health", timeout=30)
        c.write_file("/etc/matrix-synapse/conf.d/mas.yaml", MAS_CONF_D, mode=0o644)
        c.run(["systemctl", "restart", "matrix-synapse.service"])
        harness.wait_for_http(c, "http://127.0.0.1:8008", "/health", timeout=120)
        install_workers(c, package_deb, preseed("custom", "sync, client", "sync:3"))
        assert_all_healthy(c, WORKERS)
        serve_through_nginx(c, VHOST)
        yield c


def _marked(path: str, n: int) -> tuple[str, str]:
    marker = f"msw_probe=mas{n}x"
    return marker, f"{path}{'&' if '?' in path else '?'}{marker}"


def test_logins_go_to_mas_and_the_rest_through_the_workers(mas_homeserver):
    c = mas_homeserver
    everyone = ["main", *WORKERS]
    snippet = c.read_file("/etc/nginx/snippets/matrix-synapse-workers.conf")
    assert "/login$" not in snippet and "^/_synapse/mas/" in snippet

    # MAS provisions the user in Synapse through nginx: /_synapse/mas/ reaches main.
    r = http(c, MAS, "POST", "/_test/register", {"username": "alice", "password": "alice-pw-1"})
    assert r.status == 200, r.text

    # GET /login reaches MAS (its flows), not a worker.
    marker, path = _marked("/_matrix/client/v3/login", 1)
    flows = http(c, NGINX, "GET", path)
    assert flows.status == 200 and flows.json() == {
        "flows": [{"type": "m.login.password"}, {"type": "m.login.token"}]}, flows.text
    assert any(e["method"] == "GET" and marker in e["path"] for e in mas_requests(c))
    assert logs_with(c, marker, everyone) == []

    # Two devices log in through MAS's compat login via nginx.
    sessions = []
    for device in ("PHONE", "LAPTOP"):
        r = http(c, NGINX, "POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "alice-pw-1", "device_id": device})
        assert r.status == 200, r.text
        assert r.json()["access_token"].startswith("mct_") and r.json()["device_id"] == device
        assert r.json()["user_id"] == f"@alice:{SERVER}"
        sessions.append({"Authorization": f"Bearer {r.json()['access_token']}"})
    phone, laptop = sessions
    wrong = http(c, NGINX, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "nope"})
    assert wrong.status == 403 and wrong.json()["errcode"] == "M_FORBIDDEN"

    # Synapse knows both devices (created by MAS through /_synapse/mas/upsert_device).
    devices = http(c, NGINX, "GET", "/_matrix/client/v3/devices", None, phone)
    assert devices.status == 200, devices.text
    assert {d["device_id"] for d in devices.json()["devices"]} == {"PHONE", "LAPTOP"}
    whoami = http(c, NGINX, "GET", "/_matrix/client/v3/account/whoami", None, laptop).json()
    assert whoami["user_id"] == f"@alice:{SERVER}" and whoami["device_id"] == "LAPTOP"

    # Messages through the workers: the room and the send on client-1, the sync on a sync worker.
    marker, path = _marked("/_matrix/client/v3/createRoom", 2)
    room = http(c, NGINX, "POST", path, {"name": "mas"}, phone)
    assert room.status == 200, room.text
    room_id = room.json()["room_id"]
    assert logs_with(c, marker, everyone) == ["client-1"]
    marker, path = _marked(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1", 3)
    sent = http(c, NGINX, "PUT", path, {"msgtype": "m.text", "body": "hello via MAS"}, phone)
    assert sent.status == 200, sent.text
    assert logs_with(c, marker, everyone) == ["client-1"]

    # Each session's /sync sticks to one sync worker and sees the message.
    for n, session in enumerate(sessions):
        landed = set()
        for i in range(4):
            marker, path = _marked("/_matrix/client/v3/sync?timeout=0", 10 * (n + 1) + i)
            synced = http(c, NGINX, "GET", path, None, session)
            assert synced.status == 200, synced.text
            events = synced.json()["rooms"]["join"][room_id]["timeline"]["events"]
            assert any(e.get("content", {}).get("body") == "hello via MAS" for e in events)
            landed.update(logs_with(c, marker, everyone))
        assert len(landed) == 1 and landed <= {"sync-1", "sync-2", "sync-3"}, landed

    # Synapse's processes asked MAS about the tokens (introspection with the shared secret).
    introspections = [e for e in mas_requests(c) if e["path"] == "/oauth2/introspect"]
    assert introspections and all(e["status"] == 200 for e in introspections)

    # Logout goes to MAS, which deletes the device in Synapse: the token stops working.
    marker, path = _marked("/_matrix/client/v3/logout", 90)
    out = http(c, NGINX, "POST", path, {}, laptop)
    assert out.status == 200, out.text
    assert logs_with(c, marker, everyone) == []
    gone = http(c, NGINX, "GET", "/_matrix/client/v3/sync?timeout=0", None, laptop)
    assert gone.status == 401, gone.text
    assert http(c, NGINX, "GET", "/_matrix/client/v3/sync?timeout=0", None, phone).status == 200
