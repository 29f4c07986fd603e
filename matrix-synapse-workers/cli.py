"""The ``matrix-synapse-workers`` command.

Errors are one ``Error: ...`` line on stderr and exit code 1; nothing is written
when any input is bad, because every check runs before the first write.
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
from .core.facts import HostFacts, require_postgres
from .system.hostfacts import metrics_deployed, read_host_facts
from .system.clusterfile import deployed_topology
from .core.plan import Plan
from .render.files import RenderedFile
from .core.selection import AUTO, Selection, select
from .core.settings import Settings, parse_redis
from .deployment import deployed_selection, read_deployment
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


def plan_as_json(desired: Desired) -> dict[str, object]:
    return {
        "workers": [
            {"name": w.name, "role": w.role.name, "unit": w.unit,
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
    rows = [("WORKER", "HOST", "ROLE", "SERVES", "LISTENS ON")]
    for w in desired.plan.workers:
        rows.append((w.name, w.host or "main", w.role.name, ",".join(w.role.http_resources),
                     w.http_upstream))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.append("")
    lines.append(f"{len(desired.plan.workers)} workers; Redis: {desired.settings.redis.describe()}; "
                 f"socket group: {desired.settings.socket_group}")
    return "\n".join(lines)


def _add_choice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="root directory holding etc/matrix-synapse (default: /)")
    parser.add_argument("--preset", help=f"one of: {AUTO} (sized from this machine's cores and "
                                         f"memory; the default), {', '.join(PRESETS)}")
    parser.add_argument("--workers", metavar="SPEC",
                        help="worker types and counts, e.g. 'sync:4,federation_sender:2,background'")
    parser.add_argument("--socket-group", default=paths.DEFAULT_SOCKET_GROUP,
                        help="group owning the socket directory (default: %(default)s)")
    parser.add_argument("--web-user", default=paths.DEFAULT_WEB_USER,
                        help="web server user put in the socket group (default: %(default)s)")
    parser.add_argument("--redis", default="dedicated",
                        help="dedicated (default), guide, unix:/PATH or HOST:PORT")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matrix-synapse-workers",
        description="Plan and render a Synapse worker deployment for a Debian host.",
        epilog="Worker types: " + ", ".join(ROLES) + ". Presets: " + ", ".join(
            [f"{AUTO} (sized from this machine's cores and memory; the default)"]
            + [f"{p.name} ({p.summary})" for p in PRESETS.values()]) + ".")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan_parser = commands.add_parser("plan", help="print the workers that would be configured")
    _add_choice_arguments(plan_parser)
    plan_parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    render_parser = commands.add_parser("render", help="write every configuration file under --root")
    _add_choice_arguments(render_parser)
    render_parser.add_argument("--chown", action="store_true",
                               help="also set owners and groups (needs root and the users)")
    apply_parser = commands.add_parser(
        "apply", help="configure this host: accounts, Redis, files, and restart only what changed")
    _add_choice_arguments(apply_parser)
    apply_parser.add_argument("--dry-run", action="store_true",
                              help="print what would change; exit 2 if anything would")
    apply_parser.add_argument(
        "--adopt", action=argparse.BooleanOptionalAction, default=True,
        help="take over a worker setup made by hand (worker files not written by this package, "
             "the guide's units in /etc/systemd/system): as many workers of each type as it "
             "served, its Redis and socket group kept, its files moved to "
             f"/{paths.SYNAPSE_ETC}/workers.hand-made/ (default); --no-adopt refuses while "
             "one is there")
    status_parser = commands.add_parser(
        "status", help="check every process, socket, Redis and the config; exit 0 healthy, "
                       "1 degraded, 2 broken")
    formats = status_parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true",
                         help="print JSON (a stable schema, see schema_version) for scripts")
    formats.add_argument("--check", action="store_true",
                         help="print one line for a monitoring plugin (Nagios, Icinga): exit 0 OK, "
                              "1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    formats.add_argument("--prometheus", nargs="?", const="-", metavar="FILE",
                         help="write gauges for node_exporter's textfile collector to FILE "
                              "(atomically; a directory gets matrix-synapse-workers.prom), or to "
                              "stdout without FILE; exit 0 once written")
    for name, text in (("deconfigure", "stop the workers and return Synapse to a single process"),
                       ("restart-after-upgrade", "restart main, then every worker (after a Synapse upgrade)")):
        sub = commands.add_parser(name, help=text)
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
    metrics = args.metrics if args.metrics is not None else metrics_deployed(args.root)
    return Settings(socket_group=args.socket_group, web_user=args.web_user,
                    redis=parse_redis(args.redis), topology=_topology(args), metrics=metrics)


def run_apply(args: argparse.Namespace) -> int:
    from . import apply  # the edge: imported only by commands that change the system
    if args.command == "deconfigure":
        apply.deconfigure_host(args.root)
        return 0
    if args.command == "restart-after-upgrade":
        apply.restart_after_upgrade(args.root)
        return 0
    facts = read_host_facts(args.root)
    require_postgres(facts)
    settings = _settings(args)
    selection = (None if settings.topology.role is HostRole.WORKER_HOST
                 else choose(facts, args.preset, args.workers))
    report = apply.apply_host(args.root, selection, settings,
                              dry_run=args.dry_run, out=sys.stdout, facts=facts, adopt=args.adopt)
    if args.dry_run:
        return 2 if not report.changes.nothing else 0
    for line in report.system_steps + report.services:
        print(line)
    print(apply.describe(report.changes) if report.changed else "nothing to change")
    return 0


def run_status(args: argparse.Namespace) -> int:
    import time
    from . import status
    from .status import probe as statusprobe  # probing is only for this command
    started = time.monotonic()
    try:
        rows = status.evaluate(statusprobe.gather())
    except Exception as exc:  # a plugin must say UNKNOWN, not die with a traceback
        if not args.check:
            raise
        print(status.unknown_check_line(f"status could not look: {exc}"))
        return status.report.PLUGIN_UNKNOWN
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps(status.as_json(rows, seconds), indent=2))
    elif args.check:
        print(status.as_check_line(rows, seconds))
    elif args.prometheus is not None:
        text = status.as_prometheus(rows, seconds)
        if args.prometheus == "-":
            sys.stdout.write(text)
            return 0
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
        return 0
    else:
        print(status.as_table(rows, seconds, colour=sys.stdout.isatty()))
    return status.exit_code(rows)


def run(args: argparse.Namespace) -> int:
    if args.command == "status":
        return run_status(args)
    if args.command in ("apply", "deconfigure", "restart-after-upgrade"):
        return run_apply(args)
    desired = decide(args.root, args.preset, args.workers, _settings(args))
    if args.command == "plan":
        if args.json:
            print(json.dumps(plan_as_json(desired), indent=2))
        else:
            print(plan_as_table(desired))
        return 0
    from .system.files import write_atomically  # the edge, only when writing
    for rendered in desired.files:
        write_atomically(args.root, rendered, chown=args.chown)
    print(f"wrote {len(desired.files)} files under {args.root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # A monitoring plugin's bad arguments are UNKNOWN (3), not CRITICAL (argparse's 2).
        if exc.code == 2 and "status" in argv and "--check" in argv:
            return 3
        raise
    try:
        return run(args)
    except WorkersError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
