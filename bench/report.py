"""The benchmark's Markdown report, its PNG chart and the target check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from bench import compare
from bench.stats import CLASSES

SYNAPSE_PREFIX = "synapse:"


def _synapse_cpu(o: dict[str, Any]) -> float:
    return sum(v["cpu_s"] for k, v in o["cpu"].items() if k.startswith(SYNAPSE_PREFIX))


def _ms_per_request(cpu_s: float, o: dict[str, Any]) -> float:
    n = o["load"]["requests_ok"]
    return 1000 * cpu_s / n if n else math.nan


def _f(x: float, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def targets(outcomes: Sequence[dict[str, Any]], default_preset: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the default preset against the unpinned single process."""
    by = {o["config"]["name"]: o for o in outcomes}
    base, dflt = by.get("single"), by.get(default_preset)
    if not base or not dflt:
        return []

    def verdict(met: bool) -> str:
        return _verdict(met, [base, dflt])

    ratio = dflt["load"]["requests_per_s"] / base["load"]["requests_per_s"]
    rows = [(f"{default_preset}: requests/s at least {TARGET_RATIO}x single (one run: see --rounds)",
             f"{ratio:.2f}x", verdict(ratio >= TARGET_RATIO)),
            (f"{default_preset}: zero errors", str(dflt["load"]["errors"]),
             "met" if dflt["load"]["errors"] == 0 else "NOT met")]
    for cls in ("messages", "profile"):
        a, b = dflt["load"]["classes"][cls]["p99_ms"], base["load"]["classes"][cls]["p99_ms"]
        rows.append((f"{default_preset}: p99 {cls} at most half of single",
                     f"{a:.0f} ms vs {b:.0f} ms ({a / b:.2f}x)", verdict(a <= b / 2)))
    return rows


