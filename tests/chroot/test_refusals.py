"""One rule for a host the package cannot configure, with real dpkg and debconf.

The case that used to leave dpkg half-configured (and dpkg-reconfigure then
refused to run): a PostgreSQL whose max_connections cannot hold the workers'
minimum pools.  A real PostgreSQL (the machine's own binaries, a throwaway
cluster on a free loopback port, max_connections 8: 5 slots besides the 3
reserved) that the chroot's Synapse reaches over TCP, as a host with its
database on another machine does.  The install exits 0 with the package
installed, nothing configured, one message with the numbers and the fix, and
``status`` showing why; once the fix is made, ``dpkg-reconfigure`` configures
the host and the reason goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from support.chroot import CHROOT_ENV

PACKAGE = "matrix-synapse-workers"
STATE = "/var/lib/matrix-synapse-workers"
PASSWORD = "not-a-real-password"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def small_postgres(bin_dir: Path, max_connections: int = 8) -> Iterator[int]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a role and database ``synapse``;
    yields its port."""
    initdb, pg_ctl, psql = bin_dir / "initdb", bin_dir / "pg_ctl", bin_dir / "psql"
    postgres = pwd.getpwnam("postgres")
    home = Path(tempfile.mkdtemp(prefix="msw-pg-"))
    os.chown(home, postgres.pw_uid, postgres.pw_gid)
    data, port = home / "data", _free_port()

    def as_postgres(*cmd: str, input: str | None = None) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, input=input,
                       text=True, capture_output=True, timeout=120)

    try:
        as_postgres(str(initdb), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256")
        as_postgres(str(pg_ctl), "-D", str(data), "-l", str(home / "log"), "-w", "-o",
                    f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
                    f"-c max_connections={max_connections}", "start")
        as_postgres(str(psql), "-h", str(home), "-p", str(port), "-d", "postgres", "-qc",
                    f"CREATE ROLE synapse LOGIN PASSWORD '{PASSWORD}'")
        as_postgres(str(psql), "-h", str(home), "-p", str(port), "-d", "postgres", "-qc",
                    "CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE 'C' "
                    "LC_CTYPE 'C' TEMPLATE template0")
        yield port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", str(data), "-m",
                        "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def database_section(port: int, cp_min: int, cp_max: int) -> str:
    return (f"database:\n  name: psycopg2\n  args:\n    user: synapse\n    password: {PASSWORD}\n"
            f"    database: synapse\n    host: 127.0.0.1\n    port: {port}\n"
            f"    cp_min: {cp_min}\n    cp_max: {cp_max}\n")


def use_database(chroot, section: str) -> None:
    path = chroot / "/etc/matrix-synapse/homeserver.yaml"
    new, count = re.subn(r"(?m)^database:\n(?:[ \t]+.*\n|\n)*", section + "\n", path.read_text())
    assert count == 1
    path.write_text(new)


def test_postgres_too_small_installs_unconfigured_and_reconfigure_repairs(synapse_host, ours_deb,
                                                                        postgres_bin):
    c = synapse_host
    with small_postgres(postgres_bin) as port:
        # main + 1 worker x cp_min 5 = 10 connections at start; PostgreSQL allows 5.
        use_database(c, database_section(port, cp_min=5, cp_max=5))
        before = c.snapshot("/etc", "/run")
        c.preseed({"preset": "minimal"})

        done = c.apt_install(ours_deb, check=False)

        out = done.stdout  # and stderr
        assert done.returncode == 0, out
        assert c.status() == "ii"  # dpkg is healthy: dpkg-reconfigure can run
        refused = [line for line in out.splitlines()
                   if line.startswith(f"{PACKAGE}: workers are NOT configured:")]
        assert len(refused) == 1, out
        assert "2 Synapse processes open at least 10 database connections (cp_min 5 each)" \
            in refused[0] and "max_connections 8, 3 reserved" in refused[0]
        assert "raise max_connections" in refused[0]
        assert f"{PACKAGE}: nothing was changed" in out
        assert not list((c / "/etc/matrix-synapse/workers").glob("*.yaml"))
        assert not c.has_group("clubmatrix") and c.statoverride("/run/matrix-synapse") == ""
        changed = {path for path, entry in c.snapshot("/etc", "/run").items()
                   if before.get(path) != entry}
        assert not {p for p in changed if p.startswith(("/etc/matrix-synapse", "/etc/redis",
                                                        "/etc/nginx", "/etc/tmpfiles.d",
                                                        "/run/matrix-synapse"))}, changed
        assert sorted(p.name for p in (c / STATE).iterdir()) == ["not-configured"]

        status = subprocess.run(["chroot", str(c.path), "env", "-i",
                                 *(f"{k}={v}" for k, v in CHROOT_ENV.items()),
                                 PACKAGE, "status", "--json"], capture_output=True, text=True)
        rows = json.loads(status.stdout)["checks"]
        row = [r for r in rows if r["subject"] == "not configured"]
        assert row and row[0]["detail"].startswith("not configured: 2 Synapse processes"), rows

        # The fix the message names: smaller pools.  Then what it says to run.
        use_database(c, database_section(port, cp_min=1, cp_max=2))
        again = c.run("dpkg-reconfigure", "-fnoninteractive", PACKAGE, check=False)
        assert again.returncode == 0, again.stdout
        assert {p.stem for p in (c / "/etc/matrix-synapse/workers").glob("*.yaml")} == {"sync-1"}
        assert not (c / f"{STATE}/not-configured").exists()
