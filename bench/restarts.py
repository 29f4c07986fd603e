"""Restarts, reconfigures and a Synapse upgrade under an open-loop client load, and proof nothing is lost.

In one booted container (the benchmark's layers, our package with several
workers and an event persister, nginx in front): the generator sends at a
fixed rate with --trace, retrying a 429 after its retry_after_ms as Element
and matrix-nio do (never a 500 or 502), while this module makes, in turn
and with quiet time between them, each scenario of :data:`SCENARIOS` as an
admin would: `systemctl restart` of Synapse's Redis, of PostgreSQL and of
main; a dpkg-reconfigure that adds a client worker and one that removes it;
a Synapse upgrade (the stand-in matrix-synapse-py3 from the previous
release to this one: its postinst restarts main, our trigger the rest).
Then:

- per scenario, the requests that failed as the client saw them (after its
  retries) and at the proxy (its first answer), by class and status, the
  seconds until every class answered 200 again (bench/recovery.py) and until
  every process answered /health and held Redis again;
- every unit active, every process answering /health and subscribed to
  Redis again, with how often systemd itself restarted each worker;
- every send answered 200 found in the /sync of every member of its room
  (loadgen.py verify).

scripts/bench --restarts runs it at a share of the measured capacity, twice in
one container: "before" with nginx's error handling from before issue 25
(:func:`legacy_nginx`), then "after" with the package's own files;
tests/booted/test_booted_restarts.py runs it with a light load and asserts
the goals.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import recovery, runner, stage
from bench.stage import BENCH_DIR, Container

#: Every scenario, in the order they are made: name -> what is shown for it.  postgresql.service
#: restarts every cluster (each postgresql@VERSION-NAME.service is PartOf it), as `systemctl
#: restart postgresql` does.
SCENARIOS: dict[str, str] = {
    "Redis": "redis-server@matrix-synapse.service",
    "PostgreSQL": "postgresql.service",
    "main": "matrix-synapse.service",
    "reconfigure +client": "dpkg-reconfigure: a second client worker",
    "reconfigure -client": "dpkg-reconfigure: back to one client worker",
    "upgrade": "matrix-synapse-py3 upgraded (stand-in, previous release to this one)",
}
#: The scenarios that are a `systemctl restart` of their unit.
RESTARTED = ("Redis", "PostgreSQL", "main")
#: What the booted test makes (the upgrade needs a second stand-in install: the benchmark's).
TESTED = ("Redis", "PostgreSQL", "main", "reconfigure +client", "reconfigure -client")
#: Kept for callers of the first version: the restarts alone.
RESTARTS: tuple[tuple[str, str], ...] = tuple((n, SCENARIOS[n]) for n in RESTARTED)

#: The workers: two sync workers (each user's /sync sticks to one, so events reach both only
#: through replication), a client reader taking the sends, and an event persister (the sends'
#: events are written by it and announced over Redis): what a Redis restart can break.
TYPES = "sync, client, events"
COUNTS = "sync:2"
#: The reconfigure scenarios add, then remove, a stateless worker (a second client reader).
COUNTS_MORE = "sync:2,client:2"
#: The stand-in release the upgrade scenario starts from (one before the booted tests' own).
UPGRADE_FROM = "1.163.1"

LOG_DIR = "/var/log/matrix-synapse"
TRACE_JSON = "/var/tmp/msw-restarts-load.json"
VERIFY_JSON = "/var/tmp/msw-restarts-verify.json"


@dataclass(frozen=True)
class Plan:
    rate: float
    #: Load before the first scenario (the baseline), then this long after each, and this
    #: much more after the last.
    lead_s: float = 20.0
    quiet_s: float = 45.0
    tail_s: float = 15.0
    mix: str = "sync:60,send:20,messages:10,profile:10"
    #: After the load: how long every process may take to answer /health and hold Redis again.
    settle_s: float = 120.0
    #: How long verify keeps looking for a send's event in a member's /sync.
    verify_s: float = 60.0
    #: Names from SCENARIOS, in order.
    scenarios: tuple[str, ...] = RESTARTED
    #: The client's bound on its whole wait while retrying 429s (0: it never retries).
    client_retry_s: float = 30.0

    @property
    def duration_s(self) -> float:
        return self.lead_s + self.quiet_s * len(self.scenarios) + self.tail_s


@dataclass
class Steps:
    """What the scenarios need beyond the container: the stand-in .debs for the upgrade,
    and whether nginx runs the error handling from before (put back after each package step)."""

    upgrade_from: Path | None = None
    upgrade_to: Path | None = None
    before: bool = False
    log: Callable[[str], None] = field(default=lambda _: None)


def prepare(c: Container, deb: Path) -> list[str]:
    """Our package with the restart test's workers, nginx in front, the generator copied in."""
    return stage.prepare(c, deb, "custom", types=TYPES, counts=COUNTS)


