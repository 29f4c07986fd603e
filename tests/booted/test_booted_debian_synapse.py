"""Debian's own matrix-synapse (sid) is refused by apt, up front.

Workers need Synapse's Redis support, and Debian's archive cannot give it to
Debian's matrix-synapse: txredisapi is not packaged at all (python3-hiredis
is, but nothing pulls it in), so Synapse refuses `redis: enabled: true` with
DependencyException.  Our package therefore depends on Matrix.org's
matrix-synapse-py3 only (see docs/design.md, "Which Synapse").  This proves the
decision with the real package: a booted sid system running Debian's
matrix-synapse, then `apt-get install ./matrix-synapse-workers_*.deb`.

The sid root is cached (harness.ensure_suite_root).  If sid itself cannot be
installed today (debootstrap, or one of the packages, fails) the test skips
and says so, and fails under MSW_REQUIRE_BOOTED=1 (scripts/test, so CI): a
run that did not prove the refusal did not pass.  Once built, the cached root
keeps the test independent of sid's churn until its key changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from support.require import need

SUITE = "sid"
# Debian's matrix-synapse, and every other dependency of our package, so the
# only thing apt can miss is the Synapse package itself.
PACKAGES = ("matrix-synapse", "redis-server", "python3-yaml", "python3-jinja2", "python3-debian", "python3-redis",
            "python3-debconf", "adduser", "curl")
SERVER_NAME = "sid.example.test"
# The admin's answer to Debian's own question (its unit does not start without it).
PRESEED = f"matrix-synapse matrix-synapse/server-name string {SERVER_NAME}\n"
# Debian's shipped homeserver.yaml has a TLS listener without certificates: an
# admin behind a reverse proxy replaces the listeners with a plain loopback one.
LISTENERS = """listeners:
  - port: 8008
    type: http
    tls: false
    x_forwarded: true
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client, federation]
"""
SYNAPSE_URL = "http://127.0.0.1:8008"
OURS = "matrix-synapse-workers"
UNIT_STATE = "ActiveState,SubState,MainPID,NRestarts,ExecMainStartTimestampMonotonic"


@pytest.fixture(scope="module")
def sid_root(booted_host: None) -> Path:
    try:
        return harness.ensure_suite_root(SUITE, PACKAGES, preseed=PRESEED)
    except harness.SuiteUnavailable as e:
        need(False, f"Debian {SUITE} cannot be installed from the mirror today: {e}", "MSW_REQUIRE_BOOTED")


def test_apt_refuses_with_debians_matrix_synapse(sid_root: Path, package_deb: Path) -> None:
    with harness.Container(sid_root, name="debian-synapse", boot=False, unified_cgroup=True) as c:
        c.write_file("/etc/matrix-synapse/conf.d/listeners.yaml", LISTENERS)
        c.boot()
        harness.wait_for_http(c, SYNAPSE_URL, "/health", timeout=120)
        version = c.run(["dpkg-query", "-W", "-f", "${Version} ${Status}", "matrix-synapse"]).stdout
        assert version.endswith(" install ok installed"), version
        unit_before = c.run(["systemctl", "show", "-p", UNIT_STATE, "matrix-synapse"]).stdout
        status_before = c.read_file("/var/lib/dpkg/status")

        deb = f"/root/{package_deb.name}"
        c.copy_in(package_deb, deb)
        r = c.run(["apt-get", "install", "-y", "--no-install-recommends", deb], check=False)
        out = r.stdout + r.stderr
        print(f"Debian's matrix-synapse {version.split()[0]}; apt said:\n{out}")
        assert r.returncode != 0, out
        assert "Depends: matrix-synapse-py3 (>= 1.89.0) but it is not installable" in out, out
        assert "Unpacking" not in out and "Setting up" not in out, out

        # Nothing of ours reached dpkg: not even a half-installed record or a file.
        assert c.run(["dpkg", "-s", OURS], check=False).returncode != 0
        assert c.read_file("/var/lib/dpkg/status") == status_before
        leftovers = c.run(f"ls -d /var/lib/dpkg/info/{OURS}.* /usr/share/doc/{OURS} "
                          "/usr/lib/systemd/system/matrix-synapse-worker@.service "
                          "/lib/systemd/system/matrix-synapse-worker@.service "
                          "/etc/matrix-synapse/workers /etc/matrix-synapse/conf.d/workers.yaml",
                          check=False)
        assert leftovers.stdout == "", leftovers.stdout

        # Debian's Synapse is untouched and still serving; apt is healthy afterwards.
        assert c.run(["systemctl", "show", "-p", UNIT_STATE, "matrix-synapse"]).stdout == unit_before
        harness.wait_for_http(c, SYNAPSE_URL, "/health", timeout=10)
        assert c.run(["dpkg", "--audit"]).stdout == ""
        fix = c.run(["apt-get", "-f", "install", "-y"])
        assert "0 upgraded, 0 newly installed, 0 to remove" in fix.stdout, fix.stdout
