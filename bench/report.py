"""The benchmark's Markdown report, its PNG chart and the target check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from bench.stats import CLASSES

SYNAPSE_PREFIX = "synapse:"


def _synapse_cpu(o: dict[str, Any]) -> float:
    return sum(v["cpu_s"] for k, v in o["cpu"].items() if k.startswith(SYNAPSE_PREFIX))


def _ms_per_request(cpu_s: float, o: dict[str, Any]) -> float:
    n = o["load"]["requests_ok"]
    return 1000 * cpu_s / n if n else math.nan


def _f(x: float, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def targets(outcomes: Sequence[dict[str, Any]], default_preset: str) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the default preset against the unpinned single process."""
    by = {o["config"]["name"]: o for o in outcomes}
    base, dflt = by.get("single"), by.get(default_preset)
    if not base or not dflt:
        return []
    ratio = dflt["load"]["requests_per_s"] / base["load"]["requests_per_s"]
    rows = [(f"{default_preset}: requests/s at least 1.3x single", f"{ratio:.2f}x", ratio >= 1.3),
            (f"{default_preset}: zero errors", str(dflt["load"]["errors"]), dflt["load"]["errors"] == 0)]
    for cls in ("messages", "profile"):
        a, b = dflt["load"]["classes"][cls]["p99_ms"], base["load"]["classes"][cls]["p99_ms"]
        rows.append((f"{default_preset}: p99 {cls} at most half of single",
                     f"{a:.0f} ms vs {b:.0f} ms ({a / b:.2f}x)", a <= b / 2))
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
                "| target | measured | met |", "|---|---|---|"]
        out += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in rows]
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
