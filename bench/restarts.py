"""Restart Redis, PostgreSQL and main under an open-loop client load, and prove nothing is lost.

In one booted container (the benchmark's layers, our package with several
workers and an event persister, nginx in front): the generator sends at a
fixed rate with --trace while this module restarts, in turn and with quiet
time between them, Synapse's Redis instance, PostgreSQL and main, as an
admin would with `systemctl restart`.  It never touches a worker.  Then:

- per restart, the requests that failed (by class and status) and the
  seconds until every class answered 200 again (bench/recovery.py);
- every unit active, every process answering /health and subscribed to
  Redis again, with how often systemd itself restarted each worker;
- every send answered 200 found in the /sync of every member of its room
  (loadgen.py verify).

scripts/bench --restarts runs it at a share of the measured capacity;
tests/booted/test_booted_restarts.py runs it with a light load and asserts
the invariants.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from bench import recovery, runner, stage
from bench.stage import BENCH_DIR, Container

#: What is restarted, in order: (name, unit).  postgresql.service restarts every cluster
#: (each postgresql@VERSION-NAME.service is PartOf it), as `systemctl restart postgresql` does.
RESTARTS: tuple[tuple[str, str], ...] = (
    ("Redis", "redis-server@matrix-synapse.service"),
    ("PostgreSQL", "postgresql.service"),
    ("main", "matrix-synapse.service"),
)

#: The workers: two sync workers (each user's /sync sticks to one, so events reach both only
#: through replication), a client reader taking the sends, and an event persister (the sends'
#: events are written by it and announced over Redis): what a Redis restart can break.
TYPES = "sync, client, events"
COUNTS = "sync:2"

LOG_DIR = "/var/log/matrix-synapse"
TRACE_JSON = "/var/tmp/msw-restarts-load.json"
VERIFY_JSON = "/var/tmp/msw-restarts-verify.json"


@dataclass(frozen=True)
class Plan:
    rate: float
    #: Load before the first restart (the baseline), then this long after each restart, and
    #: this much more after the last (main's restart takes every process down).
    lead_s: float = 20.0
    quiet_s: float = 45.0
    tail_s: float = 15.0
    mix: str = "sync:60,send:20,messages:10,profile:10"
    #: After the load: how long every process may take to answer /health and hold Redis again.
    settle_s: float = 120.0
    #: How long verify keeps looking for a send's event in a member's /sync.
    verify_s: float = 60.0

    @property
    def duration_s(self) -> float:
        return self.lead_s + self.quiet_s * len(RESTARTS) + self.tail_s


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


def load_under_restarts(c: Container, plan: Plan, setup_json: str,
                        log: Callable[[str], None]) -> tuple[dict[str, Any], list[recovery.Restart],
                                                             list[dict[str, Any]]]:
    """Run the traced open loop and make the restarts during it.

    Returns the generator's result, the restarts on the load's clock
    (CLOCK_MONOTONIC is the host's and the container's alike), and the
    units' states around each restart.
    """
    result: dict[str, Any] = {}
    failure: list[BaseException] = []
    watched = units(c, stage.workers_on_disk(c))

    def loader() -> None:
        try:
            c.run(["python3", f"{BENCH_DIR}/loadgen.py", "run", "--setup", setup_json,
                   "--duration", str(plan.duration_s), "--rate", str(plan.rate), "--mix", plan.mix,
                   "--max-requests", "1000000", "--trace", "--out", TRACE_JSON],
                  timeout=plan.duration_s + 180)
            result.update(json.loads(c.read_file(TRACE_JSON)))
        except BaseException as e:  # reported after the restarts
            failure.append(e)

    launched = time.monotonic()
    t = threading.Thread(target=loader, name="restarts-load")
    t.start()
    made: list[tuple[str, str, float, float]] = []
    snapshots: list[dict[str, Any]] = []
    try:
        time.sleep(plan.lead_s)
        for k, (name, unit) in enumerate(RESTARTS):
            before = unit_states(c, watched)
            t0 = time.monotonic()
            log(f"restarting {name} ({unit})")
            c.run(["systemctl", "restart", unit], timeout=300)
            took = time.monotonic() - t0
            made.append((name, unit, t0, took))
            log(f"{name}: systemctl restart returned after {took:.1f} s")
            last = k == len(RESTARTS) - 1
            # The last snapshot is taken shortly before the load ends.
            time.sleep(max(0.0, t0 + plan.quiet_s + (plan.tail_s if last else 0.0) - 3.0
                           - time.monotonic()))
            snapshots.append({"restart": name, "before": before, "after": unit_states(c, watched)})
    finally:
        t.join()
    if failure:
        raise failure[0]
    started = result["started_monotonic"]
    if not 0 <= started - launched < 60:
        raise RuntimeError(f"the generator's clock does not match this one: it started at "
                           f"{started:.1f}, launched at {launched:.1f} (CLOCK_MONOTONIC differs?)")
    restarts = [recovery.Restart(n, u, t0 - started, took) for n, u, t0, took in made]
    return result, restarts, snapshots


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
        log: Callable[[str], None]) -> dict[str, Any]:
    """The load with the restarts, then the checks; returns everything for the report."""
    sizes = log_sizes(c)
    result, restarts, snapshots = load_under_restarts(c, plan, setup_json, log)
    ws = recovery.windows(result["trace"], restarts, result["elapsed_s"])
    for w in ws:
        log(f"{w.restart.name}: {w.failed} of {w.requests} requests failed, recovered after "
            f"{'never' if w.recovered_s is None else f'{w.recovered_s:.1f} s'}")
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
             f"Before the first restart: {report['baseline']['failed']} of "
             f"{report['baseline']['requests']} requests failed.", "",
             report["table"], "",
             "Recovered after: seconds from `systemctl restart` until every endpoint class had "
             "answered 200 to a request due after its last failure (after the restart, for a class "
             "with none). Longest 200: the longest wait for an answer that came (held, not failed).", ""]
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
    return "\n".join(lines) + "\n"


def session(root: Path, deb: Path, load: runner.Load, share: float, capacity: float | None,
            plan_kw: dict[str, Any], log: Callable[[str], None]) -> tuple[dict[str, Any], float | None]:
    """scripts/bench --restarts: boot, install, set up users, measure capacity (closed loop)
    unless given, then the restarts at `share` of it."""
    with Container(root, name="bench-restarts") as c:
        stage.limit_cores(c, load.cores)
        workers = prepare(c, deb)
        log(f"restarts: workers {', '.join(workers)}; setting up {load.users} users in {load.rooms} rooms")
        runner.warm(c, load)
        if capacity is None:
            closed = runner.run_load(c, load, load.duration_s, seed=2)
            capacity = closed["requests_per_s"]
            log(f"restarts: closed loop {capacity:.1f} requests/s ({closed['errors']} errors)")
        plan = Plan(rate=share * capacity, mix=load.mix, **plan_kw)
        log(f"restarts: open loop at {plan.rate:.1f} requests/s for {plan.duration_s:.0f} s")
        return run(c, workers, plan, runner.SETUP_JSON, log), capacity
