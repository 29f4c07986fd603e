"""The postinst's logic, in the package so that it is unit-tested (with a fake debconf).

configure
    Read the answers, check them (:mod:`.answers`).  A bad answer is shown and
    asked again when debconf can show it; when it cannot (noninteractive,
    preseeded), the message is printed and the postinst fails before anything
    is changed.  On a worker host the workers come from the cluster file the
    main host wrote, not from the answers, and its name must be one that file
    gives.  Then a dry run of the apply engine, still with debconf up.  One rule
    for a host that cannot take workers (SQLite, no server name, PostgreSQL's
    max_connections too small for the workers, which Synapse's check in the
    real run finds): every blocker and its fix said in one message, nothing
    configured, the reason kept for ``status`` (:func:`..system.applied.refuse`)
    and the install succeeds, because matrix-synapse-py3 installs SQLite by
    default and a package that fails to configure would block every later apt
    run (and dpkg-reconfigure refuses a half-configured package).  Then debconf is stopped and the apply engine
    does the work, with the host facts the dry run read; what was applied is recorded (:mod:`..system.applied`) for
    debian/config.
triggered
    Synapse was upgraded (interest-noawait on its venv): restart main, then
    the workers, so they never run another Synapse version than main.  This is
    handled before debconf is started (starting it would run config).

Each returns None when the debhelper snippets are to run next, or the exit
status to fail with.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Protocol, TextIO

from ..core import paths
from ..core.errors import HostConfigError, WorkersError
from ..core.plan import Plan
from ..core.selection import AUTO, Selection
from ..core.settings import RedisMode, Settings
from ..core.topology import HostRole
from ..core.webserver import WebServer, web_user_for
from ..core.words import plural
from ..system import applied
from ..system.synapseversion import SYNAPSE_PACKAGE, package_version
from . import answers
from .questions import followups

PACKAGE = paths.PACKAGE
FRONTEND = "/usr/share/debconf/frontend"
INVALID = f"{PACKAGE}/invalid-answer"
NOT_CONFIGURED = f"{PACKAGE}/not-configured"


class Debconf(Protocol):
    """The part of python3-debconf's ``Debconf`` the postinst uses."""

    def get(self, question: str) -> str: ...
    def set(self, question: str, value: str) -> Any: ...
    def subst(self, template: str, key: str, value: str) -> Any: ...
    def fset(self, question: str, flag: str, value: str) -> Any: ...
    def forceInput(self, priority: str, question: str) -> bool: ...
    def go(self) -> Any: ...
    def stop(self) -> Any: ...


def say(message: str, out: TextIO | None = None) -> None:
    print(f"{PACKAGE}: {message}", file=out or sys.stderr, flush=True)


def synapse_package_version() -> str:
    """'matrix-synapse-py3 1.163.2+standin' or similar; '' if it is not installed."""
    version = package_version(SYNAPSE_PACKAGE, timeout=None)
    return f"{SYNAPSE_PACKAGE} {version}" if version else ""


# --- debconf ------------------------------------------------------------------


def start_debconf(argv: list[str]) -> Debconf:
    """Re-exec under the debconf frontend if needed; return a connected Debconf.

    The protocol keeps its own copies of the pipes; fd 0 and fd 1 are then
    pointed at /dev/null and stderr, so no child process can read or write
    the protocol.
    """
    if not os.environ.get("DEBIAN_HAS_FRONTEND"):
        os.environ["PERL_DL_NONLAZY"] = "1"
        os.execv(FRONTEND, [FRONTEND, argv[0], *argv[1:]])
    import debconf  # python3-debconf

    write_fd = 1
    if os.environ.get("DEBCONF_REDIR"):
        try:
            os.fstat(3)
            write_fd = 3
        except OSError:
            pass
    protocol_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    protocol_out = os.fdopen(os.dup(write_fd), "w", encoding="utf-8")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = sys.stderr
    return debconf.Debconf(read=protocol_in, write=protocol_out)


