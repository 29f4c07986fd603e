"""Run each configuration in its own fresh container and measure it.

One configuration: boot the cached Synapse-on-PostgreSQL layer, install the
package with a preset (or leave it out: the single-process baseline), put
nginx in front on 127.0.0.1:8080, create users and rooms (not timed), warm
up, then run the generator for the stated time while reading every process's
CPU from /proc and checking Synapse's Redis connections mid-run.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import compare, procs, stage
from bench.stage import BENCH_DIR, Container

SETUP_JSON = "/var/tmp/msw-bench-setup.json"
RESULT_JSON = "/var/tmp/msw-bench-result.json"


@dataclass(frozen=True)
class Config:
    name: str
    preset: str | None  # None: our package not installed
    pin_main: bool = False
    #: Every Synapse process started with libjemalloc.so.2 preloaded (None: as the package does it).
    jemalloc: bool | None = None
    #: KEY=VALUE environment of every Synapse process (a drop-in on main's and the workers' units).
    env: tuple[str, ...] = ()
    #: YAML appended to every worker's file: a setting for workers only.
    worker_extra: str = ""
    #: YAML in conf.d: a setting for every Synapse process, main included.
    shared_extra: str = ""
    #: How the label says what env and worker_extra change.
    variant: str = ""

    @property
    def label(self) -> str:
        if self.preset is None:
            text = "single process, main pinned to 1 core" if self.pin_main else "single process"
        else:
            text = f"preset {self.preset}"
        if self.jemalloc is not None:
            text += ", jemalloc" if self.jemalloc else ", glibc malloc"
        return text + (f", {self.variant}" if self.variant else "")


_GC_SLOWER = "gc_thresholds: [5000, 20, 20]\ngc_min_interval: [5s, 30s, 120s]\n"

CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("single", None),
    Config("single-pinned", None, pin_main=True),
    Config("minimal", "minimal"),
    Config("small", "small"),
    Config("one_of_each", "one_of_each"),
    Config("busy", "busy"),
    # Allocator comparisons, each process measured with and without jemalloc.
    Config("single-glibc", None, jemalloc=False),
    Config("single-jemalloc", None, jemalloc=True),
    Config("minimal-glibc", "minimal", jemalloc=False),
    Config("minimal-jemalloc", "minimal", jemalloc=True),
    Config("minimal-arena2", "minimal", jemalloc=False, env=("MALLOC_ARENA_MAX=2",),
           variant="MALLOC_ARENA_MAX=2"),
    Config("minimal-cache01", "minimal", worker_extra="caches:\n  global_factor: 0.1\n",
           variant="workers' caches.global_factor 0.1"),
    # Python's collector less often: gen0 after 5000 allocations net (default 700), at most
    # every 5 s / 30 s / 120 s per generation (Synapse's default 1 s / 10 s / 60 s).
    Config("single-gc", None, shared_extra=_GC_SLOWER, variant="GC less often"),
    Config("minimal-gc", "minimal", shared_extra=_GC_SLOWER, variant="GC less often"),
)}


#: What the survey (scripts/bench without --rounds) measures by default.
SURVEY: tuple[str, ...] = ("single", "single-pinned", "minimal", "small", "one_of_each", "busy")


class ConfigFailed(Exception):
    """A configuration could not be measured; the message carries Synapse's errors."""


@dataclass(frozen=True)
class Load:
    users: int
    rooms: int
    duration_s: float
    warmup_s: float
    max_requests: int
    mix: str
    cores: int
    #: A measured run with more CPU than this (cores) spent outside the container is invalid.
    max_outside_cores: float = compare.MAX_OUTSIDE_CORES


@dataclass(frozen=True)
class Rate:
    """An open-loop run: `rate` requests/s, `fraction` of the single process's capacity."""

    fraction: float
    rate: float

    @property
    def mode(self) -> str:
        return f"open {self.fraction:.0%}"


@dataclass
class Outcome:
    config: Config
    workers: list[str]
    load: dict[str, Any]
    cpu: dict[str, procs.GroupUsage]
    redis_clients: int | None
    redis_expected: int | None
    loadavg_before: str
    #: CPU (in cores) this machine spent outside the container during the run: other load.
    outside_cores: float
    problems: list[str] = field(default_factory=list)
    #: "closed" (as fast as answered) or "open 80%" (fixed rate, that share of single's capacity).
    mode: str = "closed"
    #: Which round of an interleaved run (0 for a single pass).
    round: int = 0
    rate: float | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = asdict(self.config) | {"label": self.config.label}
        d["cpu"] = {k: asdict(v) for k, v in self.cpu.items()}
        return d


def generator(c: Container, *args: str, timeout: float) -> None:
    c.run(["python3", f"{BENCH_DIR}/loadgen.py", *args], timeout=timeout)


