"""The ``matrix-synapse-workers`` command.

Errors are one ``Error: ...`` line on stderr and exit code 1; nothing is written
when any input is bad, because every check runs before the first write.  Every
exit code comes from :mod:`.core.exitcodes`, the one table of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import __version__
from .core import paths
from .core.catalog import PRESETS, ROLES
from .core.errors import SelectionError, WorkersError
from .core.exitcodes import PLUGIN_CODES, Exit, epilog
from .core.words import plural
from .core.facts import HostFacts, require_postgres
from .system.hostfacts import read_host_facts
from .system import webservers
from .core.webserver import WebServer, parse_web_server, web_user_for
from .system.clusterfile import deployed_topology
from .core.plan import Plan
from .render.files import RenderedFile
from .core.memory import parse_budget
from .core.selection import AUTO, Selection, select
from .core.settings import Settings, parse_redis
from .deployment import deployed_selection, deployed_settings, read_deployment
from .system.machine import this_machine
from .core.topology import HOST_ROLES, HostRole, Topology, main_topology, worker_host_topology


@dataclass(frozen=True)
class Desired:
    """Everything decided for a host, before anything is written."""

    facts: HostFacts
    #: None on a worker host (its workers come from cluster.yaml).
    selection: Selection | None
    settings: Settings
    plan: Plan
    files: tuple[RenderedFile, ...]


def choose(facts: HostFacts, preset: str | None, workers: str | None) -> Selection:
    """What was asked for; with nothing asked, what is deployed, else the default preset."""
    if preset is None and workers is None:
        deployed = deployed_selection(facts)
        if deployed.counts:
            return deployed
        preset = AUTO
    return select(preset=preset, workers=workers, machine=this_machine() if preset else None)


def decide(root: Path, preset: str | None, workers: str | None, settings: Settings) -> Desired:
    """Read the host, validate the request, plan and render: all pure after the read."""
    facts = read_host_facts(root)
    require_postgres(facts)
    selection = None if settings.topology.role is HostRole.WORKER_HOST else choose(facts, preset, workers)
    deployment = read_deployment(root, selection, settings, facts=facts)
    return Desired(facts, selection, settings, deployment.plan, deployment.files())


#: The version of the ``plan --json`` document: adding a key keeps it; renaming or
#: removing a key, or changing a value's meaning, raises it.
PLAN_SCHEMA_VERSION = 1


def plan_as_json(desired: Desired) -> dict[str, object]:
    return {
        "schema_version": PLAN_SCHEMA_VERSION,
        "workers": [
            {"name": w.name, "type": w.role.name, "unit": w.unit,
             "host": w.host or "main", "http_upstream": w.http_upstream,
             "http_socket": None if w.remote else str(w.http_socket),
             "replication_socket": str(w.replication_socket) if w.replication_socket else None,
             "resources": list(w.role.http_resources)}
            for w in desired.plan.workers
        ],
        "counts": desired.plan.counts(),
        "shared": desired.plan.shared_settings(),
        "redis": desired.settings.redis.describe(),
        "socket_group": desired.settings.socket_group,
        "files": [str(f.path) for f in desired.files],
    }


def plan_as_table(desired: Desired) -> str:
    rows = [("WORKER", "HOST", "TYPE", "SERVES", "LISTENS ON")]
    for w in desired.plan.workers:
        rows.append((w.name, w.host or "main", w.role.name, ",".join(w.role.http_resources),
                     w.http_upstream))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.append("")
    lines.append(f"{plural(len(desired.plan.workers), 'worker')}; Redis: {desired.settings.redis.describe()}; "
                 f"socket group: {desired.settings.socket_group}")
    return "\n".join(lines)


def _add_choice_arguments(parser: argparse.ArgumentParser, *, render: bool = False) -> None:
    if render:
        parser.add_argument("--root", type=Path, metavar="DIR",
                            help="directory to write under, holding etc/matrix-synapse; required, "
                                 "and never / (apply configures this host)")
    else:
        parser.add_argument("--root", type=Path, default=Path("/"),
                            help="root directory holding etc/matrix-synapse (default: /)")
    parser.add_argument("--preset", help=f"one of: {AUTO} (sized from this machine's cores and "
                                         f"memory; the default), {', '.join(PRESETS)}")
    parser.add_argument("--workers", metavar="SPEC",
                        help="worker types and counts, e.g. 'sync:4,federation_sender:2,background'")
    parser.add_argument("--socket-group",
                        help="group owning the socket directory. Default: as deployed "
                             f"({paths.DEFAULT_SOCKET_GROUP} on a new host)")
    parser.add_argument("--web-user",
                        help="web server user put in the socket group ('' for none). Default: "
                             f"as last applied ({paths.DEFAULT_WEB_USER} on a new host)")
    parser.add_argument("--web-server", choices=[s.value for s in WebServer] + ["apache2"],
                        help="the server in front, whose routing files are written and reloaded "
                             "(none: your own proxy; no other server's files are written or "
                             "reloaded). Default: as last applied while it is installed, else the "
                             "one installed (of several, the one on port 80 or 443, else nginx)")
    parser.add_argument("--redis",
                        help="dedicated, guide, unix:/PATH or HOST:PORT. Default: as deployed "
                             "(dedicated on a new host)")
    parser.add_argument("--host-role", choices=HOST_ROLES,
                        help="main (main process, Redis and local workers) or worker-host (only "
                             "workers; main elsewhere). Default: what this host is now")
    parser.add_argument("--host-name", metavar="LABEL",
                        help="on a worker host: its name in the main host's cluster.yaml")
    parser.add_argument("--worker-hosts", metavar="SPEC",
                        help="on the main host: 'LABEL ADDRESS WORKERS; ...', e.g. "
                             "'hostb 10.0.0.2 sync:2,events'; '' for none. Default: as deployed")
    parser.add_argument("--replication-address", metavar="ADDRESS[:PORT]", default="",
                        help="main's private address for the worker hosts (port 9093 by default)")
    parser.add_argument("--allow-public-address", action="store_true",
                        help="accept a public or wildcard replication address")
    parser.add_argument("--shared-media-store", action="store_true",
                        help="confirm every host mounts one media store at media_store_path "
                             "(needed for media workers on worker hosts)")
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=None,
                        help="every process serves Prometheus metrics on loopback (a worker "
                             "host's on its private address), with scrape targets in "
                             f"/{paths.PROMETHEUS_TARGETS}. Default: as deployed")
    parser.add_argument("--memory-budget", metavar="MIB",
                        help="MiB all Synapse processes of this host may hold, split over them "
                             "for their caches; auto: half the RAM less PostgreSQL's "
                             "shared_buffers and Redis's maxmemory here. Default: as deployed "
                             "(auto on a new host)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matrix-synapse-workers",
        description="Plan and render a Synapse worker deployment for a Debian host.",
        epilog="Worker types: " + ", ".join(ROLES) + ". Presets: " + ", ".join(
            [f"{AUTO} (sized from this machine's cores and memory; the default)"]
            + [f"{p.name} ({p.summary})" for p in PRESETS.values()]) + ". " + epilog())
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan_parser = commands.add_parser("plan", help="print the workers that would be configured")
    _add_choice_arguments(plan_parser)
    plan_parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    render_parser = commands.add_parser(
        "render", help="write every configuration file under --root DIR (not /), for review: "
                       "no check by Synapse, no restart")
    _add_choice_arguments(render_parser, render=True)
    render_parser.add_argument("--chown", action="store_true",
                               help="also set owners and groups (needs root and the users)")
    apply_parser = commands.add_parser(
        "apply", help="configure this host: accounts, Redis, files, and restart only what changed")
    _add_choice_arguments(apply_parser)
    apply_parser.add_argument("--dry-run", action="store_true",
                              help=f"print what would change; exit {Exit.PENDING.value} if anything "
                                   "would, 0 if nothing")
    apply_parser.add_argument(
        "--adopt", action=argparse.BooleanOptionalAction, default=True,
        help="take over a worker setup made by hand (worker files not written by this package, "
             "the guide's units in /etc/systemd/system): as many workers of each type as it "
             "served, its Redis and socket group kept, its files moved to "
             f"/{paths.SYNAPSE_ETC}/workers.hand-made/ (default); --no-adopt refuses while "
             "one is there")
    status_parser = commands.add_parser(
        "status", help=f"check every process, socket, Redis, nginx's routing and the config; exit "
                       f"{Exit.OK.value} healthy, {Exit.DEGRADED.value} degraded, "
                       f"{Exit.BROKEN.value} broken")
    formats = status_parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true",
                         help="print JSON (a stable schema, see schema_version) for scripts")
    formats.add_argument("--check", action="store_true",
                         help="print one line for a monitoring plugin (Nagios, Icinga), with the "
                              "plugins' exit codes: " + ", ".join(
                                  f"{code} {state}" for state, code in PLUGIN_CODES.items()))
    formats.add_argument("--prometheus", nargs="?", const="-", metavar="FILE",
                         help="write gauges for node_exporter's textfile collector to FILE "
                              "(atomically; a directory gets matrix-synapse-workers.prom), or to "
                              "stdout without FILE; exit 0 once written")
    deconfigure = commands.add_parser(
        "deconfigure", help="stop the workers and return Synapse to a single process, as "
                            "removing the package does; prints each step")
    deconfigure.add_argument("--dry-run", action="store_true",
                             help="print what it would do and change nothing")
    # The prerm's: the worker files stay until purge (the generator goes with the package).
    deconfigure.add_argument("--package-removal", action="store_true", help=argparse.SUPPRESS)
    restart = commands.add_parser(
        "restart-after-upgrade", help="restart what still runs the old Synapse, main first, then "
                                      "the workers, each back before the next; then refresh the "
                                      "routes for the new version (the package's trigger does this "
                                      "after a Synapse upgrade)")
    for sub in (deconfigure, restart):
        sub.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    return parser


def _topology(args: argparse.Namespace) -> Topology:
    """The topology asked for; what is left unsaid stays as deployed."""
    role = args.host_role
    if role is None and args.host_name:
        role = HostRole.WORKER_HOST.value
    elif role is None and args.worker_hosts is not None:
        role = HostRole.MAIN.value
    if role is None:
        return deployed_topology(args.root)
    if role == HostRole.WORKER_HOST.value:
        if not args.host_name:
            raise SelectionError("a worker host needs --host-name, its name in the main host's "
                                 "cluster.yaml")
        return worker_host_topology(args.host_name)
    if args.worker_hosts is None:
        current = deployed_topology(args.root)
        return current if current.role is HostRole.MAIN else Topology()
    return main_topology(args.worker_hosts, args.replication_address, args.allow_public_address,
                         args.shared_media_store)


def _settings(args: argparse.Namespace) -> Settings:
    """What is asked for; every choice not named stays as deployed (changes only what it is told)."""
    deployed = deployed_settings(args.root)
    metrics = args.metrics if args.metrics is not None else deployed.metrics
    server = webservers.resolve(args.root, parse_web_server(args.web_server) if args.web_server
                                else deployed.web_server)
    return Settings(
        socket_group=args.socket_group if args.socket_group is not None else deployed.socket_group,
        web_user=(args.web_user if args.web_user is not None
                  else web_user_for(server, deployed.web_user)),
        redis=parse_redis(args.redis) if args.redis is not None else deployed.redis,
        topology=_topology(args), metrics=metrics, web_server=server,
        memory_budget=(parse_budget(args.memory_budget) if args.memory_budget is not None
                       else deployed.memory_budget))


def _render_root(root: Path | None) -> Path:
    """render writes only for review: never into the running system."""
    if root is None:
        raise SelectionError("render needs --root DIR, the directory to write the files under "
                             "(to configure this host, run: matrix-synapse-workers apply)")
    if root.resolve() == Path("/"):
        raise SelectionError(f"render does not write into / (--root {str(root)!r}): it skips "
                             "Synapse's check and the restarts; to configure this host, run: "
                             "matrix-synapse-workers apply")
    return root


def _record_web(root: Path, web_user: str, web_server: WebServer | None) -> None:
    """The web user and server applied, kept for the next run's default (no file shows
    the user, nor the server 'none')."""
    from dataclasses import replace
    from .system import applied
    record = applied.read(root)
    if record is None:
        return
    server = web_server.value if web_server is not None else record.web_server
    if (record.web_user, record.web_server) != (web_user, server):
        applied.write(root, replace(record, web_user=web_user, web_server=server))


def run_apply(args: argparse.Namespace) -> int:
    from . import apply  # the edge: imported only by commands that change the system
    if args.command == "deconfigure":
        from .deconfigure import deconfigure_host
        deconfigure_host(args.root, sys.stdout, dry_run=args.dry_run,
                         package_removal=args.package_removal)
        return Exit.OK
    if args.command == "restart-after-upgrade":
        apply.restart_after_upgrade(args.root)
        return Exit.OK
    facts = read_host_facts(args.root)
    require_postgres(facts)
    settings = _settings(args)
    selection = (None if settings.topology.role is HostRole.WORKER_HOST
                 else choose(facts, args.preset, args.workers))
    report = apply.apply_host(args.root, selection, settings,
                              dry_run=args.dry_run, out=sys.stdout, facts=facts, adopt=args.adopt)
    if args.dry_run:
        return Exit.PENDING if not report.changes.nothing else Exit.OK
    _record_web(args.root, settings.web_user,
                None if settings.topology.role is HostRole.WORKER_HOST
                else (report.settings or settings).web_server)
    for line in report.system_steps + report.services:
        print(line)
    print(apply.describe(report.changes) if report.changed else "nothing to change")
    return Exit.OK


def run_status(args: argparse.Namespace) -> int:
    import time
    from . import status
    from .status import probe as statusprobe  # probing is only for this command
    started = time.monotonic()
    try:
        facts = statusprobe.gather()
        rows = status.evaluate(facts)
    except Exception as exc:  # a plugin must say UNKNOWN, not die with a traceback
        if not args.check:
            raise
        print(status.unknown_check_line(f"status could not look: {exc}"))
        return status.report.PLUGIN_UNKNOWN
    seconds = time.monotonic() - started
    if args.json:
        memory = facts.memory.as_json() if isinstance(facts.memory, status.MemoryFacts) else None
        print(json.dumps(status.as_json(rows, seconds, memory), indent=2))
    elif args.check:
        print(status.as_check_line(rows, seconds))
    elif args.prometheus is not None:
        text = status.as_prometheus(rows, seconds)
        if args.prometheus == "-":
            sys.stdout.write(text)
            return Exit.OK
        from .system.files import replace_file
        target = Path(args.prometheus)
        if target.is_dir():
            target = target / status.report.TEXTFILE_NAME
        try:
            replace_file(target, text)
        except OSError as exc:
            raise WorkersError(f"cannot write the textfile {str(target)!r}: {exc.strerror or exc}; "
                               f"give a file in a directory that exists and root can write, e.g. "
                               f"{status.report.TEXTFILE_DIRECTORY}") from exc
        return Exit.OK
    else:
        print(status.as_table(rows, seconds, colour=sys.stdout.isatty()))
    # A monitoring plugin speaks its own protocol's codes; every other form the table's.
    return status.severity(rows) if args.check else status.exit_code(rows)


def run(args: argparse.Namespace) -> int:
    if args.command == "status":
        return run_status(args)
    if args.command in ("apply", "deconfigure", "restart-after-upgrade"):
        return run_apply(args)
    if args.command == "render":
        _render_root(args.root)
    desired = decide(args.root, args.preset, args.workers, _settings(args))
    if args.command == "plan":
        if args.json:
            print(json.dumps(plan_as_json(desired), indent=2))
        else:
            print(plan_as_table(desired))
        return Exit.OK
    from .system.files import write_atomically  # the edge, only when writing
    for rendered in desired.files:
        write_atomically(args.root, rendered, chown=args.chown)
    print(f"wrote {plural(len(desired.files), 'file')} under {args.root}")
    return Exit.OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # A monitoring plugin's bad arguments are UNKNOWN, not CRITICAL (argparse's 2).
        if exc.code == Exit.USAGE and "status" in argv and "--check" in argv:
            return PLUGIN_CODES["UNKNOWN"]
        raise
    try:
        return int(run(args))
    except WorkersError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return Exit.ERROR


if __name__ == "__main__":
    sys.exit(main())
