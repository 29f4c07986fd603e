"""What a restart under load cost, from the generator's trace (bench/recovery.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.recovery import (Restart, before, class_recovery, log_summary, problems, table,  # noqa: E402
                            unit_changes, windows)


def steady(cls: str, start: float, stop: float, step: float = 1.0, latency: float = 0.125,
           status: int = 200) -> list[list]:
    """Requests of one class due every `step` s, each answered `latency` s later (binary-exact
    numbers, so that the sums below are exact)."""
    out, t = [], start
    while t < stop:
        out.append([cls, t, t + latency, status])
        t += step
    return out


def test_a_class_recovers_at_the_first_200_to_a_request_due_after_its_last_failure():
    rows = steady("sync", 0, 10) + steady("sync", 10, 14, status=502) + steady("sync", 14, 30)
    # Failures due at 10..13; the first later request is due at 14, answered at 14.125.
    assert class_recovery(rows, at=10.0, end=30.0) == 4.125


def test_a_request_due_before_the_last_failure_does_not_count_even_if_answered_later():
    rows = [["send", 9.5, 16.0, 200],   # in flight through the restart, answered late
            ["send", 10.5, 10.625, 502],
            ["send", 12.0, 12.5, 200]]
    assert class_recovery(rows, at=10.0, end=30.0) == 2.5


def test_a_class_that_only_hangs_recovers_when_it_is_answered():
    rows = steady("messages", 0, 10) + [["messages", 10.25, 15.0, 200], ["messages", 11.0, 15.5, 200]]
    assert class_recovery(rows, at=10.0, end=30.0) == 5.0


def test_no_answer_within_the_window_is_not_recovered():
    rows = steady("profile", 0, 10) + steady("profile", 10, 20, status=0) + steady("profile", 20, 40)
    assert class_recovery(rows, at=10.0, end=20.0) is None


def test_windows_split_at_each_restart_and_count_failures_by_class_and_status():
    trace = (steady("sync", 0, 60, step=0.5) + steady("send", 0.25, 60, step=0.5))
    # Redis at 10: two sends fail; main at 30: everything 502 for 5 s.
    for r in trace:
        if r[0] == "send" and 10 <= r[1] < 11:
            r[3] = 500
        if 30 <= r[1] < 35:
            r[3] = 502
    trace.append(["sync", 31.0, 31.5, 0])
    trace.append(["send", 5.0, 5.1, -1])  # before any restart
    ws = windows(trace, [Restart("main", "m.service", 30.0, 8.0), Restart("Redis", "r.service", 10.0, 0.2)],
                 end=60.0)
    redis, main = ws
    assert (redis.restart.name, redis.end, main.end) == ("Redis", 30.0, 60.0)
    assert redis.failures == {"send 500": 2}
    assert redis.failed == 2 and redis.requests == 80
    # The sends due at 10.25 and 10.75 failed; the next one, due 11.25, was answered at 11.375.
    assert redis.recovered_s == 1.375
    assert redis.recovered_by_class["sync"] == 0.125
    assert (redis.failing_from_s, redis.failing_until_s) == (0.375, 0.875)
    assert main.failures == {"sync 502": 10, "send 502": 10, "sync no answer": 1}
    # The last failed send was due at 34.75; the next, due 35.25, was answered at 35.375.
    assert main.recovered_s == 5.375
    assert (main.failing_from_s, main.failing_until_s) == (0.125, 4.875)
    # Sends due after the recovery and answered 200 within the window: due 35.75 .. 59.75.
    assert main.sends_ok_after == 49
    assert main.slowest_ok_s == 0.125
    assert before(trace, [Restart("Redis", "r.service", 10.0, 0.2)]) == {"requests": 41, "failed": 1}
    text = table(ws)
    assert ("| Redis (`r.service`) | 0.2 | 80 | 2 | send 500 ×2 | 2 | send 500 ×2 | 0.4–0.9 | 0.1 "
            "| 1.4 | send | - |") in text
    assert "| main (`m.service`) | 8.0 | 121 | 21 | " in text and "sync 502 ×10" in text


def test_a_window_that_never_recovers_says_so_and_names_the_class():
    trace = steady("sync", 0, 40) + steady("send", 0, 10) + steady("send", 10, 40, status=502)
    (w,) = windows(trace, [Restart("PostgreSQL", "p.service", 10.0, 1.0)], end=40.0)
    assert w.recovered_s is None and w.recovered_by_class["send"] is None
    assert w.sends_ok_after == 0
    assert "| not recovered | send | - |" in table([w])


def test_unit_changes_name_the_restarts_a_process_was_replaced_in():
    def st(pid: str, n: str = "0", active: str = "active") -> dict[str, str]:
        return {"ActiveState": active, "SubState": "running", "MainPID": pid, "NRestarts": n}
    w = "matrix-synapse-worker@sync-1.service"
    snaps = [{"restart": "Redis", "before": {w: st("10")}, "after": {w: st("10")}},
             {"restart": "main", "before": {w: st("10")}, "after": {w: st("11")}}]
    assert unit_changes(snaps, {w: st("11", "2")}) == {
        w: {"active": True, "state": "running", "pid_changed_with": ["main"], "systemd_restarts": 2}}
    assert unit_changes(snaps, {w: st("0", active="failed")})[w]["active"] is False


def test_problems_name_what_broke_the_promise():
    good = {"windows": [{"name": "Redis", "recovered_s": 2.0, "recovered_by_class": {}}],
            "settled": {"healthy": True, "failed_units": [], "detail": ""},
            "units": {"a.service": {"active": True}}, "verify": {"missing": []}}
    assert problems(good, bound_s=120) == []
    bad = {**good, "windows": [{"name": "main", "recovered_s": None, "recovered_by_class": {"sync": None}}],
           "units": {"a.service": {"active": False}},
           "verify": {"missing": [["@u:x", "!r:x", "$e"]]}}
    found = problems(bad, bound_s=120)
    assert len(found) == 3
    assert found[0].startswith("main: not every class answered 200 within 120 s")
    assert "a.service" in found[1] and "$e" in found[2]
    assert problems({**good, "windows": [{"name": "PostgreSQL", "recovered_s": 130.0,
                                          "recovered_by_class": {}}]}, bound_s=120)


def test_log_summary_counts_warnings_and_errors_with_numbers_folded():
    text = "\n".join([
        "2026-12-06 04:24:01,001 - synapse.replication.http._base - 330 - WARNING - PUT-12 - "
        "send_events request connection failed; retrying in 1s: ConnectError",
        "2026-12-06 04:24:02,001 - synapse.replication.http._base - 330 - WARNING - PUT-13 - "
        "send_events request connection failed; retrying in 2s: ConnectError",
        "2026-12-06 04:24:02,500 - synapse.storage.txn - 120 - INFO - sync-1 - [TXN START] {x}",
        "2026-12-06 04:24:03,000 - synapse.http.server - 130 - ERROR - GET-7 - Failed handle request "
        "via 'SyncRestServlet': <XForwardedForRequest at 0x7f method='GET' uri='/sync?since=s1_2'",
        "  Traceback (most recent call last):",
    ])
    assert log_summary(text) == [
        [2, "WARNING", "synapse.replication.http._base",
         "send_events request connection failed; retrying in Ns: ConnectError"],
        [1, "ERROR", "synapse.http.server", "Failed handle request via 'SyncRestServlet': <request>"]]


def test_a_429_the_client_retried_fails_at_the_proxy_only():
    # [class, due, answered, status the client saw, the proxy's first status, attempts]
    trace = [r + [200, 1] for r in steady("sync", 0, 20)]
    trace += [["send", 10.5, 13.6, 200, 429, 2], ["send", 10.6, 13.7, 502, 502, 1]]
    (w,) = windows(trace, [Restart("main", "m.service", 10.0, 3.0)], end=20.0)
    w.serving_s = 4.25
    assert (w.failed, w.failures) == (1, {"send 502": 1})
    assert (w.proxy_failed, w.proxy_failures) == (2, {"send 429": 1, "send 502": 1})
    assert w.to_json()["serving_s"] == 4.25
    assert "| 1 | send 502 ×1 | 2 | send 429 ×1, send 502 ×1 |" in table([w])
    assert table([w]).endswith("| 4.2 |") or table([w]).endswith("| 4.3 |")
