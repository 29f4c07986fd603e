"""Taking over a hand-made worker setup: recognition and mapping (core/adoption.py, read by
system/handmade.py), the decision apply makes of it (dry run: nothing touched), and the
moves (system/takeover.py) with their record for a killed run.

The hosts are built file by file as the worker guide and Synapse's docs have admins do it
(tests/support/handmade.py); tests/booted/test_booted_adoption.py takes such hosts over
with the real package, systemd, Redis, nginx and Synapse.
"""

import io
import os
from pathlib import Path, PurePosixPath

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers import apply
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.adoption import (ADOPTED_DIR, ADOPTING_RECORD, HandMade, HandMadeWorker,
                                                  adopt, guide_unit, UnitCopy)
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import RedisMode, Settings
from matrix_synapse_workers.system import accounts, statoverride, takeover
from matrix_synapse_workers.system.handmade import read_hand_made
from matrix_synapse_workers.system.hostfacts import read_host_facts
from support import handmade

WORKERS = PurePosixPath("etc/matrix-synapse/workers")


@pytest.fixture(autouse=True)
def system_accounts(monkeypatch):
    monkeypatch.setattr(accounts, "user_exists", lambda name: name in (paths.SYNAPSE_USER, "www-data"))
    monkeypatch.setattr(statoverride, "get", lambda path: None)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def guide_root(tmp_path: Path) -> Path:
    base = homeserver(tmp_path)
    config = dict(base, listeners=[*base["listeners"], handmade.GUIDE_REPLICATION],
                  **handmade.guide_homeserver_additions())
    root = make_root(tmp_path, config)
    handmade.guide_files(root, log_config={"version": 1})
    return root


def docs_root(tmp_path: Path) -> Path:
    base = homeserver(tmp_path)
    config = dict(base, listeners=[*base["listeners"], handmade.DOCS_REPLICATION],
                  **handmade.docs_homeserver_additions())
    root = make_root(tmp_path, config)
    handmade.docs_files(root)
    return root


def worker(name: str, **config) -> HandMadeWorker:
    return HandMadeWorker(WORKERS / f"{name}.yaml", {"worker_name": name, **config})


def test_the_guide_s_host_maps_to_the_same_workers_and_keeps_its_redis(tmp_path):
    root = guide_root(tmp_path)
    decision = adopt(read_hand_made(root))
    assert decision.blockers == ()
    assert dict(decision.counts) == {"sync": 1, "client": 1}
    assert {w.name: w.roles for w in decision.workers} == {"clientworker1": ("client",),
                                                          "syncworker1": ("sync",)}
    assert decision.redis.mode is RedisMode.GUIDE and str(decision.redis.socket) == "/run/redis/redis-server.sock"
    moved = {str(p) for p in decision.moves}
    assert moved == {
        "etc/matrix-synapse/workers/clientworker1.yaml", "etc/matrix-synapse/workers/syncworker1.yaml",
        "etc/matrix-synapse/logconf.d/clientworker1.yaml", "etc/matrix-synapse/logconf.d/syncworker1.yaml",
        "etc/matrix-synapse/conf.d/redis.yaml",
        "etc/systemd/system/matrix-synapse-worker@.service", "etc/systemd/system/matrix-synapse.target",
        "etc/systemd/system/multi-user.target.wants/matrix-synapse.target",
        "etc/systemd/system/matrix-synapse.target.wants/matrix-synapse-worker@clientworker1.service",
        "etc/systemd/system/matrix-synapse.target.wants/matrix-synapse-worker@syncworker1.service"}
    assert decision.stop == ("matrix-synapse-worker@clientworker1.service",
                             "matrix-synapse-worker@syncworker1.service")
    notes = " ".join(decision.notes)
    assert "listener 2 of your Synapse configuration (replication on /run/matrix-synapse/replication.sock)" in notes
    assert "instance_map of your Synapse configuration is overridden" in notes
    assert "/run/matrix-synapse/inbound_clientworker1.sock" in notes and "snippets" in notes


