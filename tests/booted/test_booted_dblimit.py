"""PostgreSQL's connection limit, asked for real before workers are added.

Each Synapse process keeps its own pool; the busy preset's 500s under load
were PostgreSQL refusing connections.  Here a real PostgreSQL (max_connections
lowered to 20, so a few workers reach it) and Synapse's own credentials: too many workers for the minimum pools are
refused with nothing changed, too many for the maximum pools are warned about.
"""

from __future__ import annotations

from pathlib import Path

from harness import Container
from test_scenarios import install_workers, preseed, workers_on_disk

# What an apply may change, listed with type, mode, owner and checksum: a refused apply
# leaves every line as it was (the times may change: nothing here reads them).
WATCHED = "/etc /var/lib/matrix-synapse /var/lib/matrix-synapse-workers /run/matrix-synapse"
LISTING = (f"find {WATCHED} -xdev -printf '%p %y %m %u %g\\n' | sort; "
           f"find {WATCHED} -xdev -type f -exec sha256sum {{}} + | sort")


def contents(c: Container) -> list[str]:
    return c.run(["sh", "-c", LISTING]).stdout.splitlines()


def test_workers_that_cannot_get_database_connections_are_refused(synapse_root: Path,
                                                                  package_deb: Path) -> None:
    with Container(synapse_root, name="dblimit") as c:
        install_workers(c, package_deb, preseed("minimal"))
        assert workers_on_disk(c) == ["sync-1"]
        c.run(["runuser", "-u", "postgres", "--", "psql", "-qc", "ALTER SYSTEM SET max_connections = 20"])
        c.run(["systemctl", "restart", "postgresql"], timeout=120)
        # 4 processes x cp_max 5 = 20 > 17 slots: applied, with a warning.
        r = c.run(["matrix-synapse-workers", "apply", "--workers", "sync:3"], check=False, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "warning: 4 Synapse processes may open up to 20 database connections" in r.stdout
        assert "max_connections 20, 3 reserved" in r.stdout
        assert workers_on_disk(c) == ["sync-1", "sync-2", "sync-3"]
        # The admin's minimum pools grow: 5 x cp_min 5 = 25 cannot even start.
        c.run(["sed", "-i", "s/cp_min: 1$/cp_min: 5/", "/etc/matrix-synapse/homeserver.yaml"])
        before = contents(c)
        r = c.run(["matrix-synapse-workers", "apply", "--workers", "sync:3,client"], check=False,
                  timeout=600)
        assert r.returncode == 1
        assert "5 Synapse processes open at least 25 database connections (cp_min 5 each)" in r.stderr
        assert "nothing was changed" in r.stderr
        assert workers_on_disk(c) == ["sync-1", "sync-2", "sync-3"]
        after = contents(c)
        assert sorted(set(before) ^ set(after)) == []