def units(c: Container, workers: list[str]) -> list[str]:
    pg = c.run("systemctl list-units --plain --no-legend --all 'postgresql@*.service'",
               check=False).stdout.split()
    return ["matrix-synapse.service", *(f"matrix-synapse-worker@{w}.service" for w in workers),
            "redis-server@matrix-synapse.service", *[u for u in pg if u.endswith(".service")],
            "nginx.service"]


def unit_states(c: Container, names: list[str]) -> dict[str, dict[str, str]]:
    """ActiveState, SubState, MainPID and NRestarts (systemd's own restarts) of each unit."""
    out: dict[str, dict[str, str]] = {}
    for u in names:
        r = c.run(["systemctl", "show", "-p", "ActiveState,SubState,MainPID,NRestarts", u],
                  check=False, timeout=30)
        out[u] = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return out


def _package_files() -> tuple[str, str, str]:
    from matrix_synapse_workers.core import paths  # noqa: PLC0415 (the tree's, on the host)
    return ("/" + str(paths.NGINX_HTTP_CONF), "/" + str(paths.NGINX_SNIPPET),
            "/" + str(paths.NGINX_ADMIN_SNIPPET))


def legacy_nginx(c: Container) -> None:
    """Put nginx's error handling from before issue 25 in place of the package's files.

    The tree's renderer renders the container's plan twice: as the package does (which
    must equal the files on disk, so the plan and version were read right) and with
    ``client_retries=False``; the second goes to disk and nginx reloads.
    """
    from matrix_synapse_workers.core.plan import Plan as WorkerPlan, plan_workers  # noqa: PLC0415
    from matrix_synapse_workers.core.selection import select  # noqa: PLC0415
    from matrix_synapse_workers.render.files import nginx_admin_file, nginx_files  # noqa: PLC0415
    names = stage.workers_on_disk(c)
    counts: dict[str, int] = {}
    for n in names:
        role = n.rpartition("-")[0].replace("-", "_")
        counts[role] = counts.get(role, 0) + 1
    plan = WorkerPlan(plan_workers(select(workers=",".join(f"{r}:{k}" for r, k in counts.items()))))
    http_path, snippet_path, admin_path = _package_files()
    on_disk = [c.read_file(x) for x in (http_path, snippet_path, admin_path)]
    found = re.search(r"chosen for Synapse (\d+)\.(\d+)\.(\d+)", on_disk[0])
    version = tuple(int(x) for x in found.groups()) if found else None
    now = [*nginx_files(plan, version), nginx_admin_file(plan, version)]  # type: ignore[arg-type]
    if [f.content for f in now] != on_disk:
        raise RuntimeError(f"the tree renders other nginx files than the package wrote for workers "
                           f"{names} and Synapse {version}: cannot render the old ones faithfully")
    old = [*nginx_files(plan, version, client_retries=False),  # type: ignore[arg-type]
           nginx_admin_file(plan, version, client_retries=False)]  # type: ignore[arg-type]
    for path, f in zip((http_path, snippet_path, admin_path), old):
        c.write_file(path, f.content)
    c.run(["nginx", "-t", "-q"])
    c.run(["systemctl", "reload", "nginx.service"])


