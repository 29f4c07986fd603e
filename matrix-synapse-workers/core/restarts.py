"""Pure: in which order, and in which groups, workers restart.

:mod:`changes` decides *what* restarts; this module decides *how*:

* When main restarts, the workers that must restart go with it in one step:
  systemd stops them with main (``PartOf=``) and starts main first (it migrates
  the schema), then the stream writers, then the others (``After=`` in the
  worker drop-ins).  Shard lists (``stream_writers``, ``instance_map``,
  ``federation_sender_instances``, ``pusher_instances``) are read by main and
  their workers at start only, and Synapse requires every process to agree on
  them, so those changes always take this path (docs/rolling.md).
* Without main, workers that hold a stream or a duty restart together, writers
  first, in one step; then the stateless ones (:attr:`catalog.Role.stateless`)
  one at a time, each answering ``/health`` again before the next: the others of
  its pool, or main, serve its requests meanwhile.

>>> from .catalog import ROLES
>>> steps = restart_steps([("sync-1", ROLES["sync"]), ("typing-1", ROLES["typing"]),
...                        ("sync-2", ROLES["sync"]), ("pusher-1", ROLES["pusher"])], main=False)
>>> [(s.names, s.one_by_one) for s in steps]
[(('typing-1', 'pusher-1'), False), (('sync-1',), True), (('sync-2',), True)]
>>> [s.names for s in restart_steps([("sync-1", ROLES["sync"])], main=True)]
[('main', 'sync-1')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .catalog import Role

MAIN = "main"


@dataclass(frozen=True)
class Step:
    """Processes restarted in one go; the next step waits until each answers ``/health``."""

    names: tuple[str, ...]
    #: A stateless worker restarted alone, while the rest of its pool serves.
    one_by_one: bool = False

    @property
    def with_main(self) -> bool:
        return MAIN in self.names


def restart_steps(workers: Iterable[tuple[str, Role]], *, main: bool) -> tuple[Step, ...]:
    """The steps that restart ``workers`` (name and role, in plan order), and main when ``main``."""
    workers = list(workers)
    if main:
        writers = [n for n, r in workers if r.stream is not None]
        rest = [n for n, r in workers if r.stream is None]
        return (Step((MAIN, *writers, *rest)),)
    together = ([n for n, r in workers if not r.stateless and r.stream is not None]
                + [n for n, r in workers if not r.stateless and r.stream is None])
    steps = [Step(tuple(together))] if together else []
    steps += [Step((n,), one_by_one=True) for n, r in workers if r.stateless]
    return tuple(steps)


def upgrade_steps(workers: Iterable[tuple[str, Role]], *, main: bool) -> tuple[Step, ...]:
    """After a Synapse upgrade: main alone first (it migrates the schema, and every
    worker's start waits for it), then the stream writers together (what sends wait
    on), then the other stateful workers together, then the stateless ones one at a
    time.  ``workers``: those still running the old version (or not running)."""
    workers = list(workers)
    steps = [Step((MAIN,))] if main else []
    writers = tuple(n for n, r in workers if r.stream is not None)
    stateful = tuple(n for n, r in workers if r.stream is None and not r.stateless)
    steps += [Step(group) for group in (writers, stateful) if group]
    steps += [Step((n,), one_by_one=True) for n, r in workers if r.stateless]
    return tuple(steps)