def test_the_guide_s_replication_listener_is_replaced_not_refused(tmp_path):
    root = guide_root(tmp_path)
    facts = read_host_facts(root)
    assert [l.get("port") for l in facts.listeners] == [8008]
    before = tree(root)
    report = apply.apply_host(root, select(workers="events:2"), Settings(), dry_run=True, out=io.StringIO())
    assert report.plan.counts() == {"sync": 1, "client": 1}
    assert report.settings.redis.mode is RedisMode.GUIDE
    # Ours in conf.d/redis.yaml; the admin's goes aside, not beside it as .dpkg-old.
    assert report.changes.set_aside == ()
    assert str(paths.REDIS_CONF_D) in {str(f.path) for f in report.changes.write}
    assert tree(root) == before


def test_the_synapse_docs_host_tcp_replication_and_a_legacy_sender(tmp_path):
    root = docs_root(tmp_path)
    decision = adopt(read_hand_made(root))
    assert decision.blockers == ()
    assert dict(decision.counts) == {"client": 1, "federation_sender": 1}
    assert {w.name: w.roles for w in decision.workers} == {"generic_worker1": ("client",),
                                                          "federation_sender1": ("federation_sender",)}
    assert decision.redis.mode is RedisMode.EXISTING and decision.redis.describe() == "localhost:6379"
    assert "replication on port 9093" in " ".join(decision.notes)
    assert "port 8083" in " ".join(decision.notes)
    # The unit copies keep the guides' content under another Description=: retired.
    assert PurePosixPath("etc/systemd/system/matrix-synapse.target") in decision.moves
    facts = read_host_facts(root)
    assert all(l.get("port") != 9093 for l in facts.listeners)


@pytest.mark.parametrize("app, role", [
    ("synapse.app.pusher", "pusher"), ("synapse.app.media_repository", "media"),
    ("synapse.app.user_dir", "user_dir"), ("synapse.app.appservice", "appservice"),
    ("synapse.app.synchrotron", "sync"), ("synapse.app.client_reader", "client"),
    ("synapse.app.federation_reader", "federation_reader"), ("synapse.app.frontend_proxy", "client"),
    ("synapse.app.event_creator", "client"), ("synapse.app.federation_sender", "federation_sender")])
def test_legacy_worker_apps_map_to_their_roles(app, role):
    decision = adopt(HandMade(workers=(worker("w1", worker_app=app),)))
    assert decision.blockers == () and dict(decision.counts) == {role: 1}


def test_duties_in_the_shared_config_and_stream_writers_map_to_roles():
    shared = {"federation_sender_instances": ["fs1", "fs2"], "pusher_instances": ["p1"],
              "run_background_tasks_on": "bg", "stream_writers": {"events": ["ev1", "ev2"],
                                                                  "typing": "ev1"},
              "media_instance_running_background_jobs": "m1"}
    generic = "synapse.app.generic_worker"
    client = [{"type": "http", "port": 8085, "resources": [{"names": ["client"]}]}]
    found = HandMade(workers=tuple(worker(n, worker_app=generic) for n in ("fs1", "fs2", "p1", "bg", "ev2"))
                     + (worker("ev1", worker_app=generic, worker_listeners=client),
                        worker("m1", worker_app=generic, enable_media_repo=True)), shared=shared)
    decision = adopt(found)
    assert decision.blockers == ()
    roles = {w.name: w.roles for w in decision.workers}
    # ev1 writes events and typing; its client listener is typing's own.
    assert roles["ev1"] == ("events", "typing") and roles["m1"] == ("media",)
    assert dict(decision.counts) == {"media": 1, "federation_sender": 2, "pusher": 1, "background": 1,
                                     "events": 2, "typing": 1}


def test_what_cannot_be_mapped_is_refused_with_every_blocker_at_once():
    shared = {"run_background_tasks_on": "bg1", "stream_writers": {"nonsense": ["bg1"]},
              "notify_appservices": False}
    found = HandMade(workers=(
        worker("odd", worker_app="synapse.app.fancy_new_thing"),
        worker("bg1", worker_app="synapse.app.generic_worker"),
        worker("bg2", worker_app="synapse.app.generic_worker", run_background_tasks_on="bg2"),
        worker("as1", worker_app="synapse.app.appservice"),
        worker("idle", worker_app="synapse.app.generic_worker"),
        HandMadeWorker(WORKERS / "broken.yaml", None, "is not valid YAML (x)")), shared=shared)
    blockers = " | ".join(adopt(found).blockers)
    for expected in ("'synapse.app.fancy_new_thing' is not a worker this package knows",
                     "stream_writers.nonsense", "bg1, bg2 each take the 'background' duty",
                     "remove notify_appservices", "worker 'idle' serves no client",
                     "broken.yaml: is not valid YAML"):
        assert expected in blockers


