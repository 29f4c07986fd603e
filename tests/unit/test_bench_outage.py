"""bench/outage.py: the outage figures docs/crash-safety.md states, and the verdict scripts/bench-outage gives."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench.outage import STATED, judge  # noqa: E402


def test_every_figure_must_be_met_and_measured():
    assert judge({"uninterrupted": [2.6, STATED["uninterrupted"]], "killed": [STATED["killed"]]})[0]
    assert not judge({"uninterrupted": [STATED["uninterrupted"] + 0.1], "killed": [1.0]})[0]
    assert not judge({"uninterrupted": [1.0], "killed": []})[0]


def test_the_stated_figures_are_the_documented_ones():
    """docs/crash-safety.md and the benchmark state the same bounds: a change to one is a change
    to both."""
    readme = (REPO / "docs/crash-safety.md").read_text(encoding="utf-8")
    for bound in STATED.values():
        assert f"{bound} s" in readme or f"–{bound} s" in readme or f"-{bound} s" in readme, bound