def _reconfigure(c: Container, counts: str) -> None:
    c.run(["debconf-set-selections"], input=stage.preseed("custom", TYPES, counts))
    c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)


def act(c: Container, name: str, steps: Steps) -> None:
    """Make one scenario as an admin (or apt) would; returns when the command does."""
    if name in RESTARTED:
        c.run(["systemctl", "restart", SCENARIOS[name]], timeout=300)
    elif name == "reconfigure +client":
        _reconfigure(c, COUNTS_MORE)
    elif name == "reconfigure -client":
        _reconfigure(c, COUNTS)
    elif name == "upgrade":
        if steps.upgrade_to is None:
            raise ValueError("the upgrade scenario needs the stand-in .debs (Steps.upgrade_to)")
        # dpkg -i runs the stand-in's postinst (restarts main, as Matrix.org's package does)
        # and then our trigger on /opt/venvs/matrix-synapse.
        c.install_debs([steps.upgrade_to])
    else:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if steps.before and name not in RESTARTED:
        legacy_nginx(c)  # the package step rendered its current files


def serving_after(c: Container, t0: float, timeout: float) -> float | None:
    """Seconds from t0 until every process answers /health and holds Redis (None: not within
    timeout)."""
    try:
        stage.wait_healthy(c, stage.workers_on_disk(c), timeout=timeout)
    except BaseException:  # SystemExit or HttpError: not serving within the bound
        return None
    return time.monotonic() - t0


def load_under_restarts(c: Container, plan: Plan, setup_json: str, log: Callable[[str], None],
                        steps: Steps | None = None,
                        ) -> tuple[dict[str, Any], list[recovery.Restart], list[dict[str, Any]],
                                   list[float | None]]:
    """Run the traced open loop and make the scenarios during it.

    Returns the generator's result, the scenarios on the load's clock
    (CLOCK_MONOTONIC is the host's and the container's alike), the
    units' states around each, and the seconds until every process served again.
    """
    steps = steps or Steps(log=log)
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def loader() -> None:
        try:
            c.run(["python3", f"{BENCH_DIR}/loadgen.py", "run", "--setup", setup_json,
                   "--duration", str(plan.duration_s), "--rate", str(plan.rate), "--mix", plan.mix,
                   "--max-requests", "1000000", "--trace", "--client-retry-s", str(plan.client_retry_s),
                   "--out", TRACE_JSON],
                  timeout=plan.duration_s + 180)
            result.update(json.loads(c.read_file(TRACE_JSON)))
        except BaseException as e:  # reported after the restarts
            failure.append(e)

    launched = time.monotonic()
    t = threading.Thread(target=loader, name="restarts-load")
    t.start()
    made: list[tuple[str, str, float, float]] = []
    snapshots: list[dict[str, Any]] = []
    serving: list[float | None] = []
    try:
        time.sleep(plan.lead_s)
        for k, name in enumerate(plan.scenarios):
            watched = units(c, stage.workers_on_disk(c))
            before = unit_states(c, watched)
            t0 = time.monotonic()
            log(f"{name}: {SCENARIOS[name]}")
            act(c, name, steps)
            took = time.monotonic() - t0
            made.append((name, SCENARIOS[name], t0, took))
            serving.append(serving_after(c, t0, max(5.0, plan.quiet_s - took - 5.0)))
            log(f"{name}: returned after {took:.1f} s, every process serving after "
                f"{'-' if serving[-1] is None else f'{serving[-1]:.1f} s'}")
            last = k == len(plan.scenarios) - 1
            # The last snapshot is taken shortly before the load ends.
            time.sleep(max(0.0, t0 + plan.quiet_s + (plan.tail_s if last else 0.0) - 3.0
                           - time.monotonic()))
            snapshots.append({"restart": name, "before": before,
                              "after": unit_states(c, units(c, stage.workers_on_disk(c)))})
    finally:
        t.join()
    if failure:
        raise failure[0]
    started = result["started_monotonic"]
    if not 0 <= started - launched < 60:
        raise RuntimeError(f"the generator's clock does not match this one: it started at "
                           f"{started:.1f}, launched at {launched:.1f} (CLOCK_MONOTONIC differs?)")
    restarts = [recovery.Restart(n, u, t0 - started, took) for n, u, t0, took in made]
    return result, restarts, snapshots, serving


