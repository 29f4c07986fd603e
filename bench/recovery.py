"""What a restart under load cost: failed requests and seconds until every class answers again.

Pure functions over the generator's trace (``loadgen.py run --trace``): one
row per request, ``[class, due, answered, status, first status, attempts]`` in
seconds since the load started (status 0: no HTTP answer, -1: shed by the
generator).  ``status`` is what the client saw after its own retries of a 429
(``--client-retry-s``), ``first status`` what the proxy answered first; rows
of four (older traces) had no retries.
bench/restarts.py makes the restarts and calls these.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from bench.stats import CLASSES

#: One traced request: class, due (s), answered (s), status.
Row = Sequence[Any]


@dataclass(frozen=True)
class Restart:
    """One restart made during the load: when it began, on the load's clock, and how long
    ``systemctl restart`` took to return."""

    name: str
    unit: str
    at: float
    took_s: float


@dataclass
class Window:
    """The load from one restart until the next (or the end): what failed, how it recovered."""

    restart: Restart
    end: float
    requests: int = 0
    failed: int = 0
    #: "class status" -> count, e.g. "sync 502".
    failures: dict[str, int] = field(default_factory=dict)
    #: Requests whose first answer from the proxy was not 200 (a 429 the client then
    #: retried counts here, not in ``failed``), by "class status".
    proxy_failed: int = 0
    proxy_failures: dict[str, int] = field(default_factory=dict)
    #: Seconds from the restart until every process answered /health and held its
    #: Redis connections again (measured beside the load; None: not measured).
    serving_s: float | None = None
    #: Seconds from the restart until each class answered 200 again (None: not within the window).
    recovered_by_class: dict[str, float | None] = field(default_factory=dict)
    #: The first and last answer of a failed request, seconds after the restart.
    failing_from_s: float | None = None
    failing_until_s: float | None = None
    #: Sends answered 200 after this class had recovered: the ones that prove no loss after it.
    sends_ok_after: int = 0
    #: The longest wait for a 200 answered in the window (a request held up, not failed).
    slowest_ok_s: float | None = None

    @property
    def recovered_s(self) -> float | None:
        """Seconds until every class answered 200 again; None if one never did in the window."""
        values = list(self.recovered_by_class.values())
        if not values or any(v is None for v in values):
            return None
        return max(v for v in values if v is not None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.restart.name, "unit": self.restart.unit, "at_s": self.restart.at,
                "restart_took_s": self.restart.took_s, "window_end_s": self.end,
                "requests": self.requests, "failed": self.failed, "failures": self.failures,
                "proxy_failed": self.proxy_failed, "proxy_failures": self.proxy_failures,
                "serving_s": self.serving_s,
                "recovered_s": self.recovered_s, "recovered_by_class": self.recovered_by_class,
                "failing_from_s": self.failing_from_s, "failing_until_s": self.failing_until_s,
                "sends_ok_after": self.sends_ok_after, "slowest_ok_s": self.slowest_ok_s}


def first_status(row: Row) -> int:
    """What the proxy answered first (rows without retries: the status)."""
    return row[4] if len(row) > 4 else row[3]


def status_text(status: int) -> str:
    return {0: "no answer", -1: "shed"}.get(status, str(status))


def class_recovery(rows: Sequence[Row], at: float, end: float) -> float | None:
    """Seconds from `at` until this class answered 200 again, from rows of one class.

    The answer that counts is the first 200 to a request due after the last
    request that failed within [at, end) (by when it was answered), or, when
    none failed, the first 200 to a request due at or after `at`: a class
    whose requests hang without failing recovers when they are answered, not
    when they are sent.  None when no such answer came before `end`.
    """
    failed_due = [r[1] for r in rows if r[3] != 200 and at <= r[2] < end]
    after = max(failed_due) if failed_due else None
    oks = [r[2] for r in rows if r[3] == 200 and r[2] < end
           and (r[1] > after if after is not None else r[1] >= at)]
    return min(oks) - at if oks else None


def windows(trace: Sequence[Row], restarts: Sequence[Restart], end: float,
            classes: Sequence[str] = CLASSES) -> list[Window]:
    """One Window per restart, each up to the next restart (the last one up to `end`).

    A request belongs to the window in which it was answered, so a request
    cut off by a restart counts against that restart.  Only the classes that
    appear in the trace are judged.
    """
    present = [c for c in classes if any(r[0] == c for r in trace)]
    out = []
    ordered = sorted(restarts, key=lambda r: r.at)
    for k, restart in enumerate(ordered):
        stop = ordered[k + 1].at if k + 1 < len(ordered) else end
        w = Window(restart, stop)
        mine = [r for r in trace if restart.at <= r[2] < stop]
        w.requests = len(mine)
        bad = [r for r in mine if r[3] != 200]
        w.failed = len(bad)
        for r in bad:
            key = f"{r[0]} {status_text(r[3])}"
            w.failures[key] = w.failures.get(key, 0) + 1
        for r in mine:
            if first_status(r) != 200:
                w.proxy_failed += 1
                key = f"{r[0]} {status_text(first_status(r))}"
                w.proxy_failures[key] = w.proxy_failures.get(key, 0) + 1
        if bad:
            w.failing_from_s = min(r[2] for r in bad) - restart.at
            w.failing_until_s = max(r[2] for r in bad) - restart.at
        waits = [r[2] - r[1] for r in mine if r[3] == 200]
        w.slowest_ok_s = max(waits) if waits else None
        for c in present:
            w.recovered_by_class[c] = class_recovery([r for r in trace if r[0] == c], restart.at, stop)
        back = w.recovered_s
        if back is not None:
            w.sends_ok_after = sum(1 for r in mine if r[0] == "send" and r[3] == 200
                                   and r[1] >= restart.at + back)
        out.append(w)
    return out


def before(trace: Sequence[Row], restarts: Sequence[Restart]) -> dict[str, int]:
    """Requests and failures answered before the first restart (the quiet baseline)."""
    first = min((r.at for r in restarts), default=math.inf)
    mine = [r for r in trace if r[2] < first]
    return {"requests": len(mine), "failed": sum(1 for r in mine if r[3] != 200)}


def unit_changes(snapshots: list[dict[str, Any]], end: dict[str, dict[str, str]]
                 ) -> dict[str, dict[str, Any]]:
    """Per unit: across which of our restarts its process changed, and systemd's NRestarts
    (restarts of its own, after a crash: Restart=always) at the end."""
    out: dict[str, dict[str, Any]] = {}
    for unit, state in end.items():
        changed = [s["restart"] for s in snapshots
                   if s["before"].get(unit, {}).get("MainPID") != s["after"].get(unit, {}).get("MainPID")]
        out[unit] = {"active": state.get("ActiveState") == "active", "state": state.get("SubState"),
                     "pid_changed_with": changed, "systemd_restarts": int(state.get("NRestarts") or 0)}
    return out


def problems(report: dict[str, Any], bound_s: float) -> list[str]:
    """What breaks the promise: a restart not recovered within bound_s, a unit not active,
    a process not back on Redis, a send answered 200 that a member never saw."""
    out = []
    for w in report["windows"]:
        if w["recovered_s"] is None or w["recovered_s"] > bound_s:
            out.append(f"{w['name']}: not every class answered 200 within {bound_s:.0f} s "
                       f"({w['recovered_by_class']})")
    if not report["settled"]["healthy"]:
        out.append(f"not every process healthy and on Redis afterwards: {report['settled']['detail']}")
    inactive = [u for u, s in report["units"].items() if not s["active"]]
    if inactive or report["settled"]["failed_units"]:
        out.append(f"units not active: {inactive or report['settled']['failed_units']}")
    missing = report["verify"]["missing"]
    if missing:
        out.append(f"{len(missing)} (member, event) pairs never seen in /sync, e.g. {missing[:5]}")
    return out


_NUMBER = re.compile(r"\d+(\.\d+)?")
#: The request a "Failed handle request" line names, with its URI: one entry for them all.
_REQUEST = re.compile(r"<\w*Request at .*")


def log_summary(text: str, keep: int = 6) -> list[list[Any]]:
    """[count, level, logger, message] of the WARNING and ERROR lines of a Synapse log, the most
    frequent first; numbers in messages become N and a request's description <request>, so
    that repeats count together.

    Lines are in the format of Synapse's packaged log config:
    ``time - logger - line - LEVEL - request - message``.
    """
    seen: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        parts = line.split(" - ", 5)
        if len(parts) == 6 and parts[3] in ("WARNING", "ERROR", "CRITICAL"):
            msg = _NUMBER.sub("N", _REQUEST.sub("<request>", parts[5]))
            seen[(parts[3], parts[1], msg[:160])] += 1
    return [[n, level, name, msg] for (level, name, msg), n in seen.most_common(keep)]


def _seconds(value: float | None) -> str:
    return "not recovered" if value is None else f"{value:.1f}"


def table(ws: Sequence[Window]) -> str:
    """The restarts as a Markdown table."""
    lines = ["| restarted | took s | requests | failed as the client saw them | failed by class and status "
             "| failed at the proxy | at the proxy by class and status "
             "| failing from–until s | longest 200 s | recovered after s | slowest class "
             "| every process serving after s |",
             "|---|---:|---:|---:|---|---:|---|---|---:|---:|---|---:|"]

    def by_class(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
    for w in ws:
        by = by_class(w.failures)
        span = ("–" if w.failing_from_s is None
                else f"{w.failing_from_s:.1f}–{w.failing_until_s:.1f}")
        slow = [c for c, v in w.recovered_by_class.items() if v is None]
        if not slow and w.recovered_by_class:
            slow = [max(w.recovered_by_class, key=lambda c: w.recovered_by_class[c] or 0.0)]
        lines.append(f"| {w.restart.name} (`{w.restart.unit}`) | {w.restart.took_s:.1f} | {w.requests} "
                     f"| {w.failed} | {by} | {w.proxy_failed} | {by_class(w.proxy_failures)} "
                     f"| {span} | {_seconds(w.slowest_ok_s)} | {_seconds(w.recovered_s)} "
                     f"| {', '.join(slow)} | {'-' if w.serving_s is None else f'{w.serving_s:.1f}'} |")
    return "\n".join(lines)
