"""``scripts/bench --soak MINUTES``: a long open loop, and the Synapse processes' memory against the budget.

One fresh container with the configuration (by default the default preset with
libjemalloc2 installed, so that the package's memory budget is held by Synapse's
cache autotuning), the budget preseeded, users warmed up, a closed loop to find
the capacity (unless given), then an open loop at a share of it for MINUTES.
Every :data:`SAMPLE_S` seconds the RSS of every Synapse process is read from the
host's /proc (costing the container nothing); the report gives the maximum and
the final sum against the budget, and the throughput and latency of the loop.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import compare, procs, runner, stage
from bench.stage import Container

SAMPLE_S = 30.0
SOAK_JSON = "/var/tmp/msw-bench-soak.json"


def synapse_rss(root_pid: int) -> dict[str, float]:
    """MiB of RSS of each Synapse process in the container now, by name (main, sync-1...)."""
    found: dict[str, float] = {}
    for p in procs.snapshot(root_pid).values():
        if p.group.startswith("synapse:"):
            name = p.group.removeprefix("synapse:")
            found[name] = found.get(name, 0.0) + p.rss_kib / 1024
    return found


def evictions(c: Container) -> dict[str, int]:
    """How often each process began evicting for memory (Synapse logs it at INFO), by log file."""
    out = c.run("grep -c 'Begin memory-based cache eviction' /var/log/matrix-synapse/*.log",
                check=False).stdout
    found = {}
    for line in out.splitlines():
        path, _, count = line.rpartition(":")
        if count.strip().isdigit():
            found[Path(path).stem] = int(count)
    return found


def deployed_budget(c: Container) -> dict[str, Any]:
    """The budget as the package's own status reports it (its ``memory`` object), or {}."""
    out = c.run(["matrix-synapse-workers", "status", "--json"], check=False).stdout
    try:
        return json.loads(out).get("memory") or {}
    except ValueError:
        return {}


def sample_until(done: threading.Event, root_pid: int, started: float,
                 every: float = SAMPLE_S) -> list[dict[str, Any]]:
    """RSS samples every ``every`` seconds until ``done`` is set (one at once, one at the end)."""
    samples: list[dict[str, Any]] = []
    while True:
        per = synapse_rss(root_pid)
        samples.append({"t_s": round(time.monotonic() - started, 1), "total_mib": round(sum(per.values()), 1),
                        "processes": {k: round(v, 1) for k, v in sorted(per.items())}})
        if done.wait(every):
            per = synapse_rss(root_pid)
            samples.append({"t_s": round(time.monotonic() - started, 1),
                            "total_mib": round(sum(per.values()), 1),
                            "processes": {k: round(v, 1) for k, v in sorted(per.items())}})
            return samples