def stop_debconf(db: Debconf) -> None:
    db.stop()
    for handle in (getattr(db, "write", None), getattr(db, "read", None)):
        try:
            if handle is not None:
                handle.close()
        except OSError:
            pass


def show(db: Debconf, template: str, priority: str, message: str) -> bool:
    """Show an error template with the message; False when debconf does not show it."""
    db.subst(template, "message", " ".join(message.split()))
    db.fset(template, "seen", "false")
    if not db.forceInput(priority, template):
        return False
    db.go()
    return True


def ask_again(db: Debconf, question: str) -> bool:
    """Ask a question again after an invalid answer; False when it cannot be shown."""
    db.fset(question, "seen", "false")
    if not db.forceInput("critical", question):
        return False
    db.go()
    # A new choice may need the questions that depend on it (questions.FLOW).
    needed = followups(question, {q: db.get(q) for q in answers.QUESTIONS})
    for followup in needed:
        db.fset(followup, "seen", "false")
        db.forceInput("critical", followup)
    if needed:
        db.go()
    return True


def check_host_name(root: Path, label: str) -> None:
    """A worker host's name must be one the main host named, when its cluster file is here.

    Without a readable cluster file the apply engine's dry run says what to
    copy (the package installs, nothing is configured).
    """
    from ..system.clusterfile import read_cluster
    try:
        known = read_cluster(root).addresses
    except HostConfigError:
        return
    if label not in known:
        raise answers.InvalidAnswer(
            answers.Q_HOST_NAME,
            f"host name {label!r} is not a worker host in /{paths.CLUSTER_FILE}; accepted: "
            f"{', '.join(sorted(known)) or 'none (name this host on the main host first)'}")


def valid_answers(db: Debconf, root: Path,
                  user_exists: Callable[[str], bool]) -> tuple[Selection | None, Settings]:
    """(Selection or None, Settings) from debconf; asks again until valid, or raises InvalidAnswer."""
    while True:
        raw = [db.get(q) for q in answers.QUESTIONS]
        try:
            selection, settings = answers.from_answers(*raw)
            if settings.web_user and not user_exists(settings.web_user):
                raise answers.InvalidAnswer(
                    answers.Q_WEB_USER,
                    f"web server user {settings.web_user!r} does not exist on this system; give "
                    "the user the web server runs as (www-data for nginx and Apache), or nothing")
            if settings.topology.role is HostRole.WORKER_HOST:
                check_host_name(root, settings.topology.label or "")
            return selection, settings
        except answers.InvalidAnswer as exc:
            if not (show(db, INVALID, "critical", str(exc)) and ask_again(db, exc.question)):
                raise


# --- messages ------------------------------------------------------------------


def summary(plan: Plan, settings: Settings, redis_server: str = "") -> str:
    """One line: this host's workers, and where Redis (and which server) and the other hosts are."""
    local = plan.local_workers
    text = f"{plural(len(local), 'worker')} configured ({', '.join(w.name for w in local)})"
    if settings.topology.role is HostRole.WORKER_HOST:
        return (f"{text} on worker host {settings.topology.label}; Redis and replication: "
                "the main host's, as /etc/matrix-synapse/cluster/cluster.yaml says")
    text += f"; Redis: {settings.redis.describe()}"
    if redis_server:
        text += f" ({redis_server})"
    remote = [w.name for w in plan.workers if w not in local]
    if remote:
        text += f"; on worker hosts: {', '.join(remote)}"
    return text


def record_adoption(db: Debconf, adoption: Any, settings: Settings | None) -> None:
    """After a take-over the answers say what it deploys (the workers per type, the Redis
    and group found), so that a later dpkg-reconfigure keeps them."""
    if adoption.counts:
        chosen = answers.answers_from_counts(adoption.counts)
        db.set(answers.Q_PRESET, chosen.preset)
        db.set(answers.Q_TYPES, chosen.worker_types)
        db.set(answers.Q_COUNTS, chosen.worker_counts)
    if adoption.socket_group:
        db.set(answers.Q_SOCKET_GROUP, adoption.socket_group)
    if settings is None:
        return
    redis = settings.redis
    if redis.mode is RedisMode.EXISTING:
        db.set(answers.Q_REDIS, RedisMode.EXISTING.value)
        db.set(answers.Q_REDIS_LOCATION, redis.describe())
    else:
        db.set(answers.Q_REDIS, redis.mode.value)


