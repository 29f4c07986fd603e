"""The sandbox on a booted system: exposure, the network policy per role, writable paths.

One container (each boot and install costs a minute): the package installed
with a confined role (sync), an outward one (media) and a stream writer
(typing), the media store moved to /srv behind a symlink as an admin might.

The network proof uses real Synapse processes: a tiny Synapse module, loaded
by every process from an admin-style conf.d file, tries one TCP connection at
start to an address on a network namespace the test makes inside the
container (TEST-NET-1, 192.0.2.0/24, reserved for documentation: never a real
host) and logs what happened.  A confined worker must fail, main and the media
worker must get through.
"""

from __future__ import annotations

import re
import time

import pytest

from booted_config import container_name
from harness import Container
from test_scenarios import SOCKETS, assert_all_healthy, install_workers, preseed, unit_of

OUTSIDE = "192.0.2.2"
PORT = 8099
WORKERS = ["media-1", "sync-1", "typing-1"]
PROBE = f'''"""Test-only Synapse module: one TCP connection at start, the outcome logged."""
import logging
import socket

logger = logging.getLogger("msw_probe")


class Probe:
    def __init__(self, config, api):
        try:
            with socket.create_connection(("{OUTSIDE}", {PORT}), timeout=3):
                logger.warning("msw-probe: reached")
        except OSError as exc:
            logger.warning("msw-probe: blocked: %s", exc)

    @staticmethod
    def parse_config(config):
        return config
'''
OUTCOME = re.compile(r"msw-probe: (reached|blocked: .*)")


def _outside(c: Container) -> None:
    """A veth to a network namespace of our own, a TCP listener on the far side."""
    for cmd in (["ip", "netns", "add", "msw-outside"],
                ["ip", "link", "add", "msw-out", "type", "veth", "peer", "name", "msw-peer"],
                ["ip", "link", "set", "msw-peer", "netns", "msw-outside"],
                ["ip", "addr", "add", "192.0.2.1/24", "dev", "msw-out"],
                ["ip", "link", "set", "msw-out", "up"],
                ["ip", "-n", "msw-outside", "addr", "add", f"{OUTSIDE}/24", "dev", "msw-peer"],
                ["ip", "-n", "msw-outside", "link", "set", "msw-peer", "up"],
                ["ip", "-n", "msw-outside", "link", "set", "lo", "up"]):
        c.run(cmd)
    c.run(["systemd-run", "--unit=msw-outside-listener", "ip", "netns", "exec", "msw-outside",
           "python3", "-m", "http.server", "--bind", OUTSIDE, str(PORT)])
    c.wait_until(["curl", "-sf", "-o", "/dev/null", f"http://{OUTSIDE}:{PORT}/"], timeout=30)


def _outcome(c: Container, unit: str, log: str) -> str:
    """The probe's last line, from the process's log file (Synapse's generated log config
    writes there only) or the journal (a log config with a console handler)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = c.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"], check=False).stdout
        text += c.run(["cat", f"/var/log/matrix-synapse/{log}.log"], check=False).stdout
        found = OUTCOME.findall(text)
        if found:
            return found[-1]
        time.sleep(1)
    raise AssertionError(f"{unit} never logged the probe's outcome")


def _exposure(c: Container, unit: str) -> float:
    out = c.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


@pytest.fixture(scope="module")
def sandboxed(synapse_root, package_deb, booted_host):
    with Container(synapse_root, name=container_name("sandbox")) as c:
        # The admin moved the media store to /srv and left a symlink behind.
        c.run("systemctl stop matrix-synapse.service && mkdir -p /srv/matrix-media && "
              "cp -a /var/lib/matrix-synapse/media/. /srv/matrix-media/ && "
              "chown matrix-synapse: /srv/matrix-media && rm -rf /var/lib/matrix-synapse/media && "
              "ln -s /srv/matrix-media /var/lib/matrix-synapse/media && "
              "systemctl start matrix-synapse.service")
        install_workers(c, package_deb, preseed("custom", "sync, media, typing"))
        assert_all_healthy(c, WORKERS)
        yield c


def test_every_unit_scores_at_most_1_5(sandboxed):
    c = sandboxed
    scores = {unit: _exposure(c, unit) for unit in ["matrix-synapse.service", *map(unit_of, WORKERS)]}
    assert all(score <= 1.5 for score in scores.values()), scores
    print(scores)


def test_media_behind_a_symlink_stays_writable(sandboxed):
    c = sandboxed
    dropin = c.read_file(f"/etc/systemd/system/{unit_of('media-1')}.d/matrix-synapse-workers.conf")
    assert "ReadWritePaths=/srv/matrix-media" in dropin
    pid = c.run(["systemctl", "show", "-P", "MainPID", unit_of("media-1")]).stdout.strip()
    # Inside the worker's own mount namespace, as its user: the store is writable, /etc is not.
    probe = ["nsenter", "-t", pid, "-m", "--", "runuser", "-u", "matrix-synapse", "--",
             "sh", "-c"]
    c.run([*probe, "touch /var/lib/matrix-synapse/media/.msw-probe && rm /srv/matrix-media/.msw-probe"])
    assert c.run([*probe, "touch /etc/matrix-synapse/.msw-probe"], check=False).returncode != 0


def test_a_confined_worker_cannot_reach_outside_and_an_outward_one_can(sandboxed):
    c = sandboxed
    _outside(c)
    site = c.run(["/opt/venvs/matrix-synapse/bin/python", "-c",
                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    c.write_file(f"{site}/msw_probe.py", PROBE)
    c.write_file("/etc/matrix-synapse/conf.d/00-msw-probe.yaml",
                 "modules:\n  - module: msw_probe.Probe\n    config: {}\n")
    try:
        c.run(["systemctl", "restart", "matrix-synapse.target"], timeout=180)
        assert_all_healthy(c, WORKERS)
        outcomes = {unit: _outcome(c, unit, log) for unit, log in
                    [("matrix-synapse.service", "homeserver"),
                     *((unit_of(w), w) for w in WORKERS)]}
        assert outcomes["matrix-synapse.service"] == "reached", outcomes
        assert outcomes[unit_of("media-1")] == "reached", outcomes
        for confined in ("sync-1", "typing-1"):
            assert outcomes[unit_of(confined)].startswith("blocked"), outcomes
        print(outcomes)
    finally:
        c.run(["rm", "-f", "/etc/matrix-synapse/conf.d/00-msw-probe.yaml", f"{site}/msw_probe.py"])


def test_status_shows_exposure_and_warns_when_an_admin_loosens_a_unit(sandboxed):
    c = sandboxed
    import json
    unit = unit_of("sync-1")

    def sandbox_rows() -> dict[str, dict]:
        r = c.run(["matrix-synapse-workers", "status", "--json"], check=False, timeout=60)
        return {row["subject"]: row for row in json.loads(r.stdout)["checks"]
                if row["check"] == "sandbox"}

    rows = sandbox_rows()
    assert set(rows) == {"matrix-synapse.service", *map(unit_of, WORKERS)}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    override = f"/etc/systemd/system/{unit}.d/override.conf"
    c.write_file(override, "[Service]\nProtectSystem=no\nPrivateUsers=no\nPrivateDevices=no\n"
                           "ProtectHome=no\nSystemCallFilter=\nRestrictAddressFamilies=\n"
                           "CapabilityBoundingSet=~\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        loosened = sandbox_rows()[unit]
        assert loosened["status"] == "warn" and override in loosened["detail"], loosened
    finally:
        c.run(["rm", "-f", override])
        c.run(["systemctl", "daemon-reload"])
