"""Which processes restart for which change: the pure change calculator."""

from pathlib import PurePosixPath

from hostroot import make_root
from matrix_synapse_workers.core.changes import OnDisk, compute_changes
from matrix_synapse_workers.cli import decide
from matrix_synapse_workers.system.hostfacts import read_host_facts
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.render.files import render
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import Settings, parse_redis


def deployed(tmp_path, spec, settings=Settings()):
    """The files on disk after a deployment of ``spec``."""
    root = make_root(tmp_path)
    desired = decide(root, None, spec, settings)
    return root, {f.path: OnDisk(f.content, f.mode) for f in desired.files}


def change_to(root, on_disk, spec, settings=Settings()):
    facts = read_host_facts(root)
    existing = tuple(p.stem for p in on_disk if p.parent == PurePosixPath("etc/matrix-synapse/workers"))
    plan = Plan(plan_workers(select(workers=spec), existing))
    return compute_changes(plan, render(plan, facts, settings), on_disk)


def test_first_deployment_starts_everything_and_restarts_main(tmp_path):
    root = make_root(tmp_path)
    changes = change_to(root, {}, "sync,typing")
    assert changes.start == ("sync-1", "typing-1") and changes.restart_main
    assert changes.restart_workers == () and changes.stop == ()


def test_same_plan_again_changes_nothing(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:2,client,typing,federation_sender:2,media")
    assert change_to(root, on_disk, "sync:2,client,typing,federation_sender:2,media").nothing


def test_adding_a_sync_worker_touches_nothing_else(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:2,client,typing,pusher")
    changes = change_to(root, on_disk, "sync:3,client,typing,pusher")
    assert changes.start == ("sync-3",)
    assert not changes.restart_main and changes.restart_workers == () and changes.stop == ()
    # The new socket joins the sync pool in nginx's upstreams; the locations stay.
    assert [str(f.path) for f in changes.write] == [
        "etc/matrix-synapse/workers/sync-3.yaml", "etc/matrix-synapse/worker-logs/sync-3.yaml",
        "etc/systemd/system/matrix-synapse-worker@sync-3.service.d/matrix-synapse-workers.conf",
        "etc/nginx/conf.d/matrix-synapse-workers.conf"]


def test_removing_workers_stops_them_and_removes_only_their_files(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:3,client:2")
    on_disk[PurePosixPath("etc/matrix-synapse/workers/admin-own.yaml")] = OnDisk("worker_app: x\n", 0o644)
    changes = change_to(root, on_disk, "sync,client:2")
    assert changes.stop == ("sync-2", "sync-3")
    assert {str(p) for p in changes.remove} == {
        f"etc/matrix-synapse/{d}/sync-{n}.yaml" for d in ("workers", "worker-logs") for n in (2, 3)} | {
        f"etc/systemd/system/matrix-synapse-worker@sync-{n}.service.d/matrix-synapse-workers.conf"
        for n in (2, 3)}
    assert not changes.restart_main and changes.restart_workers == ()


def test_a_new_pusher_restarts_main_and_other_pushers_only(tmp_path):
    root, on_disk = deployed(tmp_path, "sync,pusher")
    changes = change_to(root, on_disk, "sync,pusher:2")
    assert changes.restart_main and changes.start == ("pusher-2",)
    assert changes.restart_workers == ("pusher-1",)


def test_a_new_stream_writer_restarts_every_process(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:2,client")
    changes = change_to(root, on_disk, "sync:2,client,typing")
    assert changes.restart_main
    assert set(changes.restart_workers) == {"sync-1", "sync-2", "client-1"}
    assert changes.start == ("typing-1",)


def test_federation_senders_move_together(tmp_path):
    root, on_disk = deployed(tmp_path, "sync,federation_sender:2")
    changes = change_to(root, on_disk, "sync,federation_sender:3")
    assert set(changes.restart_workers) == {"federation-sender-1", "federation-sender-2"}
    assert "sync-1" not in changes.restart_workers


def test_a_second_media_worker_leaves_main_alone(tmp_path):
    root, on_disk = deployed(tmp_path, "media")
    changes = change_to(root, on_disk, "media:2")
    assert not changes.restart_main and changes.start == ("media-2",)


def test_another_redis_restarts_every_process(tmp_path):
    root, on_disk = deployed(tmp_path, "sync,client")
    changes = change_to(root, on_disk, "sync,client", Settings(redis=parse_redis("unix:/srv/r.sock")))
    assert changes.restart_main and set(changes.restart_workers) == {"sync-1", "client-1"}


def test_an_admin_file_in_our_way_is_set_aside_not_overwritten(tmp_path):
    root = make_root(tmp_path)
    admin = PurePosixPath("etc/matrix-synapse/conf.d/redis.yaml")
    changes = change_to(root, {admin: OnDisk("redis:\n  enabled: true\n", 0o644)}, "sync")
    assert changes.set_aside == (admin,)


def test_a_hand_edited_worker_file_is_rewritten_and_that_worker_restarted(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:2")
    path = PurePosixPath("etc/matrix-synapse/workers/sync-2.yaml")
    on_disk[path] = OnDisk(on_disk[path].content + "# edited\n", 0o644)
    changes = change_to(root, on_disk, "sync:2")
    assert changes.restart_workers == ("sync-2",) and not changes.restart_main


def test_a_log_config_left_by_a_deleted_worker_file_is_removed(tmp_path):
    root, on_disk = deployed(tmp_path, "sync:2")
    del on_disk[PurePosixPath("etc/matrix-synapse/workers/sync-2.yaml")]  # the admin deleted it
    changes = change_to(root, on_disk, "sync:1")
    assert changes.remove == (PurePosixPath("etc/matrix-synapse/worker-logs/sync-2.yaml"), PurePosixPath(
        "etc/systemd/system/matrix-synapse-worker@sync-2.service.d/matrix-synapse-workers.conf"))
    assert changes.stop == ()


def test_an_older_version_in_the_headers_rewrites_the_files_and_restarts_nothing(tmp_path):
    """Our own upgrade: every header names the new version, nothing else changed."""
    from matrix_synapse_workers import __version__
    root, on_disk = deployed(tmp_path, "sync:2,client,typing", Settings())
    older = {p: OnDisk(f.content.replace(f" {__version__}", " 0.0.1", 1), f.mode)
             for p, f in on_disk.items()}
    rewritten = {p for p in on_disk if older[p].content != on_disk[p].content}
    assert PurePosixPath("etc/redis/redis-matrix-synapse.conf") in rewritten
    assert PurePosixPath("etc/matrix-synapse/workers/sync-1.yaml") in rewritten
    changes = change_to(root, older, "sync:2,client,typing")
    assert {f.path for f in changes.write} == rewritten
    assert not changes.restart_main and not changes.restart_redis
    assert changes.restart_workers == () and changes.start == () and changes.stop == ()
    # A change beyond the header still counts.
    older[PurePosixPath("etc/redis/redis-matrix-synapse.conf")] = OnDisk("port 6379\n", 0o644)
    assert change_to(root, older, "sync:2,client,typing").restart_redis


def test_services_owed_by_a_killed_run_are_added_to_the_next_one():
    from matrix_synapse_workers.core.changes import Changes, services_owed, with_owed
    # The killed run removed sync-3 (its file is gone) and wrote client-1's new file.
    killed = Changes(stop=("sync-3",), restart_workers=("client-1",), restart_redis=True)
    owed = services_owed(killed, reload_nginx=True)
    # The next run sees nothing to do on disk; the debt is paid.
    changes, reload = with_owed(Changes(), owed, ("sync-1", "sync-2", "client-1"))
    assert (changes.stop, changes.restart_workers, changes.restart_redis, reload) == (
        ("sync-3",), ("client-1",), True, True)
    # Answered otherwise since: a worker the killed run stopped is planned again and starts;
    # one it was to start is no longer planned and does not.
    owed = services_owed(Changes(stop=("sync-2",), start=("typing-1",)), reload_nginx=False)
    changes, reload = with_owed(Changes(), owed, ("sync-1", "sync-2"))
    assert (changes.stop, changes.start, reload) == ((), ("sync-2",), False)


def test_a_new_start_order_alone_restarts_no_worker(tmp_path):
    """0.1.0 wrote drop-ins without the writers-first [Unit] part: the upgrade that adds it
    writes the drop-ins (systemd reloads) and restarts nothing."""
    root, on_disk = deployed(tmp_path, "sync:2,client,events")
    def without_order(text):
        head, unit = text.split("[Unit]\n", 1)
        return head + "[Service]" + unit.split("[Service]", 1)[1]

    old = {path: OnDisk(without_order(f.content), f.mode) if "[Unit]" in f.content else f
           for path, f in on_disk.items()}
    assert old != on_disk
    changes = change_to(root, old, "sync:2,client,events")
    assert {str(f.path) for f in changes.write} == {
        f"etc/systemd/system/matrix-synapse-worker@{n}.service.d/matrix-synapse-workers.conf"
        for n in ("sync-1", "sync-2", "client-1")}
    assert changes.restart_workers == () and not changes.restart_main
