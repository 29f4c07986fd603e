import re

import pytest

from matrix_synapse_workers.core.catalog import ALIASES, PRESETS, ROLES, Scope, resolve_role
from matrix_synapse_workers.core.plan import main_worker_name, worker_name
from matrix_synapse_workers.core.selection import Selection

ISSUE_ROLE_NAMES = [
    "sync", "client", "federation_reader", "federation_sender", "pusher", "appservice", "user_dir",
    "background", "media", "events", "typing", "to_device", "account_data", "receipts", "presence",
    "push_rules", "device_lists", "quarantined_media",
]
SINGLE_WRITER_STREAMS = {"typing", "to_device", "account_data", "presence", "push_rules"}


def test_every_short_name_admins_type_is_a_role():
    assert set(ISSUE_ROLE_NAMES) <= set(ROLES)


def test_role_names_are_lowercase_words():
    for name in ROLES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name), name


def test_single_writer_streams_cannot_scale():
    for role in ROLES.values():
        if role.stream in SINGLE_WRITER_STREAMS:
            assert not role.scales, role.name


def test_writers_get_replication_and_instance_map_and_others_do_not():
    for role in ROLES.values():
        assert role.needs_replication_listener == (role.stream is not None)
        assert role.needs_instance_map_entry == (role.stream is not None)


def test_generic_roles_leave_main_alone_and_duties_restart_it():
    for name in ("sync", "client", "federation_reader"):
        assert not ROLES[name].restarts_main
    for name in ("federation_sender", "pusher", "appservice", "user_dir", "background", "media"):
        assert ROLES[name].restarts_main
        assert ROLES[name].shared_scope is Scope.MAIN_AND_ROLE
    assert ROLES["typing"].shared_scope is Scope.EVERY_PROCESS


def test_duty_keys_are_unique():
    keys = [role.duty.key for role in ROLES.values() if role.duty]
    assert len(keys) == len(set(keys))


def test_every_role_serves_http_for_health():
    for role in ROLES.values():
        assert role.http_resources


@pytest.mark.parametrize("alias,target", sorted(ALIASES.items()))
def test_aliases_resolve(alias, target):
    assert resolve_role(alias).name == target
    assert resolve_role(alias.replace("_", "-").upper()).name == target


@pytest.mark.parametrize("name", sorted(ROLES))
def test_worker_names_are_systemd_safe_and_parse_back(name):
    role = ROLES[name]
    for index in (1, 2, 17):
        made = worker_name(role, index)
        assert re.fullmatch(r"[a-z0-9-]+", made)
        parsed = main_worker_name(made)
        assert (parsed.name, parsed.role, parsed.index, parsed.host) == (made, role, index, None)


@pytest.mark.parametrize("text", ["sync", "sync-0", "sync-01", "Sync-1", "nosuch-1", "sync_1", "-1"])
def test_foreign_names_do_not_parse(text):
    assert main_worker_name(text) is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_selections(name):
    Selection(dict(PRESETS[name].counts))


def test_one_of_each_and_busy_cover_every_stable_role():
    stable = {n for n, r in ROLES.items() if not r.experimental}
    assert set(PRESETS["one_of_each"].counts) == stable
    busy = PRESETS["busy"].counts
    assert set(busy) == stable
    for name in ("sync", "client", "federation_reader", "federation_sender"):
        assert busy[name] >= 2
