"""Apply a plan to a host: decide everything first, then act in one place.

Order of work, so that nothing is half-applied and running processes see
consistent config:

1. read and validate (host config, users, the new file set loaded by Synapse's
   own loader); any error here changes nothing;
2. groups, memberships, the socket directory and its statoverride;
3. stop removed workers; write files (atomically), remove the removed ones;
4. Redis; systemd daemon-reload (the generator picks up the worker files);
5. main restarts if shared config changed, then affected workers restart, then
   new workers start: main always before workers.

A second run with nothing changed writes nothing and restarts nothing.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, TextIO

from .core import dbconnections
from .core import paths
from .core.restarts import restart_steps
from .core.changes import Changes, OnDisk, compute_changes, services_owed, touches_units, with_owed
from .core.errors import ApplyError, HostConfigError, SelectionError, WorkersError
from .core.facts import HostFacts, require_postgres, require_writable_paths
from .system.hostfacts import (deployed_redis_server, host_redis_server,
                               read_host_facts, require_server_name)
from .core.plan import Plan
from .deployment import Deployment, read_deployment
from .core.redisserver import SERVERS, RedisServer
from .render.redisconf import edit_guide_conf, effective_password, undo_guide_conf
from .render.files import RenderedFile, is_generated
from .core.selection import Selection
from .core.settings import RedisMode, Settings
from .system import (accounts, applied, crashpoint, netprobe, nginx, rolling, secrets, statoverride,
                     takeover, upgrade, webservers)
from .core.adoption import Adoption, describe as describe_adoption
from .core.webserver import WebServer
from .render.webserver import ALL_PATHS
from .system.files import commit, discard, stage_all, sweep_temporaries, write_atomically
from .system.systemd import Systemd, systemd_running
from .core.topology import HostRole

STATOVERRIDE_MARK = paths.STATE_DIR / "statoverride-added"
SYNAPSE_CHECK = Path(__file__).with_name("synapse_check.py")


@dataclass
class ApplyReport:
    changes: Changes
    plan: Plan
    system_steps: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    #: What the admin must be told (the postinst prints them): a switch of server, a password copied.
    notices: list[str] = field(default_factory=list)
    #: The server package behind the dedicated instance or the guide edit ("" for an existing Redis).
    redis_server: str = ""
    #: The host facts the decision read: a caller that applies after a dry run passes them back.
    facts: HostFacts | None = None
    #: The settings applied (a take-over keeps the Redis and socket group it found).
    settings: Settings | None = None
    #: The take-over of a hand-made setup this apply makes, if any.
    adoption: "Adoption | None" = None

    @property
    def changed(self) -> bool:
        return bool(self.system_steps or self.services or self.changes.files_changed)


def _read_on_disk(root: Path, desired: tuple[RenderedFile, ...],
                  removable: tuple[PurePosixPath, ...] = ()) -> dict[PurePosixPath, OnDisk]:
    found: dict[PurePosixPath, OnDisk] = {}
    candidates = {f.path for f in desired} | set(removable)
    for directory in (paths.WORKERS_DIR, paths.WORKER_LOGS_DIR):
        if (root / directory).is_dir():
            candidates |= {directory / p.name for p in (root / directory).glob("*.yaml")}
    candidates |= set(_worker_dropins(root))
    for relative in candidates:
        target = root / relative
        if not target.is_file():
            continue
        try:
            content: str | None = target.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            content = None
        found[relative] = OnDisk(content, target.stat().st_mode & 0o7777)
    return found


def _worker_dropins(root: Path) -> list[PurePosixPath]:
    """The worker sandbox drop-ins present (ours or not: the marker decides later)."""
    units = root / paths.SYSTEMD_ETC
    pattern = f"matrix-synapse-worker@*.service.d/{paths.SANDBOX_DROPIN_NAME}"
    return [paths.SYSTEMD_ETC / p.relative_to(units) for p in units.glob(pattern)] \
        if units.is_dir() else []


def sweep_empty_dropin_dirs(root: Path, planned: "set[str] | frozenset[str]") -> list[PurePosixPath]:
    """Remove the empty drop-in directories of workers not in ``planned``.

    :func:`_remove_file` removes a worker's drop-in, then its directory: a run
    killed between the two leaves the directory, and the next run, finding no
    drop-in of ours in it, would never remove it.  Only empty ones go (an
    admin's drop-in keeps its directory)."""
    units = root / paths.SYSTEMD_ETC
    if not units.is_dir():
        return []
    keep = {f"{paths.WORKER_UNIT_TEMPLATE.format(name=name)}.d" for name in planned}
    removed = []
    for directory in sorted(units.glob("matrix-synapse-worker@*.service.d")):
        if directory.name in keep or directory.is_symlink() or not directory.is_dir():
            continue
        try:
            directory.rmdir()
        except OSError:  # not empty: an admin's drop-in is there
            continue
        crashpoint.done(f"removed {directory}")
        removed.append(paths.SYSTEMD_ETC / directory.name)
    return removed


def _remove_file(root: Path, relative: PurePosixPath) -> None:
    """Remove one of our files, and its drop-in directory once empty."""
    (root / relative).unlink(missing_ok=True)
    crashpoint.done(f"removed {relative}")
    if relative.parent.name.endswith(".service.d"):
        try:
            (root / relative.parent).rmdir()
        except OSError:
            pass  # an admin's drop-in is still there
        else:
            crashpoint.done(f"removed {relative.parent}")


def synapse_python(root: Path) -> Path | None:
    """Synapse's interpreter: the venv of matrix-synapse-py3, the one Synapse package
    Depends accepts (the worker unit runs the same one)."""
    venv = root / paths.SYNAPSE_VENV.relative_to("/") / "bin/python"
    return venv if venv.exists() else None


def validate_with_synapse(root: Path, desired: tuple[RenderedFile, ...], changes: Changes,
                          out: TextIO, processes: int = 1,
                          pool: tuple[int, int] = (3, 5)) -> None:
    """Load the new file set with Synapse's own loader before anything is written, and
    check that ``processes`` pools of ``pool`` connections fit in PostgreSQL's limit."""
    python = synapse_python(root)
    if python is None or root != Path("/"):
        out.write("Synapse's interpreter was not found: the new configuration is not checked "
                  "by Synapse before it is written\n")
        return
    etc = root / paths.SYNAPSE_ETC
    removed = set(changes.remove)
    synapse = pwd.getpwnam(paths.SYNAPSE_USER)
    with tempfile.TemporaryDirectory(prefix="msw-check-") as tmp:
        stage = Path(tmp)
        shutil.copy2(etc / "homeserver.yaml", stage / "homeserver.yaml")
        (stage / "conf.d").mkdir()
        (stage / "workers").mkdir()
        if (etc / "conf.d").is_dir():
            for path in (etc / "conf.d").glob("*.yaml"):
                shutil.copy2(path, stage / "conf.d" / path.name)
        for rendered in desired:
            if rendered.path.parent in (paths.CONF_D, paths.WORKERS_DIR):
                (stage / rendered.path.parent.name / rendered.path.name).write_text(rendered.content)
        # Synapse's loader creates what it finds missing (the media store, say):
        # run it as the user Synapse runs as, so whatever it makes is Synapse's.
        for path in [stage, *stage.rglob("*")]:
            os.chown(path, synapse.pw_uid, synapse.pw_gid)
        base = [str(stage / "homeserver.yaml"), str(stage / "conf.d")]
        sets = [("main", base)]
        sets += [(p.stem, base + [str(p)]) for p in sorted((stage / "workers").glob("*.yaml"))
                 if paths.WORKERS_DIR / p.name not in removed]
        result = subprocess.run([str(python), str(SYNAPSE_CHECK), "--database-limits",
                                 "--throwaway-key", str(stage)],
                                input=json.dumps(sets),
                                capture_output=True, text=True, timeout=600, cwd=stage,
                                user=synapse.pw_uid, group=synapse.pw_gid, extra_groups=[])
    if result.returncode != 0:
        raise ApplyError(f"Synapse's config check could not run: {result.stderr.strip()[-500:]}")
    results = json.loads(result.stdout)
    limits = results.pop("__database__", None)
    missing_keys = results.pop("__missing_key__", [])
    failures = {label: r for label, r in results.items() if not r.startswith("OK")}
    if failures:
        label, message = sorted(failures.items())[0]
        raise ApplyError(f"Synapse rejects the new configuration for {label}: {message}; "
                         "nothing was changed")
    for key in missing_keys:
        out.write(f"note: Synapse's signing key {key} does not exist yet (Synapse has not "
                  "started here; its unit makes the key at the first start, before the "
                  "workers start): the new configuration was checked with a throwaway key "
                  "in a temporary directory\n")
    if isinstance(limits, dict):
        found = dbconnections.verdict(processes, cp_min=pool[0], cp_max=pool[1],
                                      max_connections=limits["max_connections"],
                                      reserved=limits["reserved"])
        if found.error:  # the host, not the answers: refused like SQLite (exit 0 at install)
            raise HostConfigError(f"{found.error}; nothing was changed")
        if found.warning:
            out.write(f"warning: {found.warning}\n")
    else:
        out.write(f"skipped: {dbconnections.unchecked(processes, cp_min=pool[0], cp_max=pool[1], reason=str(limits)[:160])}\n")


def _socket_dir_settings(settings: Settings, override: statoverride.Override | None,
                         ours: bool) -> Settings:
    """An admin's own statoverride decides owner, group and mode of the socket dir."""
    if override is None or ours:
        return settings
    return replace(settings, socket_group=override.group, socket_dir_owner=override.owner,
                   socket_dir_mode=override.mode)


def _check_accounts(settings: Settings) -> None:
    if not accounts.user_exists(paths.SYNAPSE_USER):
        raise HostConfigError(f"the user {paths.SYNAPSE_USER!r} does not exist; is Synapse "
                              "(matrix-synapse-py3) installed and configured?")
    if settings.web_user and not accounts.user_exists(settings.web_user):
        raise HostConfigError(
            f"web server user {settings.web_user!r} does not exist; install the web server first "
            "or choose another user (dpkg-reconfigure matrix-synapse-workers)")


def _guide_redis_text(root: Path, settings: Settings) -> tuple[Path, str, str] | None:
    if settings.redis.mode is not RedisMode.GUIDE:
        return None
    server = settings.redis.server
    conf = root / server.guide_conf
    try:
        current = conf.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostConfigError(f"/{server.guide_conf} does not exist; install {server.package} "
                              "or choose the dedicated instance") from None
    return conf, current, edit_guide_conf(current, str(settings.redis.socket))


def _read_include(root: Path, conf: PurePosixPath) -> Callable[[str], list[str]]:
    """Texts an ``include`` of conf names (a path or a glob; relative to conf's directory)."""
    def read(pattern: str) -> list[str]:
        base = PurePosixPath("/") / conf.parent
        target = PurePosixPath(pattern) if pattern.startswith("/") else base / pattern
        texts = []
        for found in sorted(root.glob(str(target).lstrip("/"))):
            try:
                texts.append(found.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
        return texts
    return read


def guide_password(root: Path, settings: Settings, text: str) -> str | None:
    """The password the admin's Redis (guide mode) requires, from its file and includes."""
    return effective_password(text, _read_include(root, settings.redis.server.guide_conf))


def _guide_password_stale(root: Path, password: str | None) -> bool:
    """Whether Synapse's copy of the guide-mode Redis password must be written or removed."""
    target = root / paths.REDIS_GUIDE_PASSWORD
    if password is None:
        return target.exists()
    if not target.is_file():
        return True
    st = target.stat()
    return not (target.read_text(encoding="utf-8") == password + "\n" and st.st_uid == 0
                and st.st_gid == grp.getgrnam(paths.SYNAPSE_USER).gr_gid
                and st.st_mode & 0o7777 == paths.REDIS_GUIDE_PASSWORD_MODE)


def _write_guide_password(root: Path, password: str | None) -> None:
    """Synapse's copy of the guide-mode Redis password (root:matrix-synapse 0640), or none.

    Our own path: written or removed as the admin's Redis configuration says.
    """
    if password is None:
        _remove_file(root, paths.REDIS_GUIDE_PASSWORD)
        return
    write_atomically(root, RenderedFile(paths.REDIS_GUIDE_PASSWORD, password + "\n",
                                        mode=paths.REDIS_GUIDE_PASSWORD_MODE, owner="root",
                                        group=paths.SYNAPSE_USER), chown=True)


def _with_host_server(root: Path, settings: Settings) -> Settings:
    """The dedicated or guide choice on the server this host has (redisserver.choose_server)."""
    if settings.redis.mode not in (RedisMode.DEDICATED, RedisMode.GUIDE):
        return settings
    return replace(settings, redis=settings.redis.with_server(host_redis_server(root)))


def _ensure_socket_dir(root: Path, settings: Settings, report: ApplyReport) -> None:
    directory = root / paths.SOCKET_DIR.relative_to("/")
    uid = pwd.getpwnam(settings.socket_dir_owner).pw_uid
    gid = grp.getgrnam(settings.socket_group).gr_gid
    if not directory.is_dir():
        directory.mkdir(parents=True)
        crashpoint.done(f"created {directory}")
        report.system_steps.append(f"created {paths.SOCKET_DIR}")
    status = directory.stat()
    if (status.st_uid, status.st_gid) != (uid, gid):
        os.chown(directory, uid, gid)
        crashpoint.done(f"chown {directory}")
        report.system_steps.append(f"{paths.SOCKET_DIR} owned by {settings.socket_dir_owner}:{settings.socket_group}")
    if status.st_mode & 0o7777 != settings.socket_dir_mode:
        os.chmod(directory, settings.socket_dir_mode)
        crashpoint.done(f"chmod {directory}")
        report.system_steps.append(f"{paths.SOCKET_DIR} mode {settings.socket_dir_mode:04o}")


def _made_record(root: Path) -> list[str]:
    record = root / paths.MADE_DIRECTORIES
    return record.read_text(encoding="utf-8").splitlines() if record.is_file() else []


def _write_made_record(root: Path, made: list[str]) -> None:
    if not made:
        _remove_file(root, paths.MADE_DIRECTORIES)
        return
    (root / paths.STATE_DIR).mkdir(parents=True, exist_ok=True)
    write_atomically(root, RenderedFile(paths.MADE_DIRECTORIES, "".join(f"{line}\n" for line in made),
                                        mode=0o644), chown=False)


def record_directories_to_make(root: Path, facts: HostFacts) -> list[str]:
    """Before anything can make them: the missing writable directories, added to the record
    of what the package made (returns those added).

    Synapse's loader, in the check that runs next, makes a missing media store and
    removes it when done; a run killed during the check leaves it behind, and the
    next run would take it for Synapse's own and never record it (purge would then
    leave it).  Recorded first, it is ours whoever made it."""
    made = _made_record(root)
    added = [w.real for w in facts.writable_paths if w.real is not None
             and not (root / w.real.lstrip("/")).is_dir() and w.real not in made]
    added = list(dict.fromkeys(added))
    if added:
        _write_made_record(root, [*made, *added])
    return added


def forget_unmade_directories(root: Path, added: list[str]) -> None:
    """A run that stopped before making them (a refusal, an error): the record as it was."""
    gone = {d for d in added if not (root / d.lstrip("/")).is_dir()}
    if gone:
        _write_made_record(root, [d for d in _made_record(root) if d not in gone])


def _ensure_writable_paths(root: Path, facts: HostFacts, report: ApplyReport) -> None:
    """Make a missing media store, as Synapse would (matrix-synapse, 0750).

    Synapse makes it at its first start, but the sandbox's ReadWritePaths= must
    name an existing directory before that (or the unit fails with 226/NAMESPACE):
    an image build, where Synapse has never run, has none.  Each one made is
    recorded first (:func:`record_directories_to_make`), so that purge removes it
    while still empty.  One in the record that a killed check's loader made
    (empty, with Synapse's own mode) is given ours.
    """
    record_directories_to_make(root, facts)
    made = _made_record(root)
    for writable in facts.writable_paths:
        if writable.real is None or writable.real not in made:
            continue
        directory = root / writable.real.lstrip("/")
        ids = (pwd.getpwnam(paths.SYNAPSE_USER).pw_uid, grp.getgrnam(paths.SYNAPSE_USER).gr_gid)
        if not directory.is_dir():
            directory.mkdir(mode=0o750)
            os.chown(directory, *ids)
            crashpoint.done(f"created {directory}")
            report.system_steps.append(f"created {writable.real} ({writable.setting}; the sandbox "
                                       "opens it before Synapse's first start would make it)")
            continue
        st = directory.stat()
        if not any(directory.iterdir()) and ((st.st_uid, st.st_gid), st.st_mode & 0o7777) != (ids, 0o750):
            os.chown(directory, *ids)
            os.chmod(directory, 0o750)
            crashpoint.done(f"chmod {directory}")
            report.system_steps.append(f"{writable.real} owned by {paths.SYNAPSE_USER}, mode 0750 "
                                       "(made by an interrupted run)")


def _accounts_and_overrides(root: Path, settings: Settings, override: statoverride.Override | None,
                            ours: bool, report: ApplyReport) -> None:
    steps = report.system_steps
    if accounts.ensure_system_group(settings.socket_group):
        steps.append(f"created group {settings.socket_group}")
    for user in filter(None, (paths.SYNAPSE_USER, settings.web_user)):
        if accounts.ensure_member(user, settings.socket_group):
            steps.append(f"added {user} to {settings.socket_group}")
    server_group = settings.redis.server.user
    if settings.redis.mode in (RedisMode.DEDICATED, RedisMode.GUIDE) and accounts.group_exists(server_group):
        if accounts.ensure_member(paths.SYNAPSE_USER, server_group):
            steps.append(f"added {paths.SYNAPSE_USER} to {server_group}")
    wanted = statoverride.Override(settings.socket_dir_owner, settings.socket_group, settings.socket_dir_mode)
    if override is None or (ours and override != wanted):
        # The mark first: a run killed right after adding the statoverride must not
        # leave it looking like the admin's (kept for good, even by purge).
        mark = root / STATOVERRIDE_MARK
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text("matrix-synapse-workers added the statoverride of /run/matrix-synapse\n")
        crashpoint.done(f"wrote {mark}")
        if override is not None:
            statoverride.remove(str(paths.SOCKET_DIR))
        statoverride.add(str(paths.SOCKET_DIR), wanted)
        steps.append(f"dpkg-statoverride {wanted.owner} {wanted.group} {wanted.mode:04o} {paths.SOCKET_DIR}")
    _ensure_socket_dir(root, settings, report)


def describe(changes: Changes) -> str:
    lines = [f"write {f.path}" for f in changes.write]
    lines += [f"keep the admin's {p} as {p}.dpkg-old" for p in changes.set_aside]
    lines += [f"remove {p}" for p in changes.remove]
    lines += [f"stop {n}" for n in changes.stop]
    lines += ["restart main"] if changes.restart_main else []
    lines += [f"restart {n}" for n in changes.restart_workers]
    lines += [f"start {n}" for n in changes.start]
    lines += [f"  because {r}" for r in changes.reasons]
    return "\n".join(lines) if lines else "nothing to change"


def check_spanning_settings(settings: Settings) -> None:
    """Workers on other hosts reach Redis over the network: only our own instance
    is set up for that (a private address and a password)."""
    if settings.topology.worker_hosts and settings.redis.mode is not RedisMode.DEDICATED:
        raise SelectionError(
            f"worker hosts need Redis on the private network with a password, which this package "
            f"sets up only for its dedicated instance, but Redis is {settings.redis.describe()!r}; "
            "choose the dedicated Redis (debconf matrix-synapse-workers/redis, or --redis dedicated)")


def _check_worker_host(root: Path, deployment: Deployment, out: TextIO) -> None:
    """A worker host's step at the network edge: its planned deployment is refused unless
    this machine is the address cluster.yaml gives it and (on a running system) main's
    replication, Redis and the database answer with the copied secrets."""
    label, cluster, facts = deployment.settings.topology.label, deployment.cluster, deployment.facts
    assert label is not None and cluster is not None
    secret = secrets.read_copied(root, paths.REPLICATION_SECRET)
    password = secrets.read_copied(root, paths.REDIS_PASSWORD)
    address = cluster.addresses[label]
    if not netprobe.is_local_address(address):
        raise HostConfigError(
            f"/{paths.CLUSTER_FILE} places worker host {label!r} at {address}, which is not an "
            f"address of this machine: another machine may already be {label!r}, or this one's "
            f"private address is not up; give this host its own name, or fix the address on the "
            "main host")
    if not systemd_running():
        out.write("no running system (an image build?): main, Redis and the database are "
                  "not checked from here\n")
        return
    secret_probe = netprobe.replication_secret(cluster.replication, secret)
    if secret_probe.outcome is netprobe.Outcome.REFUSED:
        secret_probe = netprobe.Probe(secret_probe.outcome, f"{secret_probe.detail}: copy "
                                      f"/{paths.REPLICATION_SECRET} from the main host again")
    probes = [secret_probe, netprobe.redis_auth(cluster.redis, password)]
    if facts.database_address is not None:
        host, port = facts.database_address
        probes.append(netprobe.tcp(netprobe.Address(host, port)))
    failed = [p.detail for p in probes if not p.ok]
    if failed:
        raise HostConfigError("this worker host cannot work yet, nothing was changed: "
                              + "; ".join(failed))


def adoption_blockers(root: Path, facts: HostFacts, adopt: bool) -> list[str]:
    """What a hand-made worker setup on this host has that the package cannot map, or
    that it was told to leave (each with its fix: core/adoption.py decides)."""
    try:
        takeover.decide(root, adopt, facts.existing_workers)
    except HostConfigError as exc:
        return [str(exc)]
    return []


def refusals(root: Path, facts: HostFacts, adopt: bool | None = True) -> list[str]:
    """Every reason this host cannot be configured as it is, each with its fix, all at once
    (the postinst then changes nothing, exits 0 and says them in one message).

    ``adopt``: whether a hand-made setup may be taken over; None: not looked at (a worker
    host, which takes nothing over)."""
    found = []
    for require in (lambda: require_server_name(root),  # without it Synapse does not even start
                    lambda: require_postgres(facts), lambda: require_writable_paths(facts)):
        try:
            require()
        except HostConfigError as exc:
            found.append(str(exc))
    return found + ([] if adopt is None else adoption_blockers(root, facts, adopt))


@dataclass(frozen=True)
class Decision:
    """Everything phase 1 of :func:`apply_host` decides, before its first change."""

    facts: HostFacts
    settings: Settings
    plan: Plan
    desired: tuple[RenderedFile, ...]
    changes: Changes
    #: An admin's statoverride of the socket directory, and whether it is ours.
    override: statoverride.Override | None
    ours: bool
    #: The guide Redis's conf: (path, text now, text wanted), or None.
    guide: tuple[Path, str, str] | None
    #: The server conf.d/redis.yaml pointed at before (a switch when it differs).
    previous_server: RedisServer | None = None
    #: The password the guide-mode server requires (Synapse gets a copy), or None.
    guide_pass: str | None = None
    #: The take-over of a hand-made setup, and where a killed run moved its files.
    adoption: "tuple[Adoption, PurePosixPath | None] | None" = None

    @property
    def worker_host(self) -> bool:
        return self.settings.topology.role is HostRole.WORKER_HOST


def decide(root: Path, selection: Selection | None, settings: Settings, facts: HostFacts | None,
           out: TextIO, adopt: bool = True) -> Decision:
    """Phase 1: read, check and decide; every error is raised before the first change."""
    facts = facts if facts is not None else read_host_facts(root)
    worker_host = settings.topology.role is HostRole.WORKER_HOST
    blockers = refusals(root, facts, None if worker_host else adopt)
    if blockers:
        raise HostConfigError(blockers[0] if len(blockers) == 1 else f"{len(blockers)} things "
                              "stand in the way: " + " ".join(f"({i}) {b}" for i, b in
                                                              enumerate(blockers, 1)))
    if worker_host:
        settings = replace(settings, web_user="")  # no web server here: main's host routes
    _check_accounts(settings)
    check_spanning_settings(settings)
    # A hand-made setup: its capacity, Redis and socket group, as found (core/adoption.py).
    adoption = None if worker_host else takeover.decide(root, adopt, facts.existing_workers)
    if adoption is not None:
        if adoption[0].counts:  # (only the guide's units copied: the answers' workers)
            selection = Selection(adoption[0].counts)
        settings = takeover.settings_for(adoption[0], settings)
    previous_server = None if worker_host else deployed_redis_server(root)
    if not worker_host:
        settings = _with_host_server(root, settings)
        settings = replace(settings, web_server=webservers.resolve(root, settings.web_server))
    guide = _guide_redis_text(root, settings)
    guide_pass = guide_password(root, settings, guide[1]) if guide is not None else None
    if guide_pass is not None:
        settings = replace(settings, redis=replace(settings.redis,
                                                   password_path=PurePosixPath("/") / paths.REDIS_GUIDE_PASSWORD))
    override = statoverride.get(str(paths.SOCKET_DIR))
    ours = (root / STATOVERRIDE_MARK).exists()
    settings = _socket_dir_settings(settings, override, ours)
    if selection is None and not worker_host:
        raise SelectionError("no workers chosen for the main host")
    deployment = read_deployment(root, selection, settings, facts=facts)
    if worker_host:
        _check_worker_host(root, deployment, out)
    plan = deployment.plan
    desired = deployment.files()
    if not webservers.is_installed(root, _web_server(settings)):
        desired = tuple(f for f in desired if f.path not in _routing_files(settings))
    # The main host's cluster.yaml goes once no worker host is left; on a worker host it
    # is the admin's copy and stays.
    # Our instance files of the other server go when the host switched servers.
    removable = () if worker_host else (paths.CLUSTER_FILE, paths.PROMETHEUS_TARGETS, *(
        p for s in SERVERS for p in (s.instance_conf, s.instance_auth_conf)
        if settings.redis.mode is not RedisMode.DEDICATED or s != settings.redis.server))
    on_disk = _read_on_disk(root, desired, removable)
    if adoption is not None:  # moved aside, not set aside beside ours
        on_disk = {p: f for p, f in on_disk.items() if p not in adoption[0].moves or f.ours}
    changes = compute_changes(plan, desired, on_disk, removable)
    return Decision(facts, settings, plan, desired, changes, override, ours, guide,
                    previous_server, guide_pass, adoption)


def apply_host(root: Path, selection: Selection | None, settings: Settings, *,
               dry_run: bool = False, out: TextIO = sys.stderr,
               facts: HostFacts | None = None, adopt: bool = True) -> ApplyReport:
    """``facts``: the host's Synapse configuration when the caller has read it already.

    ``selection`` is None on a worker host: its workers come from cluster.yaml.
    ``adopt``: take over a hand-made worker setup (False: refuse while there is one).
    """
    # 1. Decide; every error is raised before the first change.
    decision = decide(root, selection, settings, facts, out, adopt)
    redis = decision.settings.redis
    report = ApplyReport(decision.changes, decision.plan, redis_server=redis.server.package if (
        redis.mode in (RedisMode.DEDICATED, RedisMode.GUIDE) and not decision.worker_host) else "",
                         facts=decision.facts, settings=decision.settings,
                         adoption=decision.adoption[0] if decision.adoption else None)
    if dry_run:
        out.write(describe(decision.changes) + "\n")
        if decision.adoption is not None:
            out.write("".join(f"{line}\n" for line in describe_adoption(decision.adoption[0])))
            out.write("".join(f"move aside /{p}\n" for p in decision.adoption[0].moves))
        return report
    # What a killed earlier run decided for the services and may not have done: its
    # files are in place, so this run would see no change that needs them.
    owed = applied.owed_services(root)
    reload_owed = False
    if owed is not None:
        changes, reload_owed = with_owed(decision.changes, owed, decision.plan.names)
        decision = replace(decision, changes=changes)
        report.changes = changes
    # What a killed earlier run left half-made: its temporary files (never an admin's).
    for left in sweep_temporaries(root, {f.path.parent for f in decision.desired}
                                  | {paths.WORKERS_DIR, paths.WORKER_LOGS_DIR, paths.CLUSTER_DIR,
                                     paths.REDIS_GUIDE_PASSWORD.parent}
                                  | {p.parent for s in SERVERS for p in (s.instance_auth_conf, s.guide_conf)}):
        report.system_steps.append(f"removed {left}, left by an interrupted run")
    for left_dir in sweep_empty_dropin_dirs(root, set(decision.plan.names)):
        report.system_steps.append(f"removed the empty /{left_dir}, left by an interrupted run")
    to_make = record_directories_to_make(root, decision.facts)  # before the check can make them
    try:
        decision = _prepare(root, decision, report, out)
    except WorkersError:
        forget_unmade_directories(root, to_make)
        raise
    routing = _routing_files(decision.settings)
    nginx_writes = any(f.path in routing for f in decision.changes.write)
    debt = (services_owed(decision.changes, nginx_writes or reload_owed)
            if not decision.changes.nothing or decision.changes.restart_redis or reload_owed
            else None)
    owed_before = applied.owed_services(root) is not None  # a killed run's, or _prepare's
    # 2. Accounts, statoverride, socket directory.
    _accounts_and_overrides(root, decision.settings, decision.override, decision.ours, report)
    _ensure_writable_paths(root, decision.facts, report)
    if decision.worker_host and secrets.mark_worker_host(root, decision.settings.topology.label or ""):
        report.system_steps.append(f"marked as worker host {decision.settings.topology.label}: "
                                   f"{paths.MAIN_UNIT} does not start here")
    systemd = Systemd(out)
    retire = None if decision.adoption is None else (
        lambda: _retire(root, decision.adoption, systemd, report))
    nginx_changed = _write_files(root, decision.changes, systemd, out, debt, owed_before,
                                 _web_server(decision.settings), retire)
    _redis(root, decision, report, systemd, owed or {})
    _services(decision, systemd, nginx_changed or reload_owed)
    applied.services_paid(root)
    applied.clear_refusal(root)
    if decision.adoption is not None:
        takeover.finish(root)
    report.services = systemd.done
    return report


def _retire(root: Path, adoption: "tuple[Adoption, PurePosixPath | None]", systemd: Systemd,
            report: ApplyReport) -> None:
    """The hand-made workers stop and their files move aside, said in the report."""
    moved = [p for p in adoption[0].moves if os.path.lexists(root / p)]
    destination = takeover.retire(root, adoption[0], adoption[1], systemd)
    lines = describe_adoption(adoption[0])
    lines.append(f"moved aside to /{destination} (nothing deleted): "
                 + ", ".join(f"/{p}" for p in moved) if moved else
                 f"the hand-made files were moved aside to /{destination} before")
    report.system_steps.extend(lines)
    report.notices.extend(lines)


def _prepare(root: Path, decision: Decision, report: ApplyReport, out: TextIO) -> Decision:
    """Secrets Synapse's check reads, then Synapse's own check of the new files.

    Returns the decision with the restarts a changed guide-mode password adds."""
    plan, changes = decision.plan, decision.changes
    if plan.spans_hosts and not decision.worker_host:
        # Synapse's check reads them, so they exist first; made once, never replaced.
        for secret_path in (paths.REPLICATION_SECRET, paths.REDIS_PASSWORD):
            if secrets.ensure_generated(root, secret_path):
                report.system_steps.append(f"generated /{secret_path}")
    if not decision.worker_host and _guide_password_stale(root, decision.guide_pass):
        # Synapse reads it at start (redis.password_path): every process restarts, and
        # that is owed before the file changes (a run killed in between still owes it).
        changes = replace(changes, restart_main=True, restart_workers=tuple(
            n for n in plan.names if n not in changes.start))
        applied.owe_services(root, services_owed(changes, reload_nginx=False))
        _write_guide_password(root, decision.guide_pass)
        step = (f"wrote /{paths.REDIS_GUIDE_PASSWORD} (the password "
                f"/{decision.settings.redis.server.guide_conf} requires, readable by root and "
                "matrix-synapse only)" if decision.guide_pass is not None
                else f"removed /{paths.REDIS_GUIDE_PASSWORD} (Redis requires no password now)")
        report.system_steps.append(step)
        report.notices.append(step)
        decision = replace(decision, changes=changes)
        report.changes = changes
    if changes.files_changed:
        validate_with_synapse(root, decision.desired, changes, out, processes=1 + len(plan.workers),
                              pool=decision.facts.database_pool)
    return decision


def _web_server(settings: Settings) -> WebServer:
    return settings.web_server or WebServer.NGINX


def _routing_files(settings: Settings) -> tuple[PurePosixPath, ...]:
    """The chosen web server's files: written only if its own check accepts them."""
    return ALL_PATHS[_web_server(settings)]


def _write_files(root: Path, changes: Changes, systemd: Systemd, out: TextIO,
                 debt: dict[str, Any] | None, owed_before: bool,
                 server: WebServer = WebServer.NGINX,
                 retire: Callable[[], None] | None = None) -> bool:
    """3. Files.  The web server's first: its own check ('nginx -t', 'apache2ctl -t',
    'caddy validate', 'haproxy -c') must accept them, or nothing changes.

    ``debt``: the service actions to record as owed before the first change.
    ``retire``: a take-over's hand-made workers stop and their files move aside,
    once the web server accepted the new files and before ours go in place.
    Returns whether the web server's files changed."""
    routing = ALL_PATHS[server]
    # Every other new file complete beside its target first: a full file system
    # (ENOSPC) or any failure to write stops here, with every previous file in place.
    staged = stage_all(root, [f for f in changes.write if f.path not in routing], chown=True)
    try:
        if debt is not None:
            applied.owe_services(root, debt)  # added to what a killed run still owes (not all is in ``changes``)
        nginx_changed = nginx.write_checked(
            root, [f for f in changes.write if f.path in routing],
            [p for p in changes.set_aside if p in routing], chown=True,
            **webservers.checked_by(server))
    except BaseException as exc:
        discard(staged)
        if isinstance(exc, WorkersError) and not owed_before:
            applied.services_paid(root)  # nginx put everything back: nothing is owed
        raise
    # Removed workers stop before their files go.
    systemd.stop(*(paths.WORKER_UNIT_TEMPLATE.format(name=n) for n in changes.stop))
    if retire is not None:
        retire()
    for relative in changes.set_aside:
        if relative not in routing:
            os.replace(root / relative, root / f"{relative}.dpkg-old")
            crashpoint.done(f"set aside {relative}")
        out.write(f"kept your {relative} as {relative}.dpkg-old\n")
    for item in staged:
        commit(item)
    for relative in changes.remove:
        _remove_file(root, relative)
    return nginx_changed


def _redis(root: Path, decision: Decision, report: ApplyReport, systemd: Systemd,
           owed: Mapping[str, Any]) -> None:
    """4. Redis (or Valkey): the password file, the guide's conf, the dedicated instance,
    and leaving the other server after a switch.  Then systemd's reload for new units.

    ``owed``: what a killed earlier run still owed (its changes are on disk already)."""
    changes, settings, guide = decision.changes, decision.settings, decision.guide
    worker_host = decision.worker_host
    server = settings.redis.server
    redis_changed = changes.restart_redis
    if decision.plan.spans_hosts and not worker_host and settings.redis.mode is RedisMode.DEDICATED:
        if not secrets.redis_auth_current(root, server):
            applied.owe_services(root, {"restart_redis": True})  # before the change it pays for
            secrets.write_redis_auth(root, server)
            report.system_steps.append(f"wrote /{server.instance_auth_conf}")
            redis_changed = True
    if guide is not None and guide[1] != guide[2]:
        applied.owe_services(root, {"restart_guide_server": True})  # before the edit it pays for
        st = guide[0].stat()
        write_atomically(root, RenderedFile(server.guide_conf, guide[2], mode=st.st_mode & 0o7777,
                                            owner=accounts.user_name(st.st_uid),
                                            group=accounts.group_name(st.st_gid)), chown=True)
        report.system_steps.append(f"edited /{server.guide_conf} (port 0, unixsocket)")
        systemd.restart(server.stock_unit)
    elif owed.get("restart_guide_server") and guide is not None:
        systemd.restart(server.stock_unit)
    if not worker_host:
        _leave_other_servers(root, settings, decision.previous_server, systemd, report)
    if settings.redis.mode is RedisMode.DEDICATED and not worker_host:
        systemd.enable(server.instance_unit)
        if redis_changed and systemd.is_active(server.instance_unit):
            systemd.restart(server.instance_unit)
        elif not systemd.is_active(server.instance_unit):
            systemd.start(server.instance_unit)
    # After a kill, a unit or drop-in may have been written without the reload.
    if changes.start or changes.stop or touches_units(changes) or owed:
        systemd.daemon_reload()


def _services(decision: Decision, systemd: Systemd, nginx_changed: bool) -> None:
    """5. Main before workers; 6. nginx, after the workers are up (until then their pools
    fall back to main)."""
    changes = decision.changes
    if decision.worker_host and systemd.is_active(paths.MAIN_UNIT):
        systemd.stop(paths.MAIN_UNIT)  # two mains on one database must never run
    main = not decision.worker_host and (changes.restart_main or not systemd.is_active(paths.MAIN_UNIT))
    roles = {w.name: w.role for w in decision.plan.local_workers}
    # Main with its workers, in order; else stateful workers together, stateless one by one.
    steps = restart_steps([(n, roles[n]) for n in changes.restart_workers if n in roles], main=main)
    rolling.run_steps(steps, systemd, rolling.places(decision.plan.local_workers))
    systemd.start(*(paths.WORKER_UNIT_TEMPLATE.format(name=n) for n in changes.start))
    if systemd.running and not systemd.is_active(paths.TARGET_UNIT):
        systemd.start(paths.TARGET_UNIT)
    unit = webservers.unit(_web_server(decision.settings))
    if nginx_changed and unit is not None and systemd.is_active(unit):
        systemd.reload(unit)


def _leave_other_servers(root: Path, settings: Settings, previous: RedisServer | None,
                         systemd: Systemd, report: ApplyReport) -> None:
    """After a switch (Redis to Valkey or back, or away from the dedicated instance):
    our instance of the other server stops and is disabled, and the guide's edit of
    the other server's configuration is undone.  Said in the report."""
    for other in SERVERS:
        if settings.redis.mode is RedisMode.DEDICATED and other == settings.redis.server:
            continue
        active = systemd.is_active(other.instance_unit)
        if active or _enabled_links(root, other.instance_unit):
            if active:
                systemd.stop(other.instance_unit)
            systemd.disable(other.instance_unit)
            for link in _enabled_links(root, other.instance_unit):  # its package is gone
                link.unlink()
                crashpoint.done(f"removed {link}")
            report.system_steps.append(f"stopped and disabled {other.instance_unit}")
            report.notices.append(report.system_steps[-1])
        if settings.redis.mode is RedisMode.GUIDE and other == settings.redis.server:
            continue
        conf = root / other.guide_conf
        if conf.is_file() and "# matrix-synapse-workers: was" in conf.read_text(encoding="utf-8"):
            st = conf.stat()
            write_atomically(root, RenderedFile(other.guide_conf, undo_guide_conf(conf.read_text(encoding="utf-8")),
                                                mode=st.st_mode & 0o7777, owner=accounts.user_name(st.st_uid),
                                                group=accounts.group_name(st.st_gid)), chown=True)
            report.system_steps.append(f"restored /{other.guide_conf} (the guide's edit undone)")
            report.notices.append(report.system_steps[-1])
            systemd.try_restart(other.stock_unit)
    if previous is not None and previous != settings.redis.server and \
            settings.redis.mode in (RedisMode.DEDICATED, RedisMode.GUIDE):
        report.system_steps.append(
            f"Synapse now uses {settings.redis.server.package} instead of {previous.package} "
            f"({settings.redis.describe()}, socket {settings.redis.socket})")
        report.notices.insert(0, report.system_steps[-1])


def _enabled_links(root: Path, unit: str) -> list[Path]:
    directory = root / "etc/systemd/system"
    return sorted(p for p in directory.glob(f"*.wants/{unit}") if p.is_symlink()) \
        if directory.is_dir() else []


def _ours(path: Path) -> bool:
    return path.is_file() and is_generated(path.read_text(encoding="utf-8", errors="replace"))


def _write_routing(root: Path, server: WebServer, files: list[RenderedFile], systemd: Systemd,
                   out: TextIO) -> None:
    """Our routing files, if the server's own check accepts them; then its reload (if it runs)."""
    unit = webservers.unit(server)
    try:
        if nginx.write_checked(root, files, [], chown=True, **webservers.checked_by(server)) \
                and unit is not None and systemd.is_active(unit):
            systemd.reload(unit)
    except WorkersError as exc:
        out.write(f"{exc}\n")


def refresh_routes(root: Path, systemd: Systemd, out: TextIO) -> None:
    """Routes depend on the Synapse version: after an upgrade, render them for the new one.

    Only our own routing files (of the server deployed) on a main host change; the
    worker set stays as deployed.
    """
    server = webservers.deployed(root) or WebServer.NGINX
    if (root / paths.WORKER_HOST_MARK).exists() or not webservers.is_installed(root, server):
        return
    try:
        deployment = read_deployment(root)
    except WorkersError as exc:
        out.write(f"routes not refreshed for the new Synapse: {exc}\n")
        return
    ours = [f for f in deployment.files() if f.path in ALL_PATHS[server]
            and (_ours(root / f.path) or not (root / f.path).exists())]
    changed = [f for f in ours if not (root / f.path).is_file()
               or (root / f.path).read_text(encoding="utf-8") != f.content]
    if changed:
        _write_routing(root, server, changed, systemd, out)


def restart_after_upgrade(root: Path, out: TextIO = sys.stderr) -> None:
    """After a Synapse upgrade: main first (it migrates the schema), then what still
    runs the old code (system/upgrade.py), then the routes for the new version."""
    systemd = Systemd(out)
    if upgrade.restart_in_order(root, systemd):
        refresh_routes(root, systemd, out)