def settle(c: Container, workers: list[str], timeout: float) -> dict[str, Any]:
    """After the load: every process answers /health and holds its Redis connections again,
    without anything done to the workers.  Returns how it went (never raises for that)."""
    t0 = time.monotonic()
    try:
        stage.wait_healthy(c, workers, timeout=timeout)
        ok, detail = True, ""
    except BaseException as e:  # SystemExit or HttpError: report it
        ok, detail = False, str(e)[-500:]
    failed = c.run("systemctl --failed --plain --no-legend", check=False).stdout.strip()
    return {"healthy": ok, "detail": detail, "seconds": time.monotonic() - t0,
            "redis_clients": stage.redis_clients(c), "redis_clients_wanted": 2 * (len(workers) + 1),
            "failed_units": failed.splitlines()}


def log_sizes(c: Container) -> dict[str, int]:
    out = c.run(f"stat -c '%s %n' {LOG_DIR}/*.log", check=False).stdout
    return {path: int(size) for size, path in (line.split(" ", 1) for line in out.splitlines())}


def log_notes(c: Container, sizes: dict[str, int]) -> dict[str, list[list[Any]]]:
    """Each process's most frequent warnings and errors logged since `sizes` were taken."""
    time.sleep(6)  # the packaged log config buffers lines for up to 5 s
    notes = {}
    for path in sorted(log_sizes(c)):
        text = c.run(["tail", "-c", f"+{sizes.get(path, 0) + 1}", path], check=False).stdout
        found = recovery.log_summary(text)
        if found:
            notes[Path(path).stem] = found
    return notes


def verify(c: Container, setup_json: str, timeout: float) -> dict[str, Any]:
    c.run(["python3", f"{BENCH_DIR}/loadgen.py", "verify", "--setup", setup_json, "--sent", TRACE_JSON,
           "--timeout", str(timeout), "--out", VERIFY_JSON], timeout=timeout + 600)
    return json.loads(c.read_file(VERIFY_JSON))


def run(c: Container, workers: list[str], plan: Plan, setup_json: str,
        log: Callable[[str], None], steps: Steps | None = None) -> dict[str, Any]:
    """The load with the scenarios, then the checks; returns everything for the report."""
    sizes = log_sizes(c)
    result, restarts, snapshots, serving = load_under_restarts(c, plan, setup_json, log, steps)
    ws = recovery.windows(result["trace"], restarts, result["elapsed_s"])
    for w, s in zip(ws, serving):
        w.serving_s = s
        log(f"{w.restart.name}: {w.failed} of {w.requests} requests failed as the client saw them, "
            f"{w.proxy_failed} at the proxy; recovered after "
            f"{'never' if w.recovered_s is None else f'{w.recovered_s:.1f} s'}")
    workers = stage.workers_on_disk(c)
    settled = settle(c, workers, plan.settle_s)
    end = unit_states(c, units(c, workers))
    checked = verify(c, setup_json, plan.verify_s)
    log(f"verify: {checked['sends']} sends, {checked['checks']} (send, member) pairs, "
        f"{len(checked['missing'])} missing")
    notes = log_notes(c, sizes)
    return {"plan": asdict(plan), "workers": workers,
            "baseline": recovery.before(result["trace"], restarts),
            "windows": [w.to_json() for w in ws], "table": recovery.table(ws),
            "units": recovery.unit_changes(snapshots, end), "settled": settled, "verify": checked,
            "load": {k: result[k] for k in ("elapsed_s", "requests_ok", "errors", "requests_per_s",
                                            "open_loop")},
            "error_samples": result["error_samples"][:40], "log_notes": notes,
            # Every request ([class, due s, answered s, status]) and the restarts on the same clock,
            # for a closer look (restarts.json).
            "restarts": [asdict(r) for r in restarts], "trace": result["trace"]}


def markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    plan = report["plan"]
    v = report["verify"]
    lines = [f"# Restarts under load ({meta.get('date', '')})", "",
             f"{meta.get('nproc')} cores ({meta.get('cpu_model')}), {meta.get('ram_gib', 0):.0f} GiB, "
             f"git {meta.get('git')}, Synapse {meta.get('synapse')}; workers "
             f"{', '.join(report['workers'])}; open loop at {plan['rate']:.1f} requests/s"
             + (f" ({meta['share']:.0%} of {meta['capacity']:.1f} measured by a closed loop)"
                if meta.get("capacity") else "")
             + f", mix {plan['mix']}; {plan['lead_s']:.0f} s before the first restart, "
             f"{plan['quiet_s']:.0f} s after each ({plan['quiet_s'] + plan['tail_s']:.0f} s after "
             "the last)." + (f" Outside this run: {meta['outside']}." if meta.get("outside") else ""), "",
             f"The client retries a 429 after its retry_after_ms, as Element and matrix-nio do, while "
             f"its whole wait stays within {plan.get('client_retry_s', 0):.0f} s; it never retries a "
             "500 or 502.", ""]
    if report.get("side_by_side"):
        lines += ["Before: nginx's error handling from before issue 25 (the proxy's 502 or 504; "
                  "every pool falls back to main); after: the package's (a Matrix 429 while the "
                  "process a request went to restarts). Same container, same load, one after the "
                  "other. In the before pass the package's own steps (reconfigure, upgrade trigger) "
                  "render the current files, which the benchmark replaces with the old ones as soon "
                  "as the step returns.", "", report["side_by_side"], "", "## After", ""]
    lines += [f"Before the first scenario: {report['baseline']['failed']} of "
              f"{report['baseline']['requests']} requests failed.", "",
              report["table"], "",
              "Failed as the client saw them: after its own retries. Failed at the proxy: the first "
              "answer was not 200 (a 429 it then retried counts here). Recovered after: seconds from "
              "the scenario's command until every endpoint class had answered 200 to a request due "
              "after its last failure (after the command, for a class with none). Longest 200: the "
              "longest wait for an answer that came (held, not failed). Every process serving: "
              "/health of each and its Redis connections back, from the command.", ""]
    lines.append("| unit | active afterwards | process replaced during | restarted by systemd (crash) |")
    lines.append("|---|---|---|---:|")
    for u, s in report["units"].items():
        lines.append(f"| `{u}` | {'yes' if s['active'] else 'NO: ' + str(s['state'])} "
                     f"| {', '.join(s['pid_changed_with']) or '-'} | {s['systemd_restarts']} |")
    st = report["settled"]
    lines += ["", f"Afterwards, with no step taken on any worker: every process answering /health and "
              f"subscribed to Redis: {'yes' if st['healthy'] else 'NO'} ({st['redis_clients']} Redis "
              f"connections, {st['redis_clients_wanted']} wanted){'' if st['healthy'] else ': ' + st['detail']}.",
              "", f"Messages: {v['sends']} sends answered 200, checked in the /sync of each member of "
              f"their room ({v['checks']} checks, {v['members']} members): "
              f"{len(v['missing'])} missing" + (f", e.g. {v['missing'][:5]}" if v["missing"] else "") + "."]
    if report.get("log_notes"):
        lines += ["", "What the processes logged (WARNING and above, most frequent first; numbers as N):", ""]
        for proc, found in report["log_notes"].items():
            lines += [f"- {proc}: " + "; ".join(f"{n}× {level} {name}: {msg}" for n, level, name, msg in found)]
    if report.get("before"):
        b = report["before"]
        lines += ["", "## Before", "", b["table"], "",
                  f"Messages: {b['verify']['sends']} sends answered 200: "
                  f"{len(b['verify']['missing'])} missing."]
    return "\n".join(lines) + "\n"


