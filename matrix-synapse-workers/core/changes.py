"""Pure: compare what should exist with what is there, and say what must happen.

The result is the smallest set of actions that makes the running processes
match the files: new workers start, removed ones stop, a worker restarts only
when its own file or shared config it reads changed, and main restarts only
when shared config changed.  Who reads which shared key is catalog data
(:class:`catalog.Scope`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import paths
from .catalog import ROLES, Role, Scope
from .memory import BUDGET_LINE
from .plan import Plan, parse_worker_name
from .redisserver import SERVERS
from ..render.files import RenderedFile, is_generated, meaning
from ..render.sandbox import GATE_COMMENT

#: Shared keys every process reads, whoever set them.
_EVERY_PROCESS_KEYS = frozenset({"instance_map", "stream_writers"})
#: Shared keys only main reads (every worker's own file sets its own ``caches``).
_MAIN_ONLY_KEYS = frozenset({"listeners", "caches"})


@dataclass(frozen=True)
class OnDisk:
    """A file as found: its text (None if unreadable as text) and mode."""

    content: str | None
    mode: int

    @property
    def ours(self) -> bool:
        return is_generated(self.content)


@dataclass(frozen=True)
class Changes:
    write: tuple[RenderedFile, ...] = ()
    #: Files of ours that no longer belong (removed workers).
    remove: tuple[PurePosixPath, ...] = ()
    #: Admin files in the way of ours: kept as ``<path>.dpkg-old`` before writing.
    set_aside: tuple[PurePosixPath, ...] = ()
    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    restart_workers: tuple[str, ...] = ()
    restart_main: bool = False
    #: The dedicated Redis's own configuration changed beyond its header.
    restart_redis: bool = False
    reasons: tuple[str, ...] = field(default=())

    @property
    def files_changed(self) -> bool:
        return bool(self.write or self.remove)

    @property
    def nothing(self) -> bool:
        return not (self.files_changed or self.stop or self.start or self.restart_workers
                    or self.restart_main)


def _key_owner_roles() -> dict[str, Role]:
    owners: dict[str, Role] = {}
    for role in ROLES.values():
        keys = list(role.shared_when_present)
        keys += [role.duty.key] if role.duty else []
        keys += [role.leader_key] if role.leader_key else []
        for key in keys:
            owners[key] = role
    return owners


_KEY_OWNERS = _key_owner_roles()


def _parse(content: str | None) -> dict[str, Any]:
    if content is None:
        return {}
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def changed_shared_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def workers_reading(keys: set[str], kept: Mapping[str, Role]) -> set[str]:
    """Names of kept workers that read any of ``keys``."""
    readers: set[str] = set()
    for key in keys:
        if key in _MAIN_ONLY_KEYS:
            continue
        owner = _KEY_OWNERS.get(key)
        if key in _EVERY_PROCESS_KEYS or owner is None or owner.shared_scope is Scope.EVERY_PROCESS:
            return set(kept)
        readers |= {name for name, role in kept.items() if role is owner}
    return readers


def _worker_of(path: PurePosixPath) -> str | None:
    if path.parent in (paths.WORKERS_DIR, paths.WORKER_LOGS_DIR) and path.suffix == ".yaml":
        return path.stem
    return paths.worker_of_sandbox_dropin(path)


def what_the_process_reads(path: PurePosixPath, text: str | None) -> str | None:
    """A file's :func:`meaning`; for a worker's unit drop-in without its ``[Unit]`` part.

    ``[Unit]`` holds only the start order (writers first), and ``ExecStartPre=`` the
    start gate (wait for main on the installed Synapse): systemd takes them at the
    daemon-reload that every written drop-in gets, and the running process is
    unchanged, so a change there restarts nothing.

    >>> dropin = PurePosixPath("etc/systemd/system/matrix-synapse-worker@sync-1.service.d/"
    ...                        "matrix-synapse-workers.conf")
    >>> what_the_process_reads(dropin, "[Unit]\\nAfter=x\\n\\n[Service]\\nExecStartPre=/bin/true\\n"
    ...                                "UMask=0027\\n")
    '[Service]\\nUMask=0027\\n'
    """
    text = meaning(text)
    if text is None or paths.worker_of_sandbox_dropin(path) is None:
        return text
    kept, in_unit = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            in_unit = line.strip() == "[Unit]"
        if not in_unit and not line.startswith((GATE_COMMENT, "ExecStartPre=")):
            kept.append(line)
    return "".join(kept)


def budget_line(content: str | None) -> str | None:
    """The memory budget a shared file was rendered with (its ``# memory-budget:`` line)."""
    for line in (content or "").splitlines():
        if line.startswith(BUDGET_LINE):
            return line
    return None


def _same_but_caches(path: PurePosixPath, old: str | None, new: str | None) -> bool:
    """A worker file whose only change is its ``caches``: its share of the memory budget
    moved because another process came or went.  Autotuning is read at start, so the
    running process keeps its old share until its next restart, which this does not force."""
    if path.parent != paths.WORKERS_DIR or old is None or new is None:
        return False
    before, after = _parse(old), _parse(new)
    if before == after:
        return False  # a change beyond the YAML it holds (a comment): rewritten and restarted
    before.pop("caches", None)
    after.pop("caches", None)
    return bool(before) and before == after


def touches_units(changes: "Changes") -> bool:
    """Whether a unit drop-in is written or removed: systemd must reload first."""
    changed = [f.path for f in changes.write] + list(changes.remove)
    return any(paths.worker_of_sandbox_dropin(p) or p == paths.MAIN_SANDBOX_DROPIN
               for p in changed)


def compute_changes(plan: Plan, desired: tuple[RenderedFile, ...],
                    on_disk: Mapping[PurePosixPath, OnDisk],
                    removable: Iterable[PurePosixPath] = ()) -> Changes:
    """``on_disk`` holds every desired path that exists plus every file in the
    workers and worker-logs directories (and the ``removable`` ones that exist):
    files this package wrote before that go when no longer desired."""
    old_workers = {p.stem for p, f in on_disk.items()
                   if p.parent == paths.WORKERS_DIR and f.ours and parse_worker_name(p.stem)}
    new_workers = set(plan.names)
    roles = {w.name: w.role for w in plan.local_workers}
    kept = {name: roles[name] for name in new_workers & old_workers}
    added = new_workers - old_workers
    removed = old_workers - new_workers

    write = []
    set_aside = []
    # Rewritten for more than a header (our version in it): what a process reads changed.
    read_changed: set[PurePosixPath] = set()
    restart: set[str] = set()
    reasons = []
    main_sandbox = False
    old_shared = on_disk[paths.SHARED_CONF].content if paths.SHARED_CONF in on_disk else None
    new_shared = next((f.content for f in desired if f.path == paths.SHARED_CONF), None)
    # The admin changed the budget: every process takes its new share now.
    budget_changed = budget_line(old_shared) != budget_line(new_shared)
    for rendered in desired:
        current = on_disk.get(rendered.path)
        if current is not None and current.content == rendered.content and current.mode == rendered.mode:
            continue
        write.append(rendered)
        if current is not None and not current.ours:
            set_aside.append(rendered.path)
        if current is None or (what_the_process_reads(rendered.path, current.content)
                               != what_the_process_reads(rendered.path, rendered.content)):
            read_changed.add(rendered.path)
        worker = _worker_of(rendered.path)
        if (not budget_changed and current is not None
                and _same_but_caches(rendered.path, current.content, rendered.content)):
            read_changed.discard(rendered.path)
        if worker in kept and rendered.path in read_changed:
            restart.add(worker)
            reasons.append(f"{worker}: its own configuration changed")
        if rendered.path == paths.MAIN_SANDBOX_DROPIN and rendered.path in read_changed:
            main_sandbox = True
            reasons.append("main: its sandbox changed")

    shared_keys = changed_shared_keys(_parse(old_shared), _parse(new_shared))
    if not budget_changed:
        shared_keys.discard("caches")  # main's share moved with the workers: at its next restart
    redis_changed = paths.REDIS_CONF_D in read_changed
    readers = workers_reading(shared_keys, kept)
    if redis_changed:
        readers = set(kept)
    if readers - restart:
        reasons.append(f"{', '.join(sorted(readers - restart))}: shared settings they read changed "
                       f"({', '.join(sorted(shared_keys)) or 'redis'})")
    restart |= readers
    for name in added | removed:
        parsed = parse_worker_name(name)
        if parsed and parsed.role.moves_together:
            together = {n for n, r in kept.items() if r is parsed.role}
            if together - restart:
                reasons.append(f"{', '.join(sorted(together))}: {parsed.role.name} workers move together")
            restart |= together

    # A removed worker's files, and log configs left by a worker file an admin deleted.
    remove = sorted(p for p, f in on_disk.items() if f.ours and (
        _worker_of(p) in removed
        or (p.parent in (paths.WORKER_LOGS_DIR,) and _worker_of(p) not in new_workers)
        or (paths.worker_of_sandbox_dropin(p) is not None and _worker_of(p) not in new_workers)
        or (p in set(removable) and p not in {d.path for d in desired})))
    return Changes(
        write=tuple(write),
        remove=tuple(remove),
        set_aside=tuple(set_aside),
        stop=tuple(sorted(removed)),
        start=tuple(n for n in plan.names if n in added),
        restart_workers=tuple(n for n in plan.names if n in restart),
        restart_main=bool(shared_keys) or redis_changed or main_sandbox,
        restart_redis=any(server.instance_conf in read_changed for server in SERVERS),
        reasons=tuple(reasons),
    )


def services_owed(changes: Changes, reload_nginx: bool) -> dict[str, Any]:
    """The service actions ``changes`` needs, as recorded before the first change
    (see :func:`with_owed`)."""
    return {"stop": list(changes.stop), "start": list(changes.start),
            "restart_workers": list(changes.restart_workers), "restart_main": changes.restart_main,
            "restart_redis": changes.restart_redis, "reload_nginx": reload_nginx}


def with_owed(changes: Changes, owed: Mapping[str, Any], names: Sequence[str]) -> tuple[Changes, bool]:
    """This run's changes plus the service actions a killed run decided and may not
    have taken (its files are written, so this run sees no change that needs them);
    and whether nginx is owed a reload.  ``names``: the workers planned now.

    >>> owed = {"stop": ["sync-3"], "start": ["sync-2"], "restart_workers": ["client-1"],
    ...         "restart_main": True, "reload_nginx": True}
    >>> changes, reload = with_owed(Changes(), owed, ["sync-1", "sync-2", "client-1"])
    >>> changes.stop, changes.start, changes.restart_workers, changes.restart_main, reload
    (('sync-3',), ('sync-2',), ('client-1',), True, True)
    """
    planned = set(names)
    start = set(changes.start) | (set(owed.get("start", ())) & planned)
    # Stopped for a change this run no longer makes: it runs again.
    start |= set(owed.get("stop", ())) & planned
    stop = set(changes.stop) | (set(owed.get("stop", ())) - planned)
    restart = (set(changes.restart_workers) | (set(owed.get("restart_workers", ())) & planned)) - start
    return replace(changes, stop=tuple(sorted(stop)), start=tuple(n for n in names if n in start),
                   restart_workers=tuple(n for n in names if n in restart),
                   restart_main=changes.restart_main or bool(owed.get("restart_main")),
                   restart_redis=changes.restart_redis or bool(owed.get("restart_redis"))), \
        bool(owed.get("reload_nginx"))
