"""The restart benchmark's report (bench/restarts.py): scenarios, and before beside after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench import restarts  # noqa: E402


def window(name: str, failed: int, proxy: int, recovered: float | None, serving: float | None) -> dict:
    return {"name": name, "failed": failed, "proxy_failed": proxy, "recovered_s": recovered,
            "serving_s": serving}


def test_the_booted_test_makes_every_scenario_but_the_upgrade():
    assert set(restarts.TESTED) == set(restarts.SCENARIOS) - {"upgrade"}
    assert restarts.Plan(rate=1.0, lead_s=5, quiet_s=10, tail_s=5,
                         scenarios=restarts.TESTED).duration_s == 5 + 10 * 5 + 5


def test_side_by_side_puts_before_and_after_in_one_row_per_scenario():
    before = {"windows": [window("main", 148, 148, 7.8, None)], "verify": {"missing": []}}
    after = {"windows": [window("main", 0, 40, 9.1, 8.0)], "verify": {"missing": []}}
    text = restarts.side_by_side(before, after)
    assert "| main | 148 → 0 | 148 → 40 | 7.8 → 9.1 | never → 8.0 | - |" in text
    assert text.endswith("| 0 → 0 |")


def test_an_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="unknown scenario 'reboot'"):
        restarts.act(None, "reboot", restarts.Steps())  # type: ignore[arg-type]