def setup_users(c: Container, load: Load) -> None:
    generator(c, "setup", "--users", str(load.users), "--rooms", str(load.rooms),
              "--secret", stage.harness.TEST_SHARED_SECRET, "--out", SETUP_JSON, timeout=900)


def run_load(c: Container, load: Load, duration: float, out: str = RESULT_JSON,
             seed: int = 1, rate: float = 0.0) -> dict[str, Any]:
    generator(c, "run", "--setup", SETUP_JSON, "--duration", str(duration),
              "--max-requests", str(load.max_requests), "--mix", load.mix, "--seed", str(seed),
              "--rate", str(rate), "--out", out, timeout=duration + 120)
    return json.loads(c.read_file(out))


def warm(c: Container, load: Load) -> None:
    """Users and rooms created, then a short untimed run: nothing of this is measured."""
    setup_users(c, load)
    if load.warmup_s > 0:
        run_load(c, load, load.warmup_s, seed=99)


def measure(c: Container, cfg: Config, load: Load, workers: list[str], rate: Rate | None = None,
            round_no: int = 0) -> Outcome:
    """One measured run (closed loop, or open loop at `rate`), every process's CPU read around it."""
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    redis: dict[str, int] = {}

    def check_redis() -> None:
        redis["clients"] = stage.redis_clients(c)

    timer = threading.Timer(load.duration_s / 2, check_redis) if cfg.preset else None
    before = procs.snapshot(c.pid)
    host0 = procs.host_busy_s(load.cores)
    if timer:
        timer.start()
    try:
        result = run_load(c, load, load.duration_s, rate=rate.rate if rate else 0.0,
                          seed=1 + round_no)
    finally:
        if timer:
            timer.cancel()
            timer.join()
    host1 = procs.host_busy_s(load.cores)
    after = procs.snapshot(c.pid)
    cpu = procs.usage(before, after)
    cpu.pop("generator", None)  # it exited before the second snapshot: it reports its own CPU
    cpu["generator"] = procs.GroupUsage("generator", 1, result["generator_cpu_s"], 0.0)
    problems = []
    expected = 2 * (len(workers) + 1) if cfg.preset else None
    got = redis.get("clients") if cfg.preset else None
    if cfg.preset and (got is None or got < expected):
        problems.append(f"Redis replication connections mid-run: {got}, want {expected}")
    if result["errors"]:
        problems.append(f"{result['errors']} failed requests")
    inside = sum(g.cpu_s for g in cpu.values())
    outside = compare.outside_cores(host1 - host0, inside, result["elapsed_s"])
    busy = compare.outside_load_problem(outside, load.max_outside_cores)
    if busy:
        problems.append(busy)
    return Outcome(cfg, workers, result, cpu, got, expected, " ".join(loadavg), outside, problems,
                   mode=rate.mode if rate else "closed", round=round_no,
                   rate=rate.rate if rate else None)


def run_session(root: Path, deb: Path, cfg: Config, load: Load, log: Any, round_no: int = 0,
                rates: Any = None) -> list[Outcome]:
    """Boot a fresh container for cfg, measure a closed loop, then an open loop at each rate.

    rates: called with the closed-loop Outcome, returns the open-loop Rates to
    run next (none by default); the single process's first session sets them
    from its own capacity.
    """
    tag = f"{cfg.name}" + (f" round {round_no + 1}" if rates is not None else "")
    log(f"{tag}: booting")
    with Container(root, name=f"bench-{cfg.name}") as c:
        stage.limit_cores(c, load.cores)
        workers = stage.prepare(c, deb, cfg.preset, jemalloc=cfg.jemalloc, env=cfg.env,
                                worker_extra=cfg.worker_extra, shared_extra=cfg.shared_extra)
        if cfg.pin_main:
            stage.pin_main(c, 0)
        log(f"{tag}: workers {', '.join(workers) or 'none'}; setting up "
            f"{load.users} users in {load.rooms} rooms")
        outcomes: list[Outcome] = []
        try:
            warm(c, load)
            todo: list[Rate | None] = [None]
            while todo:
                rate = todo.pop(0)
                o = measure(c, cfg, load, workers, rate, round_no)
                outcomes.append(o)
                log(f"{tag} {o.mode}: {o.load['requests_per_s']:.1f} requests/s, "
                    f"{o.load['errors']} errors, outside load {o.outside_cores:.2f} cores"
                    f"{'' if o.valid else ' INVALID: ' + '; '.join(o.problems)}")
                if rate is None and rates is not None:
                    todo.extend(rates(o))
        except Exception as e:
            logs = c.run("grep -h -B2 -A12 Traceback /var/log/matrix-synapse/*.log | tail -60",
                         check=False).stdout
            raise ConfigFailed(f"{cfg.name}: {str(e)[-1500:]}\nSynapse logs:\n{logs}") from e
        return outcomes


