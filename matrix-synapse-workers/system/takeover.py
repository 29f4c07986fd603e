"""The take-over of a hand-made worker setup, at the edge: decide it (from the host, or
from the record a killed run left), and move the hand-made files aside.

Before the first move the decision is recorded in
/var/lib/matrix-synapse-workers/adopting (JSON): a run killed half-way is
finished by the next from that record, with the capacity the whole hand-made
setup had (the files already moved are no longer there to be counted).  Every
move is one rename into /etc/matrix-synapse/workers.hand-made/<time>/, keeping
the file's path below it; nothing is ever deleted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from ..core import paths
from ..core.adoption import (ADOPTED_DIR, ADOPTING_RECORD, Adoption, Mapped, adopt, beside_deployed,
                             blocked_message)
from ..core.plan import counts_from_workers
from ..core.errors import HostConfigError
from ..core.redisserver import SERVERS
from ..core.settings import RedisSettings, Settings, parse_redis
from . import crashpoint
from .handmade import read_hand_made
from .systemd import Systemd

#: The debconf answer and command option that decline the take-over.
LEAVE = "leave"


def _redis_data(redis: RedisSettings | None) -> dict[str, Any] | None:
    if redis is None:
        return None
    return {"choice": redis.describe(), "server": redis.server.package,
            "password_path": str(redis.password_path) if redis.password_path else None}


def _redis_of(data: Any) -> RedisSettings | None:
    if not isinstance(data, dict):
        return None
    server = next((s for s in SERVERS if s.package == data.get("server")), SERVERS[0])
    settings = parse_redis(str(data["choice"]), server)
    if data.get("password_path"):
        settings = replace(settings, password_path=PurePosixPath(data["password_path"]))
    return settings


def read_record(root: Path) -> tuple[Adoption, PurePosixPath] | None:
    """The take-over a killed run began, and where its files go; None when none is pending."""
    try:
        data = json.loads((root / ADOPTING_RECORD).read_text(encoding="utf-8"))
        adoption = Adoption(
            workers=tuple(Mapped(m["name"], PurePosixPath(m["path"]), tuple(m["roles"]), m["why"])
                          for m in data["workers"]),
            counts=dict(data["counts"]), redis=_redis_of(data["redis"]),
            socket_group=data["socket_group"],
            moves=tuple(PurePosixPath(p) for p in data["moves"]), stop=tuple(data["stop"]),
            kept_units=tuple(PurePosixPath(p) for p in data["kept_units"]),
            notes=tuple(data["notes"]), blockers=())
        return adoption, PurePosixPath(data["destination"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decide(root: Path, wanted: bool, on_disk: Sequence[str] = ()) -> tuple[Adoption, PurePosixPath | None] | None:
    """The take-over this run makes (with a killed run's destination), or None when there
    is nothing hand-made.  ``on_disk``: the worker names in the workers directory (the
    package's own come on top).  Raises HostConfigError, before any change, when it is
    blocked or declined."""
    pending = read_record(root)
    if pending is not None:
        return pending  # its counts are the whole deployment, decided before its first move
    found = read_hand_made(root)
    if not found.found:
        return None
    hand_made = {w.path.stem for w in found.workers}
    deployed = counts_from_workers(n for n in on_disk if n not in hand_made)
    adoption = beside_deployed(adopt(found), deployed) if deployed else adopt(found)
    if not wanted:
        shown = ", ".join("/" + str(p) for p in (*(w.path for w in found.workers),
                                                 *(c.path for c in found.unit_copies)))
        raise HostConfigError(
            f"a hand-made worker setup is here ({shown}) and taking it over was declined "
            f"(matrix-synapse-workers/hand-made is '{LEAVE}', or --no-adopt); the package "
            "configures nothing while it is here. To have it taken over (same workers per "
            "role, the files moved aside, never deleted), run: dpkg-reconfigure "
            "matrix-synapse-workers and choose 'adopt'")
    if adoption.blockers:
        raise HostConfigError(blocked_message(adoption))
    return adoption, None


def settings_for(adoption: Adoption, settings: Settings) -> Settings:
    """The answers' settings with what the hand-made setup decided kept as found."""
    if adoption.redis is not None:
        settings = replace(settings, redis=adoption.redis)
    if adoption.socket_group:
        settings = replace(settings, socket_group=adoption.socket_group)
    return settings


def _record(root: Path, adoption: Adoption, destination: PurePosixPath) -> None:
    data = {"destination": str(destination), "workers": [asdict(m) for m in adoption.workers],
            "counts": dict(adoption.counts), "redis": _redis_data(adoption.redis),
            "socket_group": adoption.socket_group, "moves": [str(p) for p in adoption.moves],
            "stop": list(adoption.stop), "kept_units": [str(p) for p in adoption.kept_units],
            "notes": list(adoption.notes)}
    target = root / ADOPTING_RECORD
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.new")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=1, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    crashpoint.done(f"wrote {target}")


def retire(root: Path, adoption: Adoption, destination: PurePosixPath | None,
           systemd: Systemd) -> PurePosixPath:
    """Stop the hand-made workers, then move every hand-made file aside (the record first).

    Returns where the files went."""
    if destination is None:
        destination = ADOPTED_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        _record(root, adoption, destination)
    # Their files are still here: they may run (a killed run stopped the others).
    running = [unit for unit, worker in zip(adoption.stop, adoption.workers)
               if (root / worker.path).exists() and systemd.is_active(unit)]
    systemd.stop(*running)
    for source in adoption.moves:
        moved = root / destination / source
        # Moved by a killed run already: what is at the source now is ours (never move it
        # over the admin's file).
        if not os.path.lexists(root / source) or os.path.lexists(moved):
            continue
        moved.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        os.replace(root / source, moved)
        crashpoint.done(f"moved {source} aside")
    # (Also when a killed run moved the link: this run must still enable ours.)
    if any(p.name == paths.TARGET_UNIT and p.parent.name.endswith(".wants") for p in adoption.moves):
        systemd.enable(paths.TARGET_UNIT)  # the package's target, where the admin's copy was
        crashpoint.done(f"enabled {paths.TARGET_UNIT}")
    return destination


def finish(root: Path) -> None:
    """The take-over is complete: its record goes."""
    if (root / ADOPTING_RECORD).exists():
        (root / ADOPTING_RECORD).unlink()
        crashpoint.done("removed the take-over record")
