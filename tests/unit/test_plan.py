import re
from pathlib import PurePosixPath

import pytest

from matrix_synapse_workers.core.catalog import PRESETS, ROLES
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.core.facts import HostFacts
from matrix_synapse_workers.core.plan import Plan, make_plan, plan_workers
from matrix_synapse_workers.core.selection import select


def names(spec, existing=()):
    return [w.name for w in plan_workers(select(workers=spec), existing)]


def test_names_are_numbered_from_one():
    assert names("sync:2,federation_reader") == ["sync-1", "sync-2", "federation-reader-1"]


def test_adding_a_worker_keeps_every_existing_name():
    before = names("sync:2,client")
    after = names("sync:3,client", existing=before)
    assert after[:2] == before[:2] and "sync-3" in after and "client-1" in after


def test_gaps_are_filled_and_removal_keeps_the_lowest_numbers():
    assert names("sync:3", existing=["sync-2", "sync-5"]) == ["sync-2", "sync-5", "sync-1"]
    assert names("sync:1", existing=["sync-1", "sync-2", "sync-3"]) == ["sync-1"]


def test_admins_own_worker_files_are_not_adopted():
    assert names("sync", existing=["my-worker", "sync-1x"]) == ["sync-1"]


def shared(spec):
    return Plan(plan_workers(select(workers=spec))).shared_settings()


def test_generic_workers_need_only_main_in_instance_map():
    assert shared("sync:3,client:2,federation_reader") == {
        "instance_map": {"main": {"path": "/run/matrix-synapse/replication.sock"}}}


def test_duties_as_lists_and_single_names():
    settings = shared("federation_sender:2,pusher,appservice,user_dir,background")
    assert settings["federation_sender_instances"] == ["federation-sender-1", "federation-sender-2"]
    assert settings["pusher_instances"] == ["pusher-1"]
    assert settings["notify_appservices_from_worker"] == "appservice-1"
    assert settings["update_user_directory_from_worker"] == "user-dir-1"
    assert settings["run_background_tasks_on"] == "background-1"
    assert "stream_writers" not in settings


def test_stream_writers_are_in_instance_map_with_their_replication_socket():
    settings = shared("events:2,typing,quarantined_media")
    assert settings["stream_writers"] == {
        "events": ["events-1", "events-2"], "typing": ["typing-1"],
        # main stays a writer: its background update records already quarantined media.
        "quarantined_media_changes": ["quarantined-media-1", "master"]}
    assert settings["instance_map"]["typing-1"] == {
        "path": "/run/matrix-synapse/typing-1-replication.sock"}
    assert set(settings["instance_map"]) == {"main", "events-1", "events-2", "typing-1",
                                             "quarantined-media-1"}


def test_media_workers_take_the_repo_from_main_and_one_runs_its_jobs():
    settings = shared("media:2")
    assert settings["enable_media_repo"] is False
    assert settings["media_instance_running_background_jobs"] == "media-1"


def test_socket_paths_are_unique_for_the_busiest_preset():
    plan = Plan(plan_workers(select(preset="busy")))
    sockets = plan.socket_paths()
    assert len(sockets) == len(set(sockets))
    assert all(p.parent == PurePosixPath("/run/matrix-synapse") for p in sockets)


@pytest.mark.parametrize("claimed", ["/run/matrix-synapse/replication.sock",
                                     "/run/matrix-synapse/sync-1.sock"])
def test_admin_listener_on_our_socket_path_is_refused(claimed):
    facts = HostFacts(listeners=({"path": claimed, "type": "http", "resources": []},),
                      database_engine="psycopg2", log_config_path=None, log_config=None)
    with pytest.raises(HostConfigError) as caught:
        make_plan(select(workers="sync"), facts)
    assert claimed in str(caught.value) and "listener 1" in str(caught.value)