def not_configured(root: Path, message: str, out: TextIO) -> None:
    """The one way an install or reconfigure ends on a host it cannot configure: exit 0,
    nothing changed, every blocker and its fix said, and the reason kept for ``status``."""
    applied.refuse(root, message)
    say(f"workers are NOT configured: {message}", out)
    say("nothing was changed; the package is installed. Once this is solved, run: "
        f"dpkg-reconfigure {PACKAGE}", out)


def worker_host_steps(settings: Settings) -> list[str]:
    """What the admin does next for each worker host the main host names."""
    return [f"worker host {host.label} ({host.address}): copy /etc/matrix-synapse/cluster/, "
            "homeserver.yaml (its database host reachable from there), the signing key and "
            f"the log config to it, then install {PACKAGE} on it with host-role worker-host "
            f"and host-name {host.label}" for host in settings.topology.worker_hosts]


# --- the actions ---------------------------------------------------------------


def web_server_now(root: Path, settings: Settings, reconfiguring: bool) -> WebServer:
    """The server in front, decided once for the dry run and the apply: the answer, or for
    ``auto`` the one last applied (kept across upgrades while it is installed), detected
    anew when the admin reconfigures (as the preset ``auto`` is sized anew)."""
    from ..system import webservers
    return webservers.resolve(root, settings.web_server, again=reconfiguring)


def nginx_left_to_do(root: Path) -> list[str]:
    """What is left in the configuration of the server just applied (nginx's, or
    another's include): nothing about nginx when another server is in front."""
    from ..system import webservers
    from ..system.nginx import left_to_do
    server = webservers.deployed(root)
    if server is None or server is WebServer.NGINX:
        return left_to_do(root)
    return webservers.left_to_do(root, server)


def _engine() -> tuple[Callable[..., Any], Callable[..., Any], Callable[[str], bool]]:
    from ..apply import apply_host, restart_after_upgrade
    from ..system.accounts import user_exists
    return apply_host, restart_after_upgrade, user_exists


