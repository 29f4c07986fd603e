"""bench/soak.py: the soak's summary and report from recorded samples (no container)."""

from __future__ import annotations

import doctest
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench import soak  # noqa: E402

META = {"date": "2026-12-08 01:00", "nproc": 2, "cpu_model": "x", "ram_gib": 24.0, "synapse": "1.163.2",
        "package": "matrix-synapse-workers_0.1_all.deb", "git": "abc",
        "load": {"cores": 2, "mix": "sync:60,send:20,messages:10,profile:10", "users": 50, "rooms": 10}}


def got(totals, budget=600):
    samples = [{"t_s": 30.0 * i, "total_mib": t, "processes": {"main": t / 2, "sync-1": t / 2}}
               for i, t in enumerate(totals)]
    return {"label": "preset minimal, jemalloc", "workers": ["sync-1"], "share": 0.5, "capacity": 90.0,
            "rate": 45.0, "minutes": 10, "outside_cores": 0.01, "samples": samples,
            "budget": {"budget_mib": budget, "source": "set", "enforced": True},
            "load": {"requests_per_s": 44.9, "errors": 0,
                     "classes": {"sync": {"count": 100, "errors": 0, "p50_ms": 10.0, "p95_ms": 40.0,
                                          "p99_ms": 80.0, "max_ms": 90.0}}}}


def test_the_report_gives_max_and_final_against_the_budget():
    text = soak.markdown(got([300.0, 420.0, 400.0]), META)
    assert "first 300 MiB, maximum 420 MiB, final 400 MiB: within the budget of 600 MiB" in text
    assert "| sync | 100 | 10 | 40 | 80 | 0 |" in text
    assert "ABOVE the budget of 400 MiB" in soak.markdown(got([300.0, 420.0], budget=400), META)


def test_samples_every_interval_until_the_loop_ends(monkeypatch):
    monkeypatch.setattr(soak, "synapse_rss", lambda pid: {"main": 150.0, "sync-1": 140.0})
    done = threading.Event()
    timer = threading.Timer(0.25, done.set)
    timer.start()
    samples = soak.sample_until(done, 1, 0.0, every=0.1)
    assert len(samples) >= 3 and samples[-1]["total_mib"] == 290.0


def test_examples_in_docstrings():
    assert doctest.testmod(soak).failed == 0
