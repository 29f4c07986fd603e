"""The stand-in Synapse package on a booted system, driven by the harness helpers.

Skipped (with the reason) until tests/standin/build-standin exists.  The harness
tests in test_harness.py do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

import harness
from booted_config import SERVER_NAME, STANDIN_MAIN_URL
from harness import Container

URL = STANDIN_MAIN_URL


def test_standin_synapse_on_postgresql_survives_reboot(synapse_root: Path) -> None:
    with Container(synapse_root, name="standin") as c:
        assert c.last_state == "running", c.last_failed_units
        assert c.run(["systemctl", "is-active", "matrix-synapse.service"]).stdout.strip() == \
            "active"
        health = harness.wait_for_http(c, URL, "/health")
        assert health.text == "OK"
        assert health.headers["server"].startswith("Synapse/")

        admin = harness.register_user(c, URL, "alice", "alice-pw", admin=True)
        assert admin["user_id"] == f"@alice:{SERVER_NAME}"
        bob = harness.register_user(c, URL, "bob", "bob-pw")
        for _ in range(5):  # more than Synapse's default per-address login burst (3)
            assert harness.login(c, URL, "bob", "bob-pw")["user_id"] == bob["user_id"]

        # Synapse really uses PostgreSQL (its log does not say so).
        users = harness.psql(c, "SELECT name FROM users ORDER BY name").stdout.split()
        assert users == [f"@alice:{SERVER_NAME}", f"@bob:{SERVER_NAME}"]
        sessions = harness.psql(c, "SELECT count(*) FROM pg_stat_activity "
                                   "WHERE usename = 'synapse' AND datname = 'synapse' "
                                   "AND pid <> pg_backend_pid()").stdout.strip()
        assert int(sessions) >= 1

        c.reboot()
        harness.wait_for_http(c, URL, "/health")
        assert harness.login(c, URL, "alice", "alice-pw")["user_id"] == admin["user_id"]


def test_synapse_setup_keeps_the_rest_of_homeserver_yaml(synapse_root: Path) -> None:
    with Container(synapse_root, name="standin-config") as c:
        text = c.read_file("/etc/matrix-synapse/homeserver.yaml")
        assert "sqlite3" not in text
        assert "# Configuration file for Synapse." in text  # the generated comments are kept
        assert text.count("\ndatabase:") == 1
        names = [line for line in c.read_file("/etc/matrix-synapse/conf.d/server_name.yaml")
                 .splitlines() if line.startswith("server_name")]
        assert names == [f'server_name: "{SERVER_NAME}"']
        # Running it again changes nothing.
        harness.synapse_setup(c, SERVER_NAME, restart=False)
        assert c.read_file("/etc/matrix-synapse/homeserver.yaml") == text