def test_a_role_newer_than_the_installed_synapse_is_refused(tmp_path):
    from dataclasses import replace as copy_with
    from hostroot import make_root
    from matrix_synapse_workers.core.errors import SelectionError
    from matrix_synapse_workers.system.hostfacts import read_host_facts
    from matrix_synapse_workers.core.plan import make_plan
    from matrix_synapse_workers.core.selection import select
    facts = read_host_facts(make_root(tmp_path))
    old = copy_with(facts, synapse_version=(1, 104, 3))
    with pytest.raises(SelectionError, match=r"'push_rules' needs Synapse 1\.105\.0 or newer, but 1\.104\.3"):
        make_plan(select(workers="sync,push_rules"), old)
    make_plan(select(workers="sync,push_rules"), copy_with(facts, synapse_version=(1, 105, 0)))
    make_plan(select(workers="sync,push_rules"), copy_with(facts, synapse_version=None))


def test_several_receipts_writers_need_1_96(tmp_path):
    from dataclasses import replace as copy_with
    from hostroot import make_root
    from matrix_synapse_workers.core.errors import SelectionError
    from matrix_synapse_workers.system.hostfacts import read_host_facts
    from matrix_synapse_workers.core.plan import make_plan
    from matrix_synapse_workers.core.selection import select
    facts = read_host_facts(make_root(tmp_path))
    with pytest.raises(SelectionError, match=r"several 'receipts' workers need Synapse 1\.96\.0 "
                                             r"or newer, but 1\.95\.1 is installed.*receipts:1"):
        make_plan(select(workers="receipts:2"), copy_with(facts, synapse_version=(1, 95, 1)))
    make_plan(select(workers="receipts:1"), copy_with(facts, synapse_version=(1, 95, 1)))
    make_plan(select(workers="receipts:2"), copy_with(facts, synapse_version=(1, 96, 0)))


@pytest.mark.parametrize("role,since", [("thread_subscriptions", "1.135.0"),
                                        ("quarantined_media", "1.159.0")])
def test_newer_writers_are_gated(tmp_path, role, since):
    from dataclasses import replace as copy_with
    from hostroot import make_root
    from matrix_synapse_workers.core.errors import SelectionError
    from matrix_synapse_workers.system.hostfacts import read_host_facts
    from matrix_synapse_workers.core.plan import make_plan
    from matrix_synapse_workers.core.selection import select
    facts = read_host_facts(make_root(tmp_path))
    major, minor, _ = map(int, since.split("."))
    with pytest.raises(SelectionError, match=rf"'{role}' needs Synapse {re.escape(since)}"):
        make_plan(select(workers=role), copy_with(facts, synapse_version=(major, minor - 1, 9)))
    make_plan(select(workers=role), copy_with(facts, synapse_version=(major, minor, 0)))


def test_the_quarantine_writer_is_a_media_repository():
    settings = shared("quarantined_media")
    assert settings["enable_media_repo"] is False
    assert settings["media_instance_running_background_jobs"] == "quarantined-media-1"
    assert ROLES["quarantined_media"].own_config == {"enable_media_repo": True}
    assert "media" in ROLES["quarantined_media"].resources
    # with media workers, the first of them runs the media jobs.
    assert shared("media:2,quarantined_media")["media_instance_running_background_jobs"] == "media-1"


@pytest.mark.parametrize("key,config,ok,old", [
    ("redis.password_path", {"redis": {"enabled": True, "password_path": "/p"}}, (1, 117, 0), (1, 116, 3)),
    ("worker_replication_secret_path", {"worker_replication_secret_path": "/s"}, (1, 126, 0), (1, 125, 1)),
])
def test_keys_older_synapse_would_ignore_are_refused(key, config, ok, old):
    from matrix_synapse_workers.core.errors import SelectionError
    from matrix_synapse_workers.core.plan import refuse_unknown_keys
    refuse_unknown_keys(config, ok)
    refuse_unknown_keys(config, None)
    with pytest.raises(SelectionError, match=rf"^{re.escape(key)} needs Synapse "):
        refuse_unknown_keys(config, old)