def configure(db: Debconf, root: Path = Path("/"), out: TextIO | None = None, *,
              engine: Callable[[], tuple[Callable[..., Any], Callable[..., Any], Callable[[str], bool]]]
              = _engine, synapse_version: Callable[[], str] = synapse_package_version,
              left_to_do: Callable[[Path], list[str]] = nginx_left_to_do) -> int | None:
    """``postinst configure`` after debconf is started; debconf is stopped on return.

    ``engine`` gives (apply_host, restart_after_upgrade, user_exists): the
    system's, or a test's.  The output ends with what the admin has left to do
    (``left_to_do``: the nginx include while no server block has it); nothing
    when nothing is left.
    """
    out = out or sys.stderr
    apply_host, restart_after_upgrade, user_exists = engine()
    try:
        selection, settings = valid_answers(db, root, user_exists)
    except answers.InvalidAnswer as exc:
        stop_debconf(db)
        say(f"Error: {exc}", out)
        say(f"nothing was changed. Correct the answer (debconf-set-selections, question {exc.question}) "
            f"and run: dpkg-reconfigure {PACKAGE}, or dpkg --configure {PACKAGE}", out)
        return 1

    preset = db.get(answers.Q_PRESET)
    reconfiguring = os.environ.get("DEBCONF_RECONFIGURE") == "1"
    kept = answers.decided_auto(preset, applied.read(root), applied.pending(root),
                                reconfiguring=reconfiguring)
    if kept is not None and selection is not None:
        selection = kept
    auto = (answers.normalized_counts(selection.counts)
            if selection is not None and preset.strip().lower() == AUTO else None)

    if settings.topology.role is not HostRole.WORKER_HOST:
        server = web_server_now(root, settings, reconfiguring)
        settings = replace(settings, web_server=server, web_user=web_user_for(server, settings.web_user))
    adopt = db.get(answers.Q_HAND_MADE) != "leave"
    # Everything the apply engine checks before its first change, while the
    # admin can still be shown the result.
    try:
        planned = apply_host(root, selection, settings, dry_run=True, out=io.StringIO(),
                             adopt=adopt)
    except HostConfigError as exc:
        show(db, NOT_CONFIGURED, "high", str(exc))
        stop_debconf(db)
        not_configured(root, str(exc), out)
        return None
    except WorkersError as exc:
        stop_debconf(db)
        say(f"Error: {exc}", out)
        return 1
    # The answers this run applies, kept until the record is written: a run killed
    # in between leaves them for debian/config, and its half-written files are
    # not read back as an admin's edit.
    if getattr(planned, "adoption", None) is not None:
        record_adoption(db, planned.adoption, planned.settings)
    given = {q: db.get(q) for q in answers.QUESTIONS}
    if auto is not None:  # what auto was decided as: a recovery keeps it
        given[answers.AUTO_KEY] = auto
    stop_debconf(db)

    before = applied.read(root)
    # Only when files change (a rerun that changes nothing writes nothing, not even this).
    if planned.changes.files_changed:
        applied.begin(root, given)
    try:
        report = apply_host(root, selection, settings, out=out, facts=planned.facts,  # read once
                            adopt=adopt)
    except HostConfigError as exc:
        applied.abandon(root)  # the engine stopped on its own: the answers stay debconf's
        not_configured(root, str(exc), out)
        return None
    except WorkersError as exc:
        applied.abandon(root)
        say(f"Error: {exc}", out)
        return 1
    synapse_now = synapse_version()
    # Synapse upgraded in the same dpkg run: its trigger was folded into this
    # configure, so do what the trigger would have done (before the record that
    # says it was done).
    if before is not None and before.synapse and before.synapse != synapse_now:
        restart_after_upgrade(root, out=out)
    server = (getattr(report, "settings", None) or settings).web_server
    applied.finish(root, replace(answers.applied_record(root), synapse=synapse_now,
                                 web_user=settings.web_user, auto=auto,
                                 web_server=server.value if server is not None else None,
                                 debconf_web_server=server.value if server is not None else None))
    say(summary(report.plan, getattr(report, "settings", None) or settings, report.redis_server)
        + ("" if report.changed else "; nothing changed"), out)
    for notice in report.notices:  # a switch of server, a password copied for Synapse
        say(notice, out)
    for step in worker_host_steps(settings):
        say(step, out)
    if settings.topology.role is not HostRole.WORKER_HOST:  # nginx runs on the main host
        for step in left_to_do(root):
            say(f"left to do: {step}", out)
    return None


def triggered(root: Path = Path("/"), out: TextIO | None = None, *,
              restart: Callable[..., Any] | None = None,
              synapse_version: Callable[[], str] = synapse_package_version) -> int | None:
    """``postinst triggered``: a failed restart does not fail the package (as debhelper's)."""
    out = out or sys.stderr
    if restart is None:
        from ..apply import restart_after_upgrade as restart
    try:
        restart(root, out=out)
    except WorkersError as exc:
        say(f"warning: restarting Synapse and its workers after the Synapse upgrade failed: {exc}", out)
        say("run: systemctl restart matrix-synapse.target", out)
    else:
        record = applied.read(root)
        if record is not None:
            applied.write(root, replace(record, synapse=synapse_version()))
    return None


def postinst(argv: list[str], root: Path = Path("/")) -> int | None:
    """The postinst's one call: start debconf for configure, and act."""
    action = argv[1] if len(argv) > 1 else ""
    if action == "triggered":
        return triggered(root)
    if action == "configure":
        return configure(start_debconf(argv), root)
    return None
