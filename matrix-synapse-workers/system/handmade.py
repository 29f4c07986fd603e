"""A read-only look for a worker setup made by hand: :class:`..core.adoption.HandMade`.

What the worker guide and Synapse's docs/systemd-with-workers make: worker files
without our marker in /etc/matrix-synapse/workers, the unit copies in
/etc/systemd/system and the links that enable them, an own conf.d/redis.yaml,
a server's stock configuration edited to a UNIX socket.  Deciding is
:func:`..core.adoption.adopt`'s.
"""

from __future__ import annotations

import grp
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml

from ..core import paths
from ..core.adoption import KNOWN_UNITS, HandMade, HandMadeWorker, UnitCopy
from ..core.errors import HostConfigError
from ..core.redisserver import SERVERS
from ..render.files import is_generated
from .hostfacts import merged_admin_config


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _worker(root: Path, relative: PurePosixPath) -> HandMadeWorker | None:
    text = _text(root / relative)
    if text is None:
        return HandMadeWorker(relative, None, "cannot be read as text")
    if is_generated(text):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return HandMadeWorker(relative, None, f"is not valid YAML ({' '.join(str(exc).split())})")
    if not isinstance(data, dict):
        return HandMadeWorker(relative, None, "is not a YAML mapping of options")
    return HandMadeWorker(relative, data)


def hand_made_workers(root: Path) -> tuple[HandMadeWorker, ...]:
    directory = root / paths.WORKERS_DIR
    if not directory.is_dir():
        return ()
    found = (_worker(root, paths.WORKERS_DIR / p.name)
             for p in sorted(directory.glob("*.yaml")) if p.is_file())
    return tuple(w for w in found if w is not None)


def _unit_copies(root: Path) -> tuple[UnitCopy, ...]:
    copies = []
    for name in KNOWN_UNITS:
        relative = paths.SYSTEMD_ETC / name
        text = _text(root / relative)
        if text is not None and not (root / relative).is_symlink():
            copies.append(UnitCopy(relative, text))
    return tuple(copies)


def _links(root: Path, workers: tuple[HandMadeWorker, ...],
           copies: tuple[UnitCopy, ...]) -> tuple[PurePosixPath, ...]:
    """Enable links of the hand-made workers, and links to the admin's unit copies."""
    units = root / paths.SYSTEMD_ETC
    if not units.is_dir():
        return ()
    instances = {paths.WORKER_UNIT_TEMPLATE.format(name=w.path.stem) for w in workers}
    copied = {"/" + str(c.path) for c in copies}
    found = []
    for link in sorted(units.glob("*.wants/*")):
        if not link.is_symlink():
            continue
        if link.name in instances or os.readlink(link) in copied:
            found.append(paths.SYSTEMD_ETC / link.relative_to(units))
    return tuple(found)


def _server_sockets(root: Path) -> dict[str, str]:
    """The active ``unixsocket`` of each server's stock configuration."""
    found = {}
    for server in SERVERS:
        text = _text(root / server.guide_conf) or ""
        for line in text.splitlines():
            match = re.match(r"^\s*unixsocket\s+(\S+)\s*$", line)
            if match:
                found[server.package] = match[1]
    return found


def _redis_file(root: Path) -> Mapping[str, Any] | None:
    text = _text(root / paths.REDIS_CONF_D)
    if text is None or is_generated(text):
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise HostConfigError(f"/{paths.REDIS_CONF_D} is not valid YAML") from None
    return data if isinstance(data, dict) else {}


def _log_configs(root: Path, workers: tuple[HandMadeWorker, ...]) -> dict[str, PurePosixPath]:
    found = {}
    for worker in workers:
        log = (worker.config or {}).get("worker_log_config")
        if isinstance(log, str) and log.startswith("/") and (root / log.lstrip("/")).is_file():
            found[str(worker.path)] = PurePosixPath(log.lstrip("/"))
    return found


def _socket_dir_group(root: Path) -> str | None:
    """The group of an existing socket directory, unless it is root's or Synapse's own
    (giving the web server Synapse's group would open its configuration)."""
    try:
        gid = (root / paths.SOCKET_DIR.relative_to("/")).stat().st_gid
        name = grp.getgrgid(gid).gr_name
    except (OSError, KeyError):
        return None
    return None if name in ("root", paths.SYNAPSE_USER) else name


def read_hand_made(root: Path) -> HandMade:
    """Everything :func:`..core.adoption.adopt` decides from."""
    workers = hand_made_workers(root)
    copies = _unit_copies(root)
    if not workers and not copies:
        return HandMade()
    shared, _ = merged_admin_config(root)
    listeners = shared.get("listeners")
    log_config = shared.get("log_config")
    return HandMade(
        workers=workers, shared=shared, unit_copies=copies, links=_links(root, workers, copies),
        redis_file=_redis_file(root), server_sockets=_server_sockets(root),
        log_configs=_log_configs(root, workers),
        main_log_config=log_config if isinstance(log_config, str) else None,
        socket_dir_group=_socket_dir_group(root),
        listeners=tuple(l for l in listeners if isinstance(l, dict))
        if isinstance(listeners, list) else ())
