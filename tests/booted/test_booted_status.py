"""`matrix-synapse-workers status` on a booted system with real Synapse, Redis and systemd.

One container walks through the states an admin meets, because each boot and
install costs a minute or two: healthy, one worker stopped, a socket with the
wrong mode, Synapse upgraded with a worker left on the old version, Redis down.
The Synapse is the stand-in at an older version first, so the upgrade is a real
package upgrade (made while policy-rc.d forbids restarts, so nothing restarts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from support.standin import build_standin
from harness import POLICY_RC_D, POLICY_RC_D_TEXT, Container, synapse_setup
from test_scenarios import SERVER, install_workers, preseed, unit_of

OLD_SYNAPSE = "1.163.1"
NEW_SYNAPSE = "1.163.2"
WORKERS = ["client-1", "sync-1", "sync-2", "typing-1"]
VHOST = """server {
    listen 8080;
    server_name example.test;
    include snippets/matrix-synapse-workers.conf;
}
"""


@pytest.fixture(scope="module")
def standin_pair(booted_host: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("standin-pair")
    return build_standin(OLD_SYNAPSE, out / "old"), build_standin(NEW_SYNAPSE, out / "new")


def status(c: Container) -> tuple[int, dict[str, Any]]:
    r = c.run(["matrix-synapse-workers", "status", "--json"], check=False, timeout=30)
    assert r.returncode in (0, 4, 5), (r.returncode, r.stdout, r.stderr)  # healthy, degraded, broken
    data = json.loads(r.stdout)
    assert data["exit_code"] == r.returncode
    return r.returncode, data


def wait_status(c: Container, wanted: Callable[[int, dict[str, Any]], bool], what: str,
                timeout: float = 90) -> dict[str, Any]:
    """Poll status until wanted(code, data) (Synapse tells systemd READY before Redis is up)."""
    deadline = time.monotonic() + timeout
    while True:
        code, data = status(c)
        if wanted(code, data):
            return data
        if time.monotonic() > deadline:
            problems = [ch for ch in data["checks"] if ch["status"] in ("warn", "fail")]
            raise AssertionError(f"not within {timeout} s: {what}; exit {code}; {json.dumps(problems, indent=1)}")
        time.sleep(1)


def bad(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(ch["check"], ch["subject"], ch["status"]) for ch in data["checks"]
            if ch["status"] in ("warn", "fail")]


def check(data: dict[str, Any], name: str, subject: str) -> dict[str, Any]:
    found = [ch for ch in data["checks"] if ch["check"] == name and ch["subject"] == subject]
    assert len(found) == 1, (name, subject, data["checks"])
    return found[0]


def healthy(code: int, data: dict[str, Any]) -> bool:
    return code == 0


def test_status_through_a_worker_down_a_bad_socket_an_upgrade_and_redis_down(
        container: Container, standin_pair: tuple[Path, Path], package_deb: Path) -> None:
    c = container
    old, new = standin_pair
    c.install_debs([old])
    synapse_setup(c, SERVER)
    install_workers(c, package_deb, preseed("custom", "sync, client, typing", "sync:2"))
    # The admin includes the routing snippet in their vhost, as README.Debian shows.
    c.write_file("/etc/nginx/sites-enabled/matrix", VHOST)
    c.run(["nginx", "-t"])

    # Healthy: every process answers, holds its Redis subscription, one version.
    data = wait_status(c, healthy, "a healthy status")
    assert data["status"] == "healthy" and bad(data) == []
    assert [ch["subject"] for ch in data["checks"] if ch["check"] == "process"] == ["main", *WORKERS]
    for name in ["main", *WORKERS]:
        assert "subscribed" in check(data, "process", name)["detail"], data
    assert check(data, "versions", "synapse")["detail"] == f"every process runs {OLD_SYNAPSE}, as installed"
    assert check(data, "config", "workers")["status"] == "ok"
    assert "worker paths reach the snippet in 1 server block" in check(data, "nginx", "routing")["detail"]
    table = c.run(["matrix-synapse-workers", "status"]).stdout
    assert "\033[" not in table and table.rstrip().splitlines()[-1].startswith("healthy: 0 problems")

    # One worker of several stopped: degraded, and the advice names it.
    c.run(["systemctl", "stop", unit_of("sync-2")])
    code, data = status(c)
    assert code == 4 and bad(data) == [("process", "sync-2", "warn")], data
    assert check(data, "process", "sync-2")["advice"].startswith(f"systemctl start {unit_of('sync-2')}")
    c.run(["systemctl", "start", unit_of("sync-2")])
    wait_status(c, healthy, "sync-2 back")

    # A socket with the wrong mode is reported with the unit to restart.
    c.run(["chmod", "0666", "/run/matrix-synapse/sync-1.sock"])
    code, data = status(c)
    assert code == 4 and bad(data) == [("sockets", "/run/matrix-synapse/sync-1.sock", "warn")], data
    row = check(data, "sockets", "/run/matrix-synapse/sync-1.sock")
    assert row["detail"] == "mode 666, expected 660" and unit_of("sync-1") in row["advice"]
    c.run(["systemctl", "restart", unit_of("sync-1")])
    wait_status(c, healthy, "sync-1 restarted with its socket mode")

    # Synapse upgraded while policy-rc.d forbids restarts (as some unattended
    # upgrades run): every process keeps the old code.
    c.write_file(str(POLICY_RC_D), POLICY_RC_D_TEXT, 0o755)
    try:
        c.install_debs([new])
    finally:
        c.run(["rm", "-f", str(POLICY_RC_D)])
    code, data = status(c)
    versions = check(data, "versions", "synapse")
    assert versions["status"] == "warn" and code == 4, data
    assert versions["detail"].endswith(f"not running {NEW_SYNAPSE}: {', '.join(sorted(['main', *WORKERS]))}")
    assert versions["advice"].endswith("systemctl restart matrix-synapse.target")
    # Then one worker crashes: systemd starts it again, but its start waits (the start
    # gate) for main on the installed Synapse, so no process runs the new code beside a
    # main that has not migrated; status names it and the restart that ends it.
    pid = int(c.run(["systemctl", "show", "-P", "MainPID", unit_of("sync-1")]).stdout)
    c.run(["kill", "-9", str(pid)])
    data = wait_status(c, lambda code, d: check(d, "process", "sync-1")["status"] != "ok",
                       "sync-1 held by its start gate")
    state = c.run(["systemctl", "show", "-P", "ActiveState", unit_of("sync-1")]).stdout.strip()
    assert state in ("activating", "failed"), state
    assert f"{NEW_SYNAPSE}: sync-1" not in check(data, "versions", "synapse")["detail"], data
    assert data["exit_code"] in (4, 5), data
    c.run(["systemctl", "restart", "matrix-synapse.target"])
    data = wait_status(c, healthy, "every process on the new Synapse")
    assert check(data, "versions", "synapse")["detail"] == f"every process runs {NEW_SYNAPSE}, as installed"

    # Redis down: broken, even though every process still answers /health.
    c.run(["systemctl", "stop", "redis-server@matrix-synapse.service"])
    code, data = status(c)
    assert code == 5 and data["status"] == "broken"
    redis = check(data, "redis", "redis-server@matrix-synapse.service")
    assert redis["status"] == "fail" and redis["advice"].startswith(
        "systemctl restart redis-server@matrix-synapse.service")
    assert check(data, "process", "sync-1")["detail"].startswith("active, /health OK")