def test_an_unmappable_host_is_refused_up_front_and_nothing_changes(tmp_path):
    root = guide_root(tmp_path)
    (root / WORKERS / "odd.yaml").write_text("worker_app: synapse.app.fancy_new_thing\nworker_name: odd\n")
    (root / "etc/matrix-synapse/conf.d/redis.yaml").write_text(
        "redis: {enabled: true, path: /run/redis/redis-server.sock, dbid: 2}\n")
    before = tree(root)
    with pytest.raises(HostConfigError) as caught:
        apply.apply_host(root, select(workers="sync"), Settings(), out=io.StringIO())
    message = str(caught.value)
    assert "odd.yaml" in message and "dbid" in message and "cannot take it over" in message
    assert tree(root) == before


def test_declining_refuses_while_a_hand_made_setup_is_there(tmp_path):
    root = guide_root(tmp_path)
    before = tree(root)
    with pytest.raises(HostConfigError, match="declined"):
        apply.apply_host(root, select(workers="sync"), Settings(), out=io.StringIO(), adopt=False)
    assert tree(root) == before


def test_an_admin_s_changed_unit_copy_is_kept_and_said():
    changed = handmade.GUIDE_TEMPLATE.replace("RestartSec=3", "RestartSec=10\nMemoryMax=2G")
    renamed = handmade.GUIDE_TEMPLATE.replace("Description=Synapse %i", "Description=My worker %i")
    template = PurePosixPath("etc/systemd/system/matrix-synapse-worker@.service")
    assert guide_unit(UnitCopy(template, renamed)) and not guide_unit(UnitCopy(template, changed))
    decision = adopt(HandMade(workers=(worker("w", worker_app="synapse.app.pusher"),),
                              unit_copies=(UnitCopy(template, changed),)))
    assert decision.kept_units == (template,) and template not in decision.moves


class QuietSystemd:
    running = False

    def __init__(self):
        self.done = []

    def is_active(self, unit):
        return False

    def stop(self, *units):
        self.done += [("stop", u) for u in units]

    def enable(self, unit):
        self.done.append(("enable", unit))


def test_moves_keep_every_file_below_the_take_over_directory_and_a_killed_run_resumes(tmp_path):
    root = guide_root(tmp_path)
    before = tree(root)
    decision, destination = takeover.decide(root, True)
    assert destination is None
    # A run killed after the record and the first move: the next finds the record.
    first = decision.moves[0]
    (root / ADOPTED_DIR / "x").mkdir(parents=True)
    takeover._record(root, decision, ADOPTED_DIR / "x")
    os.replace(root / first, root / ADOPTED_DIR / "x" / first.name)
    resumed, where = takeover.decide(root, True)
    assert where == ADOPTED_DIR / "x" and dict(resumed.counts) == dict(decision.counts)
    (root / ADOPTED_DIR / "x" / first.name).rename(root / first)
    systemd = QuietSystemd()
    done = takeover.retire(root, resumed, where, systemd)
    assert done == ADOPTED_DIR / "x" and ("enable", paths.TARGET_UNIT) in systemd.done
    after = tree(root)
    for path in decision.moves:
        assert str(path) not in after
        assert after[str(ADOPTED_DIR / "x" / path)] == before[str(path)]
    takeover.finish(root)
    assert not (root / ADOPTING_RECORD).exists()
    assert takeover.decide(root, True) is None  # nothing hand-made is left


