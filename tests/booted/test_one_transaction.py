"""Issue 11, section 3: `apt install matrix-synapse-py3 matrix-synapse-workers` in one go.

On a booted bookworm (systemd runs, so Synapse's postinst starts it), both
packages are given to one apt-get run. Our package either configures the
workers or says in one message what to do, changes nothing and exits 0: it
never leaves a package that fails to configure on every later apt run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from booted_config import SERVER_NAME, container_name
from harness import Container

DIR = "/root/debs"
WORKERS_ANSWERS = ("matrix-synapse-workers matrix-synapse-workers/preset select custom\n"
                   "matrix-synapse-workers matrix-synapse-workers/worker-types multiselect sync\n"
                   "matrix-synapse-workers matrix-synapse-workers/worker-counts string \n")


@pytest.fixture
def fresh(base_root: Path, request: pytest.FixtureRequest):
    """A booted bookworm with PostgreSQL, Redis and nginx, no Synapse."""
    with Container(base_root, name=container_name(request.node.name)) as c:
        yield c


def apt_install_both(c: Container, standin_deb: Path, package_deb: Path, preseed: str):
    c.run(["debconf-set-selections"], input=preseed)
    for deb in (standin_deb, package_deb):
        c.copy_in(deb, f"{DIR}/{deb.name}")
    return c.run(["apt-get", "install", "-y", "--no-install-recommends",
                  f"{DIR}/{standin_deb.name}", f"{DIR}/{package_deb.name}"],
                 env={"DEBIAN_FRONTEND": "noninteractive"}, check=False, timeout=900)


def both_installed(c: Container) -> None:
    status = c.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}\\n",
                    "matrix-synapse-py3", "matrix-synapse-workers"]).stdout.split()
    assert status == ["ii", "ii"], status
    # Nothing pending for the next apt run.
    assert c.run(["dpkg", "--audit"]).stdout.strip() == ""


def test_without_a_server_name_says_what_to_do_and_changes_nothing(fresh, standin_deb, package_deb):
    c = fresh
    done = apt_install_both(c, standin_deb, package_deb, WORKERS_ANSWERS)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    both_installed(c)
    lines = [line for line in out.splitlines() if "workers are NOT configured" in line]
    assert len(lines) == 1 and "Synapse has no server name" in lines[0], out
    assert "matrix-synapse/server-name" in lines[0] and "server_name.yaml" in lines[0]
    assert not c.exists("/etc/matrix-synapse/workers") and not c.exists("/etc/matrix-synapse/conf.d/workers.yaml")
    assert c.run(["apt-get", "install", "-y", "--no-install-recommends", f"{DIR}/{package_deb.name}"],
                 env={"DEBIAN_FRONTEND": "noninteractive"}).returncode == 0


def test_with_a_server_name_a_fresh_sqlite_synapse_is_left_alone(fresh, standin_deb, package_deb):
    c = fresh
    done = apt_install_both(c, standin_deb, package_deb,
                            f"matrix-synapse-py3 matrix-synapse/server-name string {SERVER_NAME}\n"
                            + WORKERS_ANSWERS)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    both_installed(c)
    lines = [line for line in out.splitlines() if "workers are NOT configured" in line]
    assert len(lines) == 1 and "'sqlite3'" in lines[0] and "synapse_port_db" in lines[0], out
    assert not c.exists("/etc/matrix-synapse/workers")
    # Synapse itself was started by its own postinst and runs as a single process.
    harness.wait_for_http(c, "http://127.0.0.1:8008", "/health", timeout=90)


def test_with_postgresql_configured_first_the_workers_come_up(fresh, standin_deb, package_deb):
    """Config management drops the database settings in conf.d, then installs both."""
    c = fresh
    c.write_file("/etc/matrix-synapse/conf.d/database.yaml",
                 "database:\n  name: psycopg2\n  args:\n"
                 f"    user: {harness.DB_USER}\n    password: {harness.DB_PASSWORD}\n"
                 f"    dbname: {harness.DB_NAME}\n    host: {harness.PG_SOCKET_DIR}\n"
                 "    cp_min: 1\n    cp_max: 5\n")
    done = apt_install_both(c, standin_deb, package_deb,
                            f"matrix-synapse-py3 matrix-synapse/server-name string {SERVER_NAME}\n"
                            + WORKERS_ANSWERS)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    both_installed(c)
    assert "1 worker configured (sync-1)" in out, out
    c.wait_until(["systemctl", "is-active", "--quiet", "matrix-synapse-worker@sync-1.service"], timeout=120)
    for name in ("main", "sync-1"):
        harness.wait_for_http(c, f"/run/matrix-synapse/{name}.sock", "/health", timeout=90)
