"""Return Synapse to a single process: ``matrix-synapse-workers deconfigure`` and the prerm.

Each step is printed as it is taken; with ``dry_run`` printed ("would ...") and
not taken.  Run by hand, the package stays installed and so does its systemd
generator, which starts a worker from every /etc/matrix-synapse/workers/NAME.yaml
at the next daemon-reload or boot: our worker files are moved aside
(NAME.yaml.deconfigured, which purge removes like any file of ours), or those
workers would start without the Redis this removes.  At package removal the
generator goes with the package and the worker files stay until purge.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath
from typing import Callable, TextIO

from .apply import _ours, _remove_file, _worker_dropins, sweep_empty_dropin_dirs
from .core import paths
from .core.errors import WorkersError
from .core.webserver import CHECK_TOOL, WebServer
from .render.webserver import ALL_PATHS
from .render.files import RenderedFile, render_single_process
from .system import crashpoint, nginx, webservers
from .system.files import sweep_temporaries, write_atomically
from .system.hostfacts import existing_worker_names, read_host_facts
from .system.systemd import Systemd

#: The suffix our worker files get when set aside (the generator reads only ``*.yaml``).
SET_ASIDE_SUFFIX = ".deconfigured"


class _Steps:
    """Print each step, and take it unless this is a dry run."""

    def __init__(self, out: TextIO, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.systemd = Systemd(out, dry_run=dry_run)

    def file(self, text: str, action: Callable[[], object]) -> None:
        self.out.write(f"{'would ' if self.dry_run else ''}{text}\n")
        if not self.dry_run:
            action()

    def units(self, action: Callable[..., bool], *units: str) -> None:
        before = len(self.systemd.done)
        action(*units)
        for done in self.systemd.done[before:]:
            self.out.write(f"{'would ' if self.dry_run else ''}{done}\n")


def _unlink(root: Path, relative: PurePosixPath) -> None:
    (root / relative).unlink()
    crashpoint.done(f"removed {relative}")


def _set_aside(root: Path, relative: PurePosixPath) -> None:
    os.replace(root / relative, root / f"{relative}{SET_ASIDE_SUFFIX}")
    crashpoint.done(f"set aside {relative}")


def deconfigure_host(root: Path, out: TextIO = sys.stderr, *, dry_run: bool = False,
                     package_removal: bool = False) -> None:
    """Workers stop; main goes back to a single process and keeps serving, directly and
    through nginx (everything routed to main.sock) until purge.

    ``package_removal``: the prerm's call; the worker files stay (the generator goes)."""
    steps = _Steps(out, dry_run)
    if not dry_run:  # what a killed apply or removal left half-made (never an admin's file)
        sweep_temporaries(root, {paths.CONF_D, paths.WORKERS_DIR, paths.WORKER_LOGS_DIR,
                                 *(p.parent for p in ALL_PATHS[_server(root)])})
    names = existing_worker_names(root)
    steps.units(steps.systemd.stop, *(paths.WORKER_UNIT_TEMPLATE.format(name=n) for n in names))
    # The sandbox drop-ins go with the package; main runs on unconfined, as before.
    dropins = [d for d in (*_worker_dropins(root), paths.MAIN_SANDBOX_DROPIN) if _ours(root / d)]
    for dropin in dropins:
        steps.file(f"remove /{dropin}", lambda d=dropin: _remove_file(root, d))
    if not dry_run:
        sweep_empty_dropin_dirs(root, set())  # emptied by a killed removal
    aside = [] if package_removal else [
        w for w in (paths.WORKERS_DIR / f"{n}.yaml" for n in names) if _ours(root / w)]
    for worker in aside:
        steps.file(f"move /{worker} aside to /{worker}{SET_ASIDE_SUFFIX} (the generator would "
                   "start it without Redis)", lambda w=worker: _set_aside(root, w))
    for name in names:
        if not package_removal and paths.WORKERS_DIR / f"{name}.yaml" not in aside:
            out.write(f"note: /{paths.WORKERS_DIR}/{name}.yaml is not ours and stays: the "
                      "generator still starts it at the next daemon-reload or boot\n")
    if (dropins or aside) and not dry_run:
        steps.systemd.daemon_reload()
    changed = paths.MAIN_SANDBOX_DROPIN in dropins  # main restarts without it
    if (root / paths.WORKER_HOST_MARK).exists():
        _deconfigure_worker_host(root, steps)
        return
    for ours in (paths.PROMETHEUS_TARGETS, paths.REDIS_CONF_D):  # nothing to scrape, no Redis
        if _ours(root / ours):
            steps.file(f"remove /{ours}", lambda o=ours: _unlink(root, o))
            changed = changed or ours == paths.REDIS_CONF_D
    if _ours(root / paths.SHARED_CONF):
        changed = _single_process(root, steps) or changed
    if changed and steps.systemd.is_active(paths.MAIN_UNIT):
        steps.units(steps.systemd.restart, paths.MAIN_UNIT)
    if _ours(root / paths.SHARED_CONF):
        _route_to_main(root, steps)


