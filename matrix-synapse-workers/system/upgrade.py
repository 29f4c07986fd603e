"""After a Synapse upgrade (the package's trigger): main first, then the rest, once.

Debian's matrix-synapse-py3 postinst restarts ``matrix-synapse.service`` itself
on upgrade (debhelper's restart-after-upgrade; its prerm does not stop it).
Through ``PartOf=`` systemd restarts the running workers with it, starting main
first (it migrates the schema), then the stream writers, then the others
(``After=``).  The trigger comes after that: it restarts only what does not run
the new code yet, so the two never restart the same process twice:

* main, when it does not answer ``/health`` as the installed Synapse (a postinst
  that did not restart it, or policy-rc.d in the way); then it waits until main
  does, bounded (migrations can take minutes);
* each worker whose process started before main's current one (or that is not
  running), in :func:`core.restarts.upgrade_steps` order: writers together,
  other stateful workers together, stateless ones one at a time;
* then waits until every worker answers as the installed Synapse.

Each worker's start is gated as well (:mod:`startgate`), so a worker that systemd
restarts on its own meanwhile waits for main instead of failing in a loop.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Callable

from ..core import paths
from ..core.plan import parse_worker_name
from ..core.restarts import MAIN, upgrade_steps
from . import rolling
from .hostfacts import existing_worker_names
from .synapseversion import installed_release
from .systemd import Systemd


def _settle(systemd: Systemd, bound: float = rolling.HEALTH_WAIT * 2,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """Until no Synapse unit has a start or stop queued (bounded: then decide anyway)."""
    deadline = clock() + bound
    while systemd.queued("matrix-synapse") and clock() < deadline:
        sleep(rolling.POLL)


def restart_in_order(root: Path, systemd: Systemd) -> bool:
    """Returns False when there is nothing of ours to restart (no workers)."""
    names = existing_worker_names(root)
    if not names:
        return False
    version = installed_release(root)
    worker_host = (root / paths.WORKER_HOST_MARK).exists()
    parsed = {n: parse_worker_name(n) for n in names}
    # On a worker host the workers serve over TCP on its private address: no waits there.
    where = {} if worker_host else rolling.places(
        p.worker() for p in parsed.values() if p is not None)
    main_start = None
    if not worker_host:
        main_socket = where[MAIN]
        if version is None or not rolling.runs(rolling.health(main_socket), version):
            if not systemd.restart(paths.MAIN_UNIT):
                return True  # systemd not running, or policy-rc.d said no: nothing more to do
        if systemd.running and not systemd.dry_run:
            rolling.wait_healthy(MAIN, main_socket, bound=rolling.MAIN_WAIT, version=version)
        main_start = systemd.started_at(paths.MAIN_UNIT)
    # The workers systemd restarts with main start once main is up, writers first: a
    # start in progress runs the new code already, and must not be restarted again.
    _settle(systemd)
    stale = []
    for name in names:
        unit = rolling.unit_of(name)
        started = systemd.started_at(unit) if systemd.is_active(unit) else None  # failed, stopped
        if started is None or main_start is None or started < main_start:
            role = parsed[name].role if parsed[name] is not None else None
            if role is not None:
                stale.append((name, role))
    wait = partial(rolling.wait_healthy, version=version)
    rolling.run_steps(upgrade_steps(stale, main=False), systemd, where, wait=wait)
    if systemd.running and not systemd.dry_run:
        for name in names:  # those systemd restarted with main, and the last step's
            if name in where:
                wait(name, where[name])
    return True
