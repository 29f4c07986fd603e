"""Order and grouping of restarts (core/restarts.py) and acting on them (system/rolling.py)."""

import pytest

from matrix_synapse_workers.core.catalog import ROLES
from matrix_synapse_workers.core.errors import ApplyError
from matrix_synapse_workers.core.restarts import MAIN, Step, restart_steps, upgrade_steps
from matrix_synapse_workers.system import rolling


def test_stateless_flag_is_only_on_roles_that_hold_nothing_others_wait_on():
    stateless = {name for name, role in ROLES.items() if role.stateless}
    assert stateless == {"sync", "client", "federation_reader", "media"}
    for name in stateless:
        role = ROLES[name]
        assert role.stream is None and role.duty is None and not role.moves_together, name


def _roles(*names):
    return [(n, ROLES[n.rsplit("-", 1)[0].replace("-", "_")]) for n in names]


def test_only_stateless_workers_restart_one_at_a_time_in_plan_order():
    steps = restart_steps(_roles("sync-1", "sync-2", "client-1", "media-1"), main=False)
    assert steps == tuple(Step((n,), one_by_one=True) for n in ("sync-1", "sync-2", "client-1", "media-1"))


def test_stateful_workers_restart_together_writers_first_before_the_rolling_ones():
    steps = restart_steps(_roles("sync-1", "pusher-1", "events-1", "sync-2", "typing-1"), main=False)
    assert steps[0] == Step(("events-1", "typing-1", "pusher-1"))
    assert [s.names for s in steps[1:]] == [("sync-1",), ("sync-2",)]
    assert all(s.one_by_one for s in steps[1:])


def test_with_main_everything_goes_in_one_step_main_then_writers():
    steps = restart_steps(_roles("sync-1", "federation-sender-1", "events-1", "events-2"), main=True)
    assert steps == (Step((MAIN, "events-1", "events-2", "sync-1", "federation-sender-1")),)
    assert steps[0].with_main


def test_nothing_to_restart_is_no_step():
    assert restart_steps([], main=False) == ()


def test_upgrade_main_alone_first_then_writers_then_stateful_then_rolling():
    steps = upgrade_steps(_roles("sync-1", "pusher-1", "events-1", "client-1", "typing-1"), main=True)
    assert [s.names for s in steps] == [(MAIN,), ("events-1", "typing-1"), ("pusher-1",),
                                        ("sync-1",), ("client-1",)]
    assert [s.one_by_one for s in steps] == [False, False, False, True, True]


def test_upgrade_with_main_already_new_restarts_only_the_old_workers():
    assert [s.names for s in upgrade_steps(_roles("sync-1"), main=False)] == [("sync-1",)]


class RecordingSystemd:
    running = True
    dry_run = False

    def __init__(self):
        self.calls = []

    def restart(self, *units):
        self.calls.append(("restart", units))
        return bool(units)

    def start(self, *units):
        self.calls.append(("start", units))
        return bool(units)


def test_each_rolling_step_waits_for_health_before_the_next():
    systemd, events = RecordingSystemd(), []
    steps = restart_steps(_roles("sync-1", "sync-2"), main=False)

    def wait(name, where):
        events.append(("healthy", name, where))
        systemd.calls.append(("waited", name))

    rolling.run_steps(steps, systemd, {"sync-1": "/s1", "sync-2": "/s2"}, wait=wait)
    assert systemd.calls == [("restart", ("matrix-synapse-worker@sync-1.service",)), ("waited", "sync-1"),
                             ("restart", ("matrix-synapse-worker@sync-2.service",)), ("waited", "sync-2")]


def test_a_step_with_main_restarts_main_and_starts_the_rest():
    systemd = RecordingSystemd()
    rolling.run_steps(restart_steps(_roles("sync-1"), main=True), systemd, {}, wait=lambda *a: None)
    assert systemd.calls == [("restart", ("matrix-synapse.service",)),
                             ("start", ("matrix-synapse-worker@sync-1.service",))]


def test_a_worker_that_does_not_come_back_stops_the_run_naming_it():
    now = [0.0]

    def clock():
        return now[0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(ApplyError) as error:
        rolling.wait_healthy("sync-2", "/run/x.sock", bound=1.0, clock=clock, sleep=sleep,
                             probe=lambda where: rolling.Health(False, "connection refused"))
    text = str(error.value)
    assert "sync-2 did not answer /health within 1 s" in text
    assert "connection refused" in text and "matrix-synapse-worker@sync-2.service" in text
    assert now[0] <= 1.0 + rolling.POLL


def test_waiting_for_a_version_ignores_a_process_still_on_the_old_one():
    answers = iter([rolling.Health(True, "Synapse/1.1.0"), rolling.Health(True, "Synapse/1.2.0")])
    rolling.wait_healthy(MAIN, "/m", version="1.2.0", probe=lambda where: next(answers),
                         sleep=lambda s: None)


def test_health_over_a_real_socket(tmp_path):
    """Nothing listening: refused or missing, never an exception."""
    assert not rolling.health(str(tmp_path / "none.sock")).ok
