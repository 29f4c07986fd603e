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


# --- after a Synapse upgrade (system/upgrade.py) ----------------------------------------

from matrix_synapse_workers.core import paths  # noqa: E402
from matrix_synapse_workers.system import upgrade  # noqa: E402


class UpgradeSystemd(RecordingSystemd):
    def __init__(self, started):
        super().__init__()
        self.started = dict(started)

    def is_active(self, unit):
        return unit in self.started

    def started_at(self, unit):
        return self.started.get(unit)

    def restart(self, *units):
        for unit in units:
            self.started[unit] = 1000 + len(self.calls)
        return super().restart(*units)

    def queued(self, prefix):
        return []


def _upgraded_root(tmp_path, names, version="1.2.0"):
    for name in names:
        (tmp_path / paths.WORKERS_DIR).mkdir(parents=True, exist_ok=True)
        (tmp_path / paths.WORKERS_DIR / f"{name}.yaml").write_text("worker_app: x\n")
    (tmp_path / f"opt/venvs/matrix-synapse/lib/python3.11/site-packages/matrix_synapse-{version}.dist-info"
     ).mkdir(parents=True)
    return tmp_path


def _fake_health(monkeypatch, main_version):
    waited = []
    monkeypatch.setattr(rolling, "health", lambda where: rolling.Health(True, f"Synapse/{main_version}"))
    monkeypatch.setattr(rolling, "wait_healthy", lambda name, where, **kw: waited.append(name))
    return waited


def test_after_the_postinst_restarted_everything_the_trigger_restarts_nothing(tmp_path, monkeypatch):
    root = _upgraded_root(tmp_path, ["sync-1", "typing-1"])
    waited = _fake_health(monkeypatch, "1.2.0")
    systemd = UpgradeSystemd({"matrix-synapse.service": 100, "matrix-synapse-worker@sync-1.service": 120,
                              "matrix-synapse-worker@typing-1.service": 110})
    assert upgrade.restart_in_order(root, systemd)
    assert systemd.calls == []
    assert waited == ["main", "sync-1", "typing-1"]


def test_main_on_the_old_version_restarts_first_then_workers_it_did_not_take_along(tmp_path, monkeypatch):
    root = _upgraded_root(tmp_path, ["client-1", "events-1", "pusher-1", "sync-1"])
    _fake_health(monkeypatch, "1.1.0")
    # pusher-1 had failed (not running); the others ran before the upgrade.
    systemd = UpgradeSystemd({"matrix-synapse.service": 100, "matrix-synapse-worker@client-1.service": 50,
                              "matrix-synapse-worker@events-1.service": 50,
                              "matrix-synapse-worker@sync-1.service": 50})
    upgrade.restart_in_order(root, systemd)
    # Main's restart restarted its running workers (PartOf=: the fake leaves their times
    # as they were, so here they count as old and restart in upgrade order).
    assert [c[1] for c in systemd.calls] == [
        ("matrix-synapse.service",), ("matrix-synapse-worker@events-1.service",),
        ("matrix-synapse-worker@pusher-1.service",), ("matrix-synapse-worker@client-1.service",),
        ("matrix-synapse-worker@sync-1.service",)]


def test_workers_started_after_main_are_not_restarted_again(tmp_path, monkeypatch):
    root = _upgraded_root(tmp_path, ["sync-1", "sync-2"])
    _fake_health(monkeypatch, "1.2.0")
    systemd = UpgradeSystemd({"matrix-synapse.service": 100, "matrix-synapse-worker@sync-1.service": 90,
                              "matrix-synapse-worker@sync-2.service": 130})
    upgrade.restart_in_order(root, systemd)
    assert systemd.calls == [("restart", ("matrix-synapse-worker@sync-1.service",))]


def test_no_workers_no_restart(tmp_path):
    assert not upgrade.restart_in_order(tmp_path, UpgradeSystemd({}))


# --- the start gate (system/startgate.py) -------------------------------------------------

from matrix_synapse_workers.render.sandbox import GATE_COMMAND  # noqa: E402
from matrix_synapse_workers.system import startgate  # noqa: E402


def test_gate_passes_once_main_answers_as_the_installed_version(monkeypatch):
    answers = iter([rolling.Health(False, "connection refused"), rolling.Health(True, "Synapse/1.1.0"),
                    rolling.Health(True, "Synapse/1.2.0")])
    monkeypatch.setattr(startgate, "health", lambda where: next(answers))
    monkeypatch.setattr(startgate.time, "sleep", lambda s: None)
    assert startgate.wait_for_main("/run/x.sock", "1.2.0") is None


def test_gate_gives_up_after_its_bound_saying_why(monkeypatch):
    monkeypatch.setattr(startgate, "health", lambda where: rolling.Health(True, "Synapse/1.1.0"))
    monkeypatch.setattr(startgate.time, "sleep", lambda s: None)
    problem = startgate.wait_for_main("/run/x.sock", "1.2.0", bound=0)
    assert "still runs Synapse/1.1.0" in problem and "Synapse/1.2.0" in problem


def test_gate_command_runs_the_module():
    assert GATE_COMMAND.endswith("-m matrix_synapse_workers.system.startgate")
    assert startgate.main(["startgate"]) == 2


def test_the_trigger_waits_for_starts_in_progress_before_deciding(tmp_path, monkeypatch):
    """Right after the postinst's restart of main the workers are still starting: not restarted twice."""
    root = _upgraded_root(tmp_path, ["sync-1"])
    _fake_health(monkeypatch, "1.2.0")
    jobs = [["matrix-synapse-worker@sync-1.service"]] * 3

    class Starting(UpgradeSystemd):
        def queued(self, prefix):
            if jobs:
                jobs.pop()
                return ["matrix-synapse-worker@sync-1.service"]
            self.started["matrix-synapse-worker@sync-1.service"] = 200  # up, after main
            return []

    monkeypatch.setattr(upgrade.time, "sleep", lambda s: None)
    systemd = Starting({"matrix-synapse.service": 100})
    upgrade.restart_in_order(root, systemd)
    assert systemd.calls == []