def run_config(root: Path, deb: Path, cfg: Config, load: Load, log: Any) -> Outcome:
    """One closed-loop measurement of cfg in its own container (the survey of every configuration)."""
    return run_session(root, deb, cfg, load, log)[0]


# --------------------------------------------------------------------------
# What the package's own operations cost


def _pids(c: Container) -> dict[str, str]:
    units = ["matrix-synapse.service", "redis-server@matrix-synapse.service", "nginx.service",
             *(f"matrix-synapse-worker@{n}.service" for n in stage.workers_on_disk(c))]
    return {u: c.run(["systemctl", "show", "-P", "MainPID", u], check=False).stdout.strip() for u in units}


def _timed(c: Container, argv: list[str]) -> float:
    t0 = time.monotonic()
    c.run(argv, timeout=600)
    return time.monotonic() - t0


def _reconfigure(c: Container, answers: str) -> float:
    c.run(["debconf-set-selections"], input=answers)
    t0 = time.monotonic()
    c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)
    return time.monotonic() - t0


def package_operations(root: Path, deb: Path, load: Load, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Container(root, name="bench-ops") as c:
        stage.limit_cores(c, load.cores)
        workers = stage.prepare(c, deb, "small")
        log(f"ops: workers {', '.join(workers)}")

        # 1. postinst with nothing changed.
        before = _pids(c)
        wall = _reconfigure(c, stage.preseed("small"))
        after = _pids(c)
        restarted = sorted(u for u in before if before[u] != after.get(u))
        out["unchanged"] = {"wall_s": wall, "restarted": restarted, "units": len(before),
                            "apply_s": _timed(c, ["matrix-synapse-workers", "apply"]),
                            "synapse_import_s": _timed(c, [f"{stage.SYNAPSE_PYTHON}", "-c",
                                                           "import synapse.config.homeserver"])}
        log(f"ops: unchanged reconfigure {wall:.2f} s, restarted {restarted or 'none'}")

        # 2. Adding a worker under load.
        setup_users(c, load)
        duration = max(30.0, min(load.duration_s, 60.0))
        result: dict[str, Any] = {}

        def loader() -> None:
            result.update(run_load(c, load, duration, out="/var/tmp/msw-bench-ops.json"))

        t = threading.Thread(target=loader)
        t.start()
        time.sleep(5)
        keep = list(workers)
        new = "sync-2"
        t0 = time.monotonic()
        wall = _reconfigure(c, stage.preseed("custom", "sync, client", "sync:2"))
        stage.harness.wait_for_http(c, f"{stage.SOCKETS}/{new}.sock", "/health", timeout=120)
        healthy = time.monotonic() - t0
        pids_now = _pids(c)
        t.join()
        by_class = {k: v["errors"] for k, v in result["classes"].items()}
        out["add_worker"] = {
            "added": new, "kept": keep, "reconfigure_wall_s": wall, "healthy_after_s": healthy,
            "requests_ok": result["requests_ok"], "errors_by_class": by_class,
            "errors_not_sync": sum(v for k, v in by_class.items() if k != "sync"),
            "error_samples": result["error_samples"][:20],
            "restarted": sorted(u for u in after if after[u] != pids_now.get(u)),
        }
        log(f"ops: added {new} under load: dpkg-reconfigure {wall:.1f} s, healthy after "
            f"{healthy:.1f} s, errors {by_class}")

        # 3. Redis over its UNIX socket against TCP, one throwaway instance serving both.
        c.run("redis-server --port 6390 --bind 127.0.0.1 --unixsocket /run/msw-bench-redis.sock "
              "--save '' --appendonly no --daemonize yes --pidfile /run/msw-bench-redis.pid")
        c.wait_until(["redis-cli", "-s", "/run/msw-bench-redis.sock", "PING"], timeout=20)
        bench = ["redis-benchmark", "-q", "-n", "100000", "-c", "50", "-t", "set,get", "--csv"]
        sock = c.run([*bench, "-s", "/run/msw-bench-redis.sock"], timeout=300).stdout
        tcp = c.run([*bench, "-h", "127.0.0.1", "-p", "6390"], timeout=300).stdout
        c.run("kill $(cat /run/msw-bench-redis.pid)", check=False)
        out["redis"] = {"socket": _redis_csv(sock), "tcp": _redis_csv(tcp)}
        log(f"ops: redis {out['redis']}")
    return out


def _redis_csv(text: str) -> dict[str, float]:
    rows = {}
    for line in text.splitlines():
        cells = [x.strip('"') for x in line.split(",")]
        if len(cells) >= 2:
            try:
                rows[cells[0]] = float(cells[1])
            except ValueError:
                continue
    return rows