def session(root: Path, deb: Path, cfg: runner.Config, load: runner.Load, minutes: float, share: float,
            capacity: float | None, budget: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Boot, prepare with the budget, warm up, find the capacity, then the soak; everything measured."""
    with Container(root, name=f"bench-soak-{cfg.name}") as c:
        stage.limit_cores(c, load.cores)
        workers = stage.prepare(c, deb, cfg.preset, jemalloc=cfg.jemalloc, env=cfg.env,
                                worker_extra=cfg.worker_extra, shared_extra=cfg.shared_extra,
                                memory_budget=budget)
        memory = deployed_budget(c)
        log(f"soak {cfg.name}: workers {', '.join(workers) or 'none'}; budget {memory or 'none reported'}")
        runner.warm(c, load)
        closed = None
        if capacity is None:
            closed = runner.measure(c, cfg, load, workers)
            capacity = closed.load["requests_per_s"]
            log(f"soak {cfg.name}: capacity {capacity:.1f} requests/s (closed loop)")
        rate = runner.Rate(share, share * capacity)
        duration = minutes * 60
        soak_load = runner.Load(**{**load.__dict__, "duration_s": duration,
                                   "max_requests": max(load.max_requests, int(rate.rate * duration * 1.5))})
        done = threading.Event()
        started = time.monotonic()
        result: dict[str, Any] = {}
        host0 = procs.host_busy_s(load.cores)
        before = procs.snapshot(c.pid)

        def loop() -> None:
            try:
                result.update(runner.run_load(c, soak_load, duration, out=SOAK_JSON, rate=rate.rate))
            finally:
                done.set()

        thread = threading.Thread(target=loop)
        thread.start()
        samples = sample_until(done, c.pid, started)
        thread.join()
        host1 = procs.host_busy_s(load.cores)
        cpu = procs.usage(before, procs.snapshot(c.pid))
        inside = sum(g.cpu_s for g in cpu.values())
        outside = compare.outside_cores(host1 - host0, inside, result.get("elapsed_s", duration))
        log(f"soak {cfg.name}: {result.get('requests_per_s', 0):.1f} requests/s, "
            f"{result.get('errors', '?')} errors, outside load {outside:.2f} cores")
        return {"config": cfg.name, "label": cfg.label, "workers": workers, "budget": memory,
                "minutes": minutes, "share": share, "capacity": capacity, "rate": rate.rate,
                "closed": closed.to_json() if closed else None, "load": result, "samples": samples,
                "outside_cores": outside, "after_memory": deployed_budget(c), "evictions": evictions(c)}


def summary(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Maximum and final sum of RSS, and the process that held most at the maximum.

    >>> summary([{"total_mib": 300.0, "processes": {"main": 160.0, "sync-1": 140.0}},
    ...          {"total_mib": 350.0, "processes": {"main": 170.0, "sync-1": 180.0}},
    ...          {"total_mib": 320.0, "processes": {"main": 160.0, "sync-1": 160.0}}])
    {'max_mib': 350.0, 'final_mib': 320.0, 'first_mib': 300.0}
    """
    totals = [s["total_mib"] for s in samples]
    return {"max_mib": max(totals), "final_mib": totals[-1], "first_mib": totals[0]}


def markdown(got: dict[str, Any], meta: dict[str, Any]) -> str:
    budget = got["budget"].get("budget_mib")
    held = got["budget"].get("enforced")
    s = summary(got["samples"])
    load = got["load"]
    within = (f"{'within' if s['max_mib'] <= budget else 'ABOVE'} the budget of {budget} MiB"
              if budget else "no budget reported")
    out = [f"# matrix-synapse-workers soak, {meta['date']}", "",
           f"Machine: {meta['nproc']} cores ({meta['cpu_model']}), {meta['ram_gib']:.0f} GiB RAM; "
           f"container limited to {meta['load']['cores']} cores. Synapse {meta['synapse']}, package "
           f"{meta['package']} (git {meta['git']}). Configuration: {got['label']} "
           f"(workers: {', '.join(got['workers']) or 'none'}).", "",
           f"Open loop at {got['share']:.0%} of the capacity ({got['capacity']:.1f} requests/s) = "
           f"{got['rate']:.1f} requests/s for {got['minutes']:g} minutes, mix {meta['load']['mix']}, "
           f"{meta['load']['users']} users in {meta['load']['rooms']} rooms. Outside load during the soak: "
           f"{got['outside_cores']:.2f} cores.", "",
           f"Memory budget: {budget} MiB ({got['budget'].get('source', '?')}; "
           f"{'held by cache autotuning' if held else 'not held: no libjemalloc2'}).", "",
           f"Sum of the Synapse processes' RSS: first {s['first_mib']:.0f} MiB, maximum "
           f"{s['max_mib']:.0f} MiB, final {s['final_mib']:.0f} MiB: {within}.", "",
           "Memory-based cache evictions begun (Synapse's log, per log file): "
           + (", ".join(f"{k} {v}" for k, v in sorted(got.get("evictions", {}).items())) or "none logged")
           + ".", "",
           f"Throughput: {load.get('requests_per_s', 0):.1f} answered requests/s of "
           f"{got['rate']:.1f} offered, {load.get('errors', '?')} failed.", "",
           "| class | requests | p50 ms | p95 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
    for cls, c in sorted(load.get("classes", {}).items()):
        out.append(f"| {cls} | {c.get('count', '?')} | {c.get('p50_ms', 0):.0f} | {c.get('p95_ms', 0):.0f} | "
                   f"{c.get('p99_ms', 0):.0f} | {c.get('errors', 0)} |")
    names = sorted({n for x in got["samples"] for n in x["processes"]})
    out += ["", "RSS every sample, MiB:", "", "| s | sum | " + " | ".join(names) + " |",
            "|---:|---:|" + "---:|" * len(names)]
    for x in got["samples"]:
        out.append(f"| {x['t_s']:.0f} | {x['total_mib']:.0f} | "
                   + " | ".join(f"{x['processes'].get(n, 0):.0f}" for n in names) + " |")
    return "\n".join(out) + "\n"