def _single_files(root: Path, out: TextIO) -> tuple[RenderedFile, ...] | None:
    """The single process's files; None when the admin's config no longer renders."""
    try:
        return render_single_process(read_host_facts(root), _server(root))
    except WorkersError as exc:  # the admin's config broke since: main alone, no routing
        out.write(f"{exc}\n")
        return None


def _single_process(root: Path, steps: _Steps) -> bool:
    """conf.d/workers.yaml back to main's own listeners; whether it changed."""
    single = _single_files(root, steps.out)
    if single is None:
        steps.file(f"remove /{paths.SHARED_CONF}", lambda: _unlink(root, paths.SHARED_CONF))
        return True
    changed = False
    for rendered in single:
        if rendered.path in ALL_PATHS[_server(root)]:
            continue
        if (root / rendered.path).read_text(encoding="utf-8") != rendered.content:
            steps.file(f"write /{rendered.path} (main alone)",
                       lambda r=rendered: write_atomically(root, r, chown=True))
            changed = True
    return changed


def _server(root: Path) -> WebServer:
    """The web server whose routing files of ours are deployed (nginx when none are)."""
    return webservers.deployed(root) or WebServer.NGINX


def _route_to_main(root: Path, steps: _Steps) -> None:
    """The web server sends everything to main.sock (the admin's configuration includes our file)."""
    server = _server(root)
    single = _single_files(root, steps.out) or ()
    routing = [f for f in single if f.path in ALL_PATHS[server] and _ours(root / f.path)
               and (root / f.path).read_text(encoding="utf-8") != f.content]
    if not routing:
        return
    if steps.dry_run:
        for rendered in routing:
            steps.out.write(f"would write /{rendered.path} (everything to main), if "
                            f"{CHECK_TOOL[server]} accepts it, and reload {server.value}\n")
        return
    unit = webservers.unit(server)
    try:
        if nginx.write_checked(root, routing, [], chown=True, **webservers.checked_by(server)):
            steps.out.write("".join(f"wrote /{f.path} (everything to main)\n" for f in routing))
            if unit is not None and steps.systemd.is_active(unit):
                steps.units(steps.systemd.reload, unit)
    except WorkersError as exc:
        steps.out.write(f"{exc}\n")


def _deconfigure_worker_host(root: Path, steps: _Steps) -> None:
    """A worker host shares main's database: a main process here must never start,
    so it is disabled before the drop-in that kept it from starting goes away."""
    for rendered_path in (paths.SHARED_CONF, paths.REDIS_CONF_D):
        if _ours(root / rendered_path):
            steps.file(f"remove /{rendered_path}", lambda r=rendered_path: _unlink(root, r))
    steps.file(f"disable {paths.MAIN_UNIT}", lambda: steps.systemd.disable(paths.MAIN_UNIT))
    steps.out.write(f"{paths.MAIN_UNIT} is disabled on this worker host: its database belongs "
                    "to the main host. Enable it only once this host has its own database.\n")
