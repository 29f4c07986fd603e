"""The interleaved benchmark's pure parts: medians and spreads, the outside-load rule, the
open-loop schedule, busy CPU from /proc/stat, and the target verdicts (bench/)."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import compare, report  # noqa: E402
from bench.procs import TICKS, busy_s  # noqa: E402
from bench.stats import lateness_ms, open_loop_schedule, parse_mix  # noqa: E402


def test_spread_is_median_and_range_of_finite_values():
    s = compare.spread([1.3, 1.1, math.nan, 1.5])
    assert (s.median, s.low, s.high, s.n) == (1.3, 1.1, 1.5, 3)
    assert s.relative == pytest.approx(0.4 / 1.3)
    assert str(s) == "1.30 (range 1.10-1.50, n=3)"
    assert s.show("x") == "1.30x (range 1.10x-1.50x, n=3)"
    assert compare.spread([1.0, 2.0]).median == 1.5
    empty = compare.spread([])
    assert empty.n == 0 and math.isnan(empty.median) and str(empty) == "-"


def test_ratios_pair_runs_of_the_same_round_and_skip_missing_ones():
    assert compare.pair_ratios([40.0, 50.0, None, 0.0], [60.0, 55.0, 70.0, 10.0]) == [1.5, 1.1]
    assert compare.pair_ratios([], []) == []


def test_interleaved_order_runs_every_configuration_once_per_round():
    order = compare.interleaved_order(["single", "minimal"], 3)
    assert [c for _, c in order] == ["single", "minimal"] * 3
    assert [r for r, _ in order] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        compare.interleaved_order(["single"], 0)


def test_outside_load_rule():
    # 2 CPUs busy 80 s in 50 s, the container's own processes 77 s of it: 0.06 cores outside.
    assert compare.outside_cores(80.0, 77.0, 50.0) == pytest.approx(0.06)
    assert compare.outside_cores(70.0, 77.0, 50.0) == 0.0  # counters' rounding, never negative
    assert compare.outside_load_problem(0.06) is None
    assert compare.outside_load_problem(compare.MAX_OUTSIDE_CORES) is None
    problem = compare.outside_load_problem(0.31)
    assert problem and problem.startswith("outside load") and "0.31" in problem
    assert compare.outside_load_problem(0.31, limit=0.5) is None
    with pytest.raises(ValueError):
        compare.outside_cores(1.0, 1.0, 0.0)


def test_busy_counts_only_the_containers_cpus():
    user, sys_, idle = 100 * TICKS, 50 * TICKS, 1000 * TICKS
    stat = [f"cpu  {user * 2} 0 {sys_ * 2} {idle * 2} 0 0 0 0 0 0",
            f"cpu0 {user} 0 {sys_} {idle} 7 0 0 0 0 0",
            f"cpu1 {user} 0 {sys_} {idle} 0 0 0 0 0 0",
            "intr 12345", "ctxt 99"]
    assert busy_s(stat) == pytest.approx(300.0)
    assert busy_s(stat, cpus=1) == pytest.approx(150.0)  # iowait is not busy
    assert busy_s(stat, cpus=2) == pytest.approx(300.0)


def test_judge_gives_no_verdict_from_an_invalid_run():
    assert compare.judge(True, True) == "met"
    assert compare.judge(False, True) == "NOT met"
    assert compare.judge(False, False) == "invalid: outside load"


def test_open_loop_schedule_is_evenly_spaced_and_follows_the_mix():
    mix = parse_mix("sync:60,send:20,messages:10,profile:10")
    s = open_loop_schedule(20.0, 50.0, mix, seed=3)
    assert len(s) == 1000
    gaps = {round(b[0] - a[0], 9) for a, b in zip(s, s[1:])}
    assert gaps == {0.05}
    assert s[0][0] == 0.0 and s[-1][0] < 50.0
    counts = Counter(c for _, c in s)
    assert 540 <= counts["sync"] <= 660 and 60 <= counts["profile"] <= 140
    assert s == open_loop_schedule(20.0, 50.0, mix, seed=3)  # reproducible
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            open_loop_schedule(bad, 10.0, mix, seed=1)
    with pytest.raises(ValueError):
        open_loop_schedule(10.0, 0.0, mix, seed=1)


def test_lateness_never_negative():
    s = lateness_ms([1.0, 2.0, 3.0], [1.0, 1.999, 3.25])
    assert s.count == 3 and s.max_ms == pytest.approx(250.0) and s.p50_ms == 0.0


def _outcome(name: str, rnd: int, rps: float, mode: str = "closed", p99: float = 100.0,
             problems: tuple[str, ...] = (), rss: dict[str, float] | None = None) -> dict:
    classes = {c: {"p50_ms": p99 / 4, "p95_ms": p99 / 2, "p99_ms": p99} for c in
               ("sync", "send", "messages", "profile")}
    rss = rss or {"main": 150.0}
    cpu = {f"synapse:{k}": {"cpu_s": 30.0, "rss_mib": v, "processes": 1} for k, v in rss.items()}
    cpu["postgresql"] = {"cpu_s": 20.0, "rss_mib": 80.0, "processes": 9}
    return {"config": {"name": name, "label": name}, "mode": mode, "round": rnd,
            "problems": list(problems), "outside_cores": 0.01, "cpu": cpu,
            "load": {"requests_per_s": rps, "requests_ok": int(rps * 60), "elapsed_s": 60.0,
                     "classes": classes, "errors": 0}}


def test_targets_met_missed_and_invalid():
    rss = {"main": 140.0, "sync-1": 105.0}
    runs = [_outcome("single", 0, 40.0), _outcome("minimal", 0, 60.0, rss=rss),
            _outcome("single", 1, 50.0), _outcome("minimal", 1, 65.0, rss=rss),
            _outcome("single", 2, 45.0), _outcome("minimal", 2, 64.0, rss=rss),
            _outcome("single", 0, 36.0, "open 80%", p99=800.0),
            _outcome("minimal", 0, 36.0, "open 80%", p99=300.0)]
    t = report.interleaved_targets(runs, "minimal", 3)
    ratio = next(x for x in t if "requests/s" in x.name)
    assert ratio.verdict == "met" and ratio.measured.startswith("1.42")  # median of 1.5, 1.3, 1.42
    p99 = [x for x in t if "p99" in x.name]
    assert [x.verdict for x in p99] == ["met", "met"]  # 300/800 = 0.375
    mem = next(x for x in t if "RSS" in x.name)
    assert mem.verdict == "met" and "sync-1 105 MiB" in mem.measured and "main 140" in mem.measured

    busy = ("outside load: 0.40 cores busy outside the container during the run (limit 0.10)",)
    runs[1] = _outcome("minimal", 0, 90.0, problems=busy, rss={"main": 140.0, "sync-1": 130.0})
    targets = report.interleaved_targets(runs, "minimal", 3)
    assert targets[0].verdict == "invalid: outside load"
    mem = next(x for x in targets if "RSS" in x.name)
    assert mem.verdict == "NOT met"  # memory is judged even under outside load

    runs[0] = _outcome("single", 0, 80.0)
    runs[2] = _outcome("single", 1, 80.0)
    runs[4] = _outcome("single", 2, 80.0)
    runs[1] = _outcome("minimal", 0, 60.0, rss=rss)
    missed = report.interleaved_targets(runs, "minimal", 3)[0]
    assert missed.verdict == "NOT met" and "main" in missed.why  # where the CPU went


def test_interleaved_report_renders():
    runs = [_outcome("single", 0, 40.0), _outcome("minimal", 0, 60.0),
            _outcome("single", 0, 20.0, "open 50%"), _outcome("minimal", 0, 20.0, "open 50%")]
    meta = {"date": "d", "nproc": 2, "cpu_model": "cpu", "ram_gib": 24, "synapse": "1.163.2",
            "package": "p.deb", "git": "abc", "capacity": 40.0, "open_loads": ["50%"],
            "open_modes": ["open 50%"],
            "load": {"cores": 2, "users": 50, "rooms": 10, "warmup_s": 10, "duration_s": 60,
                     "mix": "sync:60", "max_outside_cores": 0.1}}
    text = report.interleaved_markdown(meta, runs, ["single", "minimal"], "minimal", 1)
    assert "1.50x (range 1.50x-1.50x, n=1)" in text
    assert "Open loop at 50%" in text and "| messages |" in text


def test_examples_in_docstrings():
    import doctest
    assert doctest.testmod(compare).failed == 0


def test_survey_targets_are_invalid_under_outside_load():
    busy = ("outside load: 1.04 cores busy outside the container during the run (limit 0.10)",)
    rows = report.targets([_outcome("single", 0, 40.0, problems=busy), _outcome("minimal", 0, 80.0)], "minimal")
    assert [v for _, _, v in rows] == ["invalid: outside load", "met", "invalid: outside load",
                                       "invalid: outside load"]
    rows = report.targets([_outcome("single", 0, 40.0), _outcome("minimal", 0, 50.0, p99=40.0)], "minimal")
    assert [v for _, _, v in rows] == ["NOT met", "met", "met", "met"]
