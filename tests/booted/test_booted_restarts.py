"""Restarts under load (issues 16 and 25): clients notice nothing, nothing is lost.

One container from the benchmark's layers (bench/stage.py, the same as
scripts/bench --restarts): the package with two sync workers, a client
reader and an event persister, nginx in front, a light open-loop load
(bench/loadgen.py --trace, retrying a 429 after its retry_after_ms as
Element and matrix-nio do, never a 500 or 502) during which
bench/restarts.py makes, in turn, `systemctl restart` of
redis-server@matrix-synapse, postgresql and matrix-synapse, then a
dpkg-reconfigure adding a second client worker and one removing it, and
never touches a worker by hand.  The tests share that one run and assert
the goals of issue 25: no request failed as the client saw it, and no
message lost.  Timings are printed and go into docs/restarts.md from
scripts/bench --restarts, not asserted beyond a generous bound.  (The
Synapse upgrade scenario needs a second stand-in install: the benchmark's.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from booted_config import REPO
from harness import Container

sys.path.insert(0, str(REPO))
from bench import restarts, runner  # noqa: E402

#: Seconds within which every endpoint class must answer 200 again after each restart.
BOUND_S = 120.0
PLAN = restarts.Plan(rate=8.0, lead_s=8.0, quiet_s=25.0, tail_s=20.0, settle_s=BOUND_S, verify_s=60.0,
                     scenarios=restarts.TESTED)
LOAD = runner.Load(users=12, rooms=4, duration_s=PLAN.duration_s, warmup_s=0.0, max_requests=1_000_000,
                   mix=PLAN.mix, cores=os.cpu_count() or 1)


@pytest.fixture(scope="module")
def report(synapse_root: Path, package_deb: Path) -> dict[str, Any]:
    lines: list[str] = []
    with Container(synapse_root, name="restarts") as c:
        workers = restarts.prepare(c, package_deb)
        runner.setup_users(c, LOAD)
        got = restarts.run(c, workers, PLAN, runner.SETUP_JSON, lines.append)
    print("\n".join(lines), got["table"], json.dumps(got["log_notes"], indent=1), sep="\n")
    return got


def windows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in report["windows"]}


@pytest.mark.parametrize("name", ["main", "Redis"])
def test_a_restart_fails_no_request_as_the_client_sees_it(report: dict[str, Any], name: str) -> None:
    w = windows(report)[name]
    assert w["failed"] == 0, (w["failures"], w["proxy_failures"], report["error_samples"][:10])


def test_a_postgresql_restart_fails_only_what_synapse_itself_answers_500(report: dict[str, Any]) -> None:
    """Not yet the goal: while PostgreSQL restarts, Synapse answers the requests whose database
    connection broke with its own 500 (M_UNKNOWN), which the proxy passes on (turning it into a
    429 would also hide every real 500).  The proxy adds no failure of its own, and nothing is
    lost (below)."""
    w = windows(report)["PostgreSQL"]
    assert all(key.endswith(" 500") for key in w["failures"]), w["failures"]
    assert w["failing_until_s"] is None or w["failing_until_s"] < 30.0, w


@pytest.mark.parametrize("name", ["reconfigure +client", "reconfigure -client"])
def test_a_reconfigure_of_stateless_workers_fails_no_request(report: dict[str, Any], name: str) -> None:
    """Adding or removing a client worker restarts no other process (rolling restarts, when
    a change touches running stateless workers, keep this at 0 too)."""
    w = windows(report)[name]
    assert w["failed"] == 0, (w["failures"], w["proxy_failures"], report["error_samples"][:10])


def test_every_restart_recovers_without_a_step_on_any_worker(report: dict[str, Any]) -> None:
    assert [w["name"] for w in report["windows"]] == list(restarts.TESTED)
    for w in report["windows"]:
        assert w["recovered_s"] is not None and w["recovered_s"] <= BOUND_S, w
        # Each class answered before the restart too (the load reached every class).
        assert set(w["recovered_by_class"]) == {"sync", "send", "messages", "profile"}, w
    assert report["baseline"]["requests"] > 0 and report["baseline"]["failed"] == 0, report["baseline"]


def test_every_unit_is_active_and_every_process_back_on_redis(report: dict[str, Any]) -> None:
    settled = report["settled"]
    assert settled["healthy"], settled
    assert settled["failed_units"] == [], settled
    assert settled["redis_clients"] >= settled["redis_clients_wanted"], settled
    assert all(u["active"] for u in report["units"].values()), report["units"]
    workers = [u for u in report["units"] if u.startswith("matrix-synapse-worker@")]
    assert len(workers) == 4, report["units"]
    # Restarting main restarts the workers with it (PartOf=matrix-synapse.service).
    for u in workers:
        assert "main" in report["units"][u]["pid_changed_with"], report["units"][u]


def test_every_send_answered_200_is_seen_by_every_member_of_its_room(report: dict[str, Any]) -> None:
    v = report["verify"]
    assert v["missing"] == [], v["missing"][:20]
    assert v["sends"] > 0 and v["checks"] >= v["sends"], v
    # Sends answered 200 after each restart's recovery are among them: loss after a restart
    # would show here.
    for w in report["windows"]:
        assert w["sends_ok_after"] > 0, w