def side_by_side(before: dict[str, Any], after: dict[str, Any]) -> str:
    """One row per scenario: before | after, for what the issue measures."""
    lines = ["| scenario | failed as the client saw them (before → after) | failed at the proxy "
             "| every class 200 again after s | every process serving after s | messages lost |",
             "|---|---:|---:|---:|---:|---:|"]

    def sec(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f}"
    b_by = {w["name"]: w for w in before["windows"]}
    for w in after["windows"]:
        o = b_by.get(w["name"], {})
        lines.append(f"| {w['name']} | {o.get('failed', '-')} → {w['failed']} "
                     f"| {o.get('proxy_failed', '-')} → {w['proxy_failed']} "
                     f"| {sec(o.get('recovered_s'))} → {sec(w['recovered_s'])} "
                     f"| {sec(o.get('serving_s'))} → {sec(w['serving_s'])} | - |")
    lines.append(f"| (all, verified in /sync) | | | | | {len(before['verify']['missing'])} → "
                 f"{len(after['verify']['missing'])} |")
    return "\n".join(lines)


def session(root: Path, deb: Path, load: runner.Load, share: float, capacity: float | None,
            plan_kw: dict[str, Any], log: Callable[[str], None],
            upgrade: tuple[Path, Path] | None = None) -> tuple[dict[str, Any], float | None]:
    """scripts/bench --restarts: boot, install, set up users, measure capacity (closed loop)
    unless given, then every scenario at `share` of it: first with nginx's error handling from
    before ("before"), then with the package's ("after").  ``upgrade``: the stand-in .debs of
    the previous and this Synapse release (without: no upgrade scenario)."""
    names = tuple(n for n in SCENARIOS if upgrade or n != "upgrade")
    with Container(root, name="bench-restarts") as c:
        stage.limit_cores(c, load.cores)
        workers = prepare(c, deb)
        if upgrade:
            log(f"restarts: Synapse back to the stand-in {UPGRADE_FROM}, to upgrade from")
            c.install_debs([upgrade[0]])
            stage.wait_healthy(c, workers)
        log(f"restarts: workers {', '.join(workers)}; setting up {load.users} users in {load.rooms} rooms")
        runner.warm(c, load)
        if capacity is None:
            closed = runner.run_load(c, load, load.duration_s, seed=2)
            capacity = closed["requests_per_s"]
            log(f"restarts: closed loop {capacity:.1f} requests/s ({closed['errors']} errors)")
        plan = Plan(rate=share * capacity, mix=load.mix, scenarios=names, **plan_kw)
        package = {x: c.read_file(x) for x in _package_files()}
        passes: dict[str, dict[str, Any]] = {}
        for label in ("before", "after"):
            steps = Steps(upgrade[0] if upgrade else None, upgrade[1] if upgrade else None,
                          before=label == "before", log=log)
            if steps.before:
                legacy_nginx(c)
            log(f"restarts ({label}): open loop at {plan.rate:.1f} requests/s for {plan.duration_s:.0f} s")
            passes[label] = run(c, workers, plan, runner.SETUP_JSON, log, steps)
            if label == "before":
                if upgrade:
                    log(f"restarts: Synapse back to {UPGRADE_FROM} for the second pass")
                    c.install_debs([upgrade[0]])
                for path, text in package.items():
                    c.write_file(path, text)
                c.run(["nginx", "-t", "-q"])
                c.run(["systemctl", "reload", "nginx.service"])
                stage.wait_healthy(c, stage.workers_on_disk(c), timeout=plan.settle_s)
        return {**passes["after"], "before": passes["before"],
                "side_by_side": side_by_side(passes["before"], passes["after"])}, capacity