def markdown(meta: dict[str, Any], outcomes: Sequence[dict[str, Any]], ops: dict[str, Any] | None,
             default_preset: str, chart: str | None, failed: dict[str, str] | None = None) -> str:
    load = meta["load"]
    out = [f"# matrix-synapse-workers benchmark, {meta['date']}", "",
           f"Machine: {meta['nproc']} cores ({meta['cpu_model']}), {meta['ram_gib']:.0f} GiB RAM; "
           f"benchmark limited to {load['cores']} cores. Synapse {meta['synapse']}, "
           f"PostgreSQL, nginx and Redis from Debian bookworm, in one booted container. "
           f"Package {meta['package']} (git {meta['git']}).", "",
           f"Load: {load['users']} users in {load['rooms']} rooms (each user in 2), closed loop "
           f"(each user's next request when the last is answered), mix {load['mix']} "
           f"(incremental /sync with since token and timeout=0; PUT send; /messages dir=b limit=20; "
           f"GET profile), {load['duration_s']:.0f} s after {load['warmup_s']:.0f} s warm-up, at most "
           f"{load['max_requests']} requests, through nginx on the container's 127.0.0.1:8080. "
           f"Single process: our package not installed, nginx proxying to main's TCP port. "
           f"Presets: the package's own nginx snippet and UNIX sockets.", ""]
    base = next((o for o in outcomes if o["config"]["name"] == "single"), None)
    base_rps = base["load"]["requests_per_s"] if base else math.nan
    out += ["| configuration | Synapse processes | requests/s | vs single | errors | "
            "Synapse CPU ms/request | all CPU ms/request | Synapse RSS MiB | valid |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in outcomes:
        total_cpu = sum(v["cpu_s"] for v in o["cpu"].values())
        rss = sum(v["rss_mib"] for k, v in o["cpu"].items() if k.startswith(SYNAPSE_PREFIX))
        rps = o["load"]["requests_per_s"]
        out.append(f"| {o['config']['label']} | {len(o['workers']) + 1} | {rps:.1f} | "
                   f"{rps / base_rps:.2f}x | {o['load']['errors']} | "
                   f"{_f(_ms_per_request(_synapse_cpu(o), o), 1)} | {_f(_ms_per_request(total_cpu, o), 1)} | "
                   f"{rss:.0f} | {'yes' if not o['problems'] else 'NO: ' + '; '.join(o['problems'])} |")
    out += ["", "Latency per endpoint class, milliseconds (p50 / p95 / p99):", "",
            "| configuration | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for o in outcomes:
        cells = []
        for cls in CLASSES:
            c = o["load"]["classes"][cls]
            cells.append(f"{_f(c['p50_ms'])} / {_f(c['p95_ms'])} / {_f(c['p99_ms'])}")
        out.append(f"| {o['config']['label']} | " + " | ".join(cells) + " |")
    out += ["", "CPU per process during the measured run, in cores (CPU seconds / wall seconds), "
            "and RSS at its end (MiB; PostgreSQL and nginx: sum over their processes):", ""]
    for o in outcomes:
        el = o["load"]["elapsed_s"]
        parts = [f"{k.removeprefix(SYNAPSE_PREFIX)} {v['cpu_s'] / el:.2f}"
                 + (f" ({v['rss_mib']:.0f} MiB)" if v["rss_mib"] else "")
                 for k, v in sorted(o["cpu"].items(), key=lambda kv: -kv[1]["cpu_s"])
                 if v["cpu_s"] / el >= 0.005 or k.startswith(SYNAPSE_PREFIX)]
        redis = (f"; Redis connections mid-run {o['redis_clients']} (want >= {o['redis_expected']})"
                 if o["redis_expected"] else "")
        out.append(f"- {o['config']['label']}: " + ", ".join(parts)
                   + f"; outside the container (other load on the machine): {o['outside_cores']:.2f}; "
                   f"load average before: {o['loadavg_before']}{redis}")
    for name, why in (failed or {}).items():
        lines = why.splitlines() or ["?"]
        first = next((l for l in lines if "setup:" in l or "->" in l), lines[0]).strip()
        out.append(f"- {name}: NOT MEASURED: {first}")
    rows = targets(outcomes, default_preset)
    if rows:
        out += ["", f"Targets (default preset `{default_preset}` against the unpinned single process):", "",
                "| target | measured | verdict |", "|---|---|---|"]
        out += [f"| {t} | {m} | {v} |" for t, m, v in rows]
    if ops and "failed" in ops:
        out += ["", f"Package operations FAILED: {ops['failed'][:500]}"]
    elif ops:
        u, a, r = ops["unchanged"], ops["add_worker"], ops["redis"]
        out += ["", "Package operations (preset small):", "",
                f"- postinst with nothing changed (dpkg-reconfigure, same answers): {u['wall_s']:.2f} s "
                f"(target < 2 s); processes restarted: {', '.join(u['restarted']) or 'none'} of {u['units']} units. "
                f"`matrix-synapse-workers apply` alone (what the postinst runs) {u['apply_s']:.2f} s; for "
                f"comparison, importing Synapse's config code (the check that Synapse loads a new file set) "
                f"takes {u['synapse_import_s']:.2f} s by itself.",
                f"- dpkg-reconfigure adding {a['added']} under load: {a['reconfigure_wall_s']:.1f} s, "
                f"healthy {a['healthy_after_s']:.1f} s after it began; {a['requests_ok']} requests answered, "
                f"errors by class {a['errors_by_class']} (target: none outside sync); "
                f"restarted: {', '.join(a['restarted']) or 'none'}."]
        for op in sorted(set(r["socket"]) & set(r["tcp"])):
            s, t = r["socket"][op], r["tcp"][op]
            out.append(f"- Redis {op} (redis-benchmark, 50 clients): UNIX socket {s:.0f}/s, "
                       f"TCP loopback {t:.0f}/s: {s / t:.2f}x")
    if chart:
        out += ["", f"![chart]({chart})"]
    return "\n".join(out) + "\n"


def chart(outcomes: Sequence[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    labels = [o["config"]["name"] for o in outcomes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.bar(labels, [o["load"]["requests_per_s"] for o in outcomes], color="#4a7ab5")
    ax1.set_ylabel("requests/s")
    ax1.set_title("Throughput")
    ax1.tick_params(axis="x", rotation=30)
    width = 0.8 / len(CLASSES)
    for i, cls in enumerate(CLASSES):
        xs = [j + (i - (len(CLASSES) - 1) / 2) * width for j in range(len(outcomes))]
        ax2.bar(xs, [o["load"]["classes"][cls]["p99_ms"] for o in outcomes], width, label=cls)
    ax2.set_xticks(range(len(outcomes)), labels, rotation=30)
    ax2.set_ylabel("p99 ms")
    ax2.set_title("p99 latency by endpoint class")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# The interleaved comparison (scripts/bench --rounds N)

#: Targets on 2 cores (issue 18), for the default preset against the single process.
TARGET_RATIO = 1.4
TARGET_P99_SHARE = 0.5
TARGET_P99_MODE = "open 80%"
TARGET_RSS_MIB = 110.0


def _runs(outcomes: Sequence[dict[str, Any]], name: str, mode: str) -> list[dict[str, Any]]:
    return sorted((o for o in outcomes if o["config"]["name"] == name and o.get("mode", "closed") == mode),
                  key=lambda o: o.get("round", 0))


def _by_round(runs: Sequence[dict[str, Any]], rounds: int, value: Any) -> list[float | None]:
    at = {o.get("round", 0): value(o) for o in runs}
    return [at.get(r) for r in range(rounds)]


def _synapse_groups(o: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k.removeprefix(SYNAPSE_PREFIX): v for k, v in o["cpu"].items() if k.startswith(SYNAPSE_PREFIX)}


def _all_valid(runs: Sequence[dict[str, Any]]) -> bool:
    return bool(runs) and all(not o["problems"] for o in runs)


def _outside_only(runs: Sequence[dict[str, Any]]) -> bool:
    """Every problem of these runs is outside load (the measurement itself worked)."""
    return all(p.startswith("outside load") for o in runs for p in o["problems"])


def _verdict(met: bool, runs: Sequence[dict[str, Any]]) -> str:
    if _all_valid(runs):
        return compare.judge(met, True)
    return compare.judge(met, False, "invalid: outside load" if _outside_only(runs) else
                         "invalid: " + "; ".join(sorted({p for o in runs for p in o["problems"]}))[:200])


def where_cpu_went(runs: Sequence[dict[str, Any]]) -> str:
    """Median CPU (cores) per process group over these runs, busiest first."""
    groups: dict[str, list[float]] = {}
    for o in runs:
        for k, v in o["cpu"].items():
            groups.setdefault(k.removeprefix(SYNAPSE_PREFIX), []).append(v["cpu_s"] / o["load"]["elapsed_s"])
    med = {k: compare.spread(v).median for k, v in groups.items()}
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(med.items(), key=lambda kv: -kv[1]) if v >= 0.01)


def interleaved_targets(outcomes: Sequence[dict[str, Any]], default: str, rounds: int) -> list[compare.Target]:
    """The issue's targets for the default preset, each met, missed or invalid, with where the time went."""
    out = []
    base, dflt = _runs(outcomes, "single", "closed"), _runs(outcomes, default, "closed")
    ratios = compare.pair_ratios(_by_round(base, rounds, lambda o: o["load"]["requests_per_s"]),
                                 _by_round(dflt, rounds, lambda o: o["load"]["requests_per_s"]))
    if ratios:
        s = compare.spread(ratios)
        out.append(compare.Target(
            f"{default}: requests/s at least {TARGET_RATIO}x single (median of rounds)", s.show("x"),
            _verdict(s.median >= TARGET_RATIO, [*base, *dflt]),
            "" if s.median >= TARGET_RATIO else
            f"CPU in cores, single: {where_cpu_went(base)}; {default}: {where_cpu_went(dflt)}"))
    ob, od = _runs(outcomes, "single", TARGET_P99_MODE), _runs(outcomes, default, TARGET_P99_MODE)
    for cls in ("messages", "profile"):
        r = compare.pair_ratios(_by_round(ob, rounds, lambda o: o["load"]["classes"][cls]["p99_ms"]),
                                _by_round(od, rounds, lambda o: o["load"]["classes"][cls]["p99_ms"]))
        if not r:
            continue
        s = compare.spread(r)
        a = compare.spread(o["load"]["classes"][cls]["p99_ms"] for o in od).median
        b = compare.spread(o["load"]["classes"][cls]["p99_ms"] for o in ob).median
        out.append(compare.Target(
            f"{default}: p99 of {cls} at {TARGET_P99_MODE} load at most {TARGET_P99_SHARE}x single",
            f"{s.show('x')} ({a:.0f} vs {b:.0f} ms, medians)", _verdict(s.median <= TARGET_P99_SHARE, [*ob, *od]),
            "" if s.median <= TARGET_P99_SHARE else
            f"CPU in cores at that load, single: {where_cpu_went(ob)}; {default}: {where_cpu_went(od)}"))
    if dflt:
        per: dict[str, float] = {}
        for o in dflt:
            for k, v in _synapse_groups(o).items():
                if k != "main" and v["processes"] == 1:
                    per[k] = max(per.get(k, 0.0), v["rss_mib"])
        if per:
            worst = max(per.values())
            main_rss = max(_synapse_groups(o).get("main", {}).get("rss_mib", 0.0) for o in dflt)
            # Memory is the process's own: other load on the machine does not change it.
            out.append(compare.Target(
                f"{default}: RSS per worker at most {TARGET_RSS_MIB:.0f} MiB (largest over rounds)",
                ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(per.items())) + f" (main {main_rss:.0f} MiB)",
                compare.judge(worst <= TARGET_RSS_MIB, True),
                "" if worst <= TARGET_RSS_MIB else "see RSS per process above"))
    return out


def interleaved_markdown(meta: dict[str, Any], outcomes: Sequence[dict[str, Any]], names: Sequence[str],
                         default: str, rounds: int, failed: dict[str, str] | None = None) -> str:
    load = meta["load"]
    labels = {o["config"]["name"]: o["config"]["label"] for o in outcomes}
    out = [f"# matrix-synapse-workers benchmark, interleaved, {meta['date']}", "",
           f"Machine: {meta['nproc']} cores ({meta['cpu_model']}), {meta['ram_gib']:.0f} GiB RAM; "
           f"benchmark limited to {load['cores']} cores. Synapse {meta['synapse']}, "
           f"PostgreSQL, nginx and Redis from Debian bookworm, in one booted container per run, all from "
           f"the same cached image. Package {meta['package']} (git {meta['git']}).", "",
           f"{rounds} round{'s' if rounds != 1 else ''} of {', '.join(names)} in turn; each run in a fresh container: "
           f"{load['users']} users in {load['rooms']} rooms, {load['warmup_s']:.0f} s warm-up, then a "
           f"closed loop (each user's next request when the last is answered) for {load['duration_s']:.0f} s"
           + (f", then open loops (requests at a fixed rate whatever the answers' speed, latency from "
              f"each request's scheduled time) at {', '.join(meta['open_loads'])} of the single process's "
              f"capacity ({meta['capacity']:.1f} requests/s, measured in round 1), {load['duration_s']:.0f} s each"
              if meta.get("open_loads") else "")
           + f". Mix {load['mix']}. A run is invalid when the container's CPUs spent more than "
           f"{load['max_outside_cores']:.2f} cores on anything else.", ""]
    base = _runs(outcomes, "single", "closed")
    brps = _by_round(base, rounds, lambda o: o["load"]["requests_per_s"])
    others = [n for n in names if n != "single"]
    out += ["Closed loop, requests/s per round (outside load in cores):", "",
            "| round | " + " | ".join(names) + " | " + " | ".join(f"{n} / single" for n in others) + " |",
            "|---:|" + "---:|" * (len(names) + len(others))]
    for r in range(rounds):
        cells = []
        for n in names:
            o = next((x for x in _runs(outcomes, n, "closed") if x.get("round", 0) == r), None)
            cells.append("-" if o is None else
                         f"{o['load']['requests_per_s']:.1f} ({o['outside_cores']:.2f}"
                         f"{'' if not o['problems'] else ', INVALID'})")
        for n in others:
            orps = _by_round(_runs(outcomes, n, "closed"), rounds, lambda o: o["load"]["requests_per_s"])
            rr = compare.pair_ratios([brps[r]], [orps[r]])
            cells.append(f"{rr[0]:.2f}x" if rr else "-")
        out.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    out.append("")
    for n in others:
        runs = _runs(outcomes, n, "closed")
        ratios = compare.pair_ratios(brps, _by_round(runs, rounds, lambda o: o["load"]["requests_per_s"]))
        valid = _all_valid([*base, *runs])
        needed = compare.rounds_needed(ratios)
        out.append(f"- {labels.get(n, n)} against the single process: median {compare.spread(ratios).show('x')}"
                   + (f"; a difference of this size stands out of this noise after {needed} rounds"
                      f"{' (this run had enough)' if needed <= len(ratios) else ''}" if needed else "")
                   + ("" if valid else " — INVALID: " + "; ".join(sorted(
                       {p for o in [*base, *runs] for p in o["problems"]}))[:300]))
    out += ["", "Per process, medians over the closed-loop runs: CPU seconds per 1000 answered requests "
            "(the process's own utime+stime from /proc/PID/stat: other load on the machine changes this "
            "little) and memory at the end of the run, MiB: RSS (PostgreSQL and nginx summed over their "
            "processes), for Synapse also the anonymous part of it (heap and Python objects: what one more "
            "process of it really adds) and PSS (shared library pages divided among the processes sharing "
            "them):", "",
            "| configuration | process | CPU s / 1000 requests | cores | RSS | anonymous | PSS |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for n in names:
        runs = _runs(outcomes, n, "closed")
        groups = sorted({k for o in runs for k in o["cpu"]})
        rows = []
        for g in groups:
            per_req = compare.spread(1000 * o["cpu"][g]["cpu_s"] / o["load"]["requests_ok"]
                                     for o in runs if g in o["cpu"] and o["load"]["requests_ok"])
            cores = compare.spread(o["cpu"][g]["cpu_s"] / o["load"]["elapsed_s"] for o in runs if g in o["cpu"])
            mem = [compare.spread(o["cpu"][g].get(k, math.nan) for o in runs if g in o["cpu"]).median
                   for k in ("rss_mib", "anon_mib", "pss_mib")]
            rows.append((per_req.median, g, cores.median, mem))
        total = compare.spread(1000 * sum(v["cpu_s"] for v in o["cpu"].values()) / o["load"]["requests_ok"]
                               for o in runs if o["load"]["requests_ok"])
        for per_req, g, cores, mem in sorted(rows, key=lambda r: -r[0]):
            if per_req < 0.05 and not g.startswith(SYNAPSE_PREFIX):
                continue
            cells = [_f(x) if x else "-" for x in mem]
            if not g.startswith(SYNAPSE_PREFIX):
                cells[1:] = ["", ""]
            out.append(f"| {labels.get(n, n)} | {g.removeprefix(SYNAPSE_PREFIX)} | {per_req:.2f} | "
                       f"{cores:.2f} | " + " | ".join(cells) + " |")
        out.append(f"| {labels.get(n, n)} | **all processes** | **{total.median:.2f}** | | | | |")
    for mode in meta.get("open_modes", []):
        out += ["", f"Open loop at {mode.split()[1]} of the single process's capacity: latency in ms "
                f"(p50 / p95 / p99, medians over rounds), answered requests/s, and how late the "
                f"generator sent (p99 ms):", "",
                "| class | " + " | ".join(labels.get(n, n) for n in names)
                + " | " + " | ".join(f"p99 {n} / single" for n in others) + " |",
                "|---|" + "---:|" * (len(names) + len(others))]
        ob = _runs(outcomes, "single", mode)
        for cls in CLASSES:
            cells = []
            for n in names:
                runs = _runs(outcomes, n, mode)
                cs = [o["load"]["classes"][cls] for o in runs]
                cells.append(" / ".join(_f(compare.spread(c[q] for c in cs).median)
                                        for q in ("p50_ms", "p95_ms", "p99_ms")))
            for n in others:
                r = compare.pair_ratios(_by_round(ob, rounds, lambda o: o["load"]["classes"][cls]["p99_ms"]),
                                        _by_round(_runs(outcomes, n, mode), rounds,
                                                  lambda o: o["load"]["classes"][cls]["p99_ms"]))
                cells.append(compare.spread(r).show("x") if r else "-")
            out.append(f"| {cls} | " + " | ".join(cells) + " |")
        cells = []
        for n in names:
            runs = _runs(outcomes, n, mode)
            rps = compare.spread(o["load"]["requests_per_s"] for o in runs).median
            late = compare.spread((o["load"].get("open_loop") or {}).get("lateness_ms", {}).get("p99_ms", math.nan)
                                  for o in runs).median
            shed = sum((o["load"].get("open_loop") or {}).get("shed", 0) for o in runs)
            bad = "" if _all_valid(runs) else " INVALID"
            cells.append(f"{_f(rps, 1)}/s, late {_f(late, 1)}, shed {shed}{bad}")
        out.append("| answered, generator | " + " | ".join(cells) + " |" + " |" * len(others))
    for name, why in (failed or {}).items():
        lines = why.splitlines() or ["?"]
        out.append(f"- {name}: NOT MEASURED: {lines[0][:300]}")
    rows = interleaved_targets(outcomes, default, rounds)
    if rows:
        out += ["", f"Targets (default preset `{default}` against the single process, {load['cores']} cores):", "",
                "| target | measured | verdict | where it went |", "|---|---|---|---|"]
        out += [f"| {t.name} | {t.measured} | {t.verdict} | {t.why} |" for t in rows]
    return "\n".join(out) + "\n"