def test_status_warns_about_a_kept_unit_copy_and_lists_the_take_over():
    from dataclasses import replace
    from matrix_synapse_workers.status import evaluate
    from test_status import healthy
    copy = "/etc/systemd/system/matrix-synapse-worker@.service"
    rows = evaluate(replace(healthy(), unit_copies=(copy,),
                            adopted=(("/etc/matrix-synapse/workers.hand-made/20261207T210000Z", 10),)))
    shadow = [r for r in rows if r.check == "unit copy"]
    assert [(r.subject, r.status) for r in shadow] == [(copy, "warn")]
    assert "daemon-reload" in shadow[0].advice
    kept = [r for r in rows if r.check == "take-over"]
    assert kept[0].status == "info" and "10 hand-made files" in kept[0].detail


def test_after_a_take_over_the_answers_say_what_it_deployed(tmp_path):
    """So that a later dpkg-reconfigure keeps the workers and the Redis found."""
    from matrix_synapse_workers.core.settings import parse_redis
    from matrix_synapse_workers.debconf import answers
    from test_maintscript import Engine, FakeDebconf, configure
    decision = adopt(HandMade(workers=(worker("s", worker_app="synapse.app.synchrotron"),
                                       worker("f", worker_app="synapse.app.federation_sender"),
                                       worker("g", worker_app="synapse.app.federation_sender"))))

    class Adopting(Engine):
        def apply_host(self, *args, **kw):
            report = super().apply_host(*args, **kw)
            report.adoption = decision
            report.settings = Settings(redis=parse_redis("127.0.0.1:6379"))
            return report

    db = FakeDebconf(interactive=False)
    assert configure(make_root(tmp_path), db, Adopting())[0] is None
    assert (db.values[answers.Q_PRESET], db.values[answers.Q_TYPES], db.values[answers.Q_COUNTS]) == \
        ("custom", "sync, federation_sender", "federation_sender:2")
    assert (db.values[answers.Q_REDIS], db.values[answers.Q_REDIS_LOCATION]) == ("existing", "127.0.0.1:6379")
    declined = FakeDebconf(interactive=False, hand_made="leave")
    engine = Engine()
    configure(make_root(tmp_path / "other"), declined, engine)
    assert engine.adopt_given == [False, False]


def test_only_the_guide_s_units_copied_keeps_the_answers_workers_and_retires_them(tmp_path):
    root = make_root(tmp_path)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/matrix-synapse-worker@.service").write_text(handmade.GUIDE_TEMPLATE)
    report = apply.apply_host(root, select(workers="sync:2"), Settings(), dry_run=True, out=io.StringIO())
    assert report.plan.counts() == {"sync": 2}
    assert report.adoption.moves == (PurePosixPath("etc/systemd/system/matrix-synapse-worker@.service"),)


def test_a_hand_made_worker_added_beside_the_package_s_comes_on_top(tmp_path):
    root = make_root(tmp_path)
    marker = "# Generated by matrix-synapse-workers 0.1. Do not edit.\n"
    (root / WORKERS).mkdir()
    for name in ("sync-1", "sync-2"):
        (root / WORKERS / f"{name}.yaml").write_text(marker + f"worker_name: {name}\n")
    (root / WORKERS / "mypusher.yaml").write_text("worker_app: synapse.app.pusher\nworker_name: mypusher\n")
    decision, _ = takeover.decide(root, True, ("mypusher", "sync-1", "sync-2"))
    assert dict(decision.counts) == {"sync": 2, "pusher": 1}
    assert decision.moves == (WORKERS / "mypusher.yaml",)


def test_a_file_of_ours_at_a_moved_path_is_never_moved_over_the_admin_s(tmp_path):
    """Killed after our conf.d/redis.yaml replaced the admin's (moved before): the next run
    leaves both where they are."""
    root = guide_root(tmp_path)
    decision, _ = takeover.decide(root, True)
    where = ADOPTED_DIR / "t"
    takeover.retire(root, decision, where, QuietSystemd())
    admin = (root / where / paths.REDIS_CONF_D).read_bytes()
    (root / paths.REDIS_CONF_D).write_text("# Generated by matrix-synapse-workers 0.1\nredis: {}\n")
    takeover.retire(root, decision, where, QuietSystemd())
    assert (root / where / paths.REDIS_CONF_D).read_bytes() == admin
    assert (root / paths.REDIS_CONF_D).read_text().startswith("# Generated")
