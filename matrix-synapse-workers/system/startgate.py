"""A worker's ExecStartPre: wait, bounded, until main serves the installed Synapse.

A worker never migrates the database: started on code newer than the schema
(main not yet restarted after an upgrade, or still migrating) it exits at once
("Expected database schema version ...") and systemd restarts it every 3 s.
Main runs its migrations before it opens a listener, so main answering
``/health`` with ``Server: Synapse/<the installed version>`` means the schema
is this code's.  Until then this waits; after :data:`BOUND` seconds it fails
with one line saying why, and systemd tries again later (Restart=always).

Run as ``python3 -m matrix_synapse_workers.system.startgate WHERE`` where
WHERE is main's replication socket (a path) or ``host:port`` on a worker host.
The sandbox of the worker applies: it reads the venv's metadata and talks to
main, nothing else.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core.topology import Address
from .rolling import POLL, health, runs
from .synapseversion import installed_release

#: Below systemd's TimeoutStartSec (90 s by default), which covers ExecStartPre.
BOUND = 60.0


def parse_where(text: str) -> str | Address:
    """A socket path, or ``host:port`` / ``[v6]:port``.

    >>> parse_where("/run/matrix-synapse/replication.sock")
    '/run/matrix-synapse/replication.sock'
    >>> parse_where("[fd00::1]:9093")
    Address(host='fd00::1', port=9093)
    """
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return Address(host.strip("[]"), int(port))


def wait_for_main(where: str | Address, version: str | None, bound: float = BOUND) -> str | None:
    """None once main answers (as ``version`` when known); else why not, after ``bound`` s."""
    deadline = time.monotonic() + bound
    while True:
        seen = health(where)
        if runs(seen, version):
            return None
        if time.monotonic() >= deadline:
            if not seen.ok:
                return f"main ({where}) did not answer /health within {bound:g} s: {seen.detail}"
            return (f"main ({where}) still runs {seen.detail or 'an unknown version'} after {bound:g} s, "
                    f"not Synapse/{version}: this worker would refuse the database until main "
                    f"has migrated it (restart matrix-synapse.service)")
        time.sleep(POLL)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python3 -m matrix_synapse_workers.system.startgate MAIN_SOCKET|HOST:PORT\n")
        return 2
    problem = wait_for_main(parse_where(argv[1]), installed_release(Path("/")))
    if problem is not None:
        sys.stderr.write(f"Error: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
