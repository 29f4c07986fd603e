"""Routes chosen by the installed Synapse version.

The gated entries of catalog.ENDPOINTS record releases in which Synapse moved
endpoints off main, or added or dropped them (facts from Synapse's own
history: /notifications 1.93, GET of one device 1.130, device changes and
account deactivation 1.135, the delayed-event restart 1.144, ...).  The
version is read from package metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nginx_standins import nginx_test
from matrix_synapse_workers.render import routing
from matrix_synapse_workers.system import synapseversion
from matrix_synapse_workers.core.catalog import ENDPOINTS, MIN_SYNAPSE_VERSION, Endpoints

from matrix_synapse_workers.render.files import nginx_files
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.system.synapseversion import installed_version, parse_version
from support.plans import plan_of


# --- reading the version --------------------------------------------------------

def _metadata(root: Path, where: str, version: str) -> Path:
    directory = root / where.replace("python3*", "python3.11").replace("matrix_synapse-*",
                                                                     f"matrix_synapse-{version}")
    directory.mkdir(parents=True)
    (directory / "METADATA").write_text(
        f"Metadata-Version: 2.3\nName: matrix-synapse\nVersion: {version}\nSummary: x\n\n"
        "Version: 9.9.9 (the description, not a header)\n")
    return directory


@pytest.mark.parametrize("where", synapseversion.DIST_INFO_GLOBS)
def test_the_version_comes_from_either_packagings_metadata(tmp_path, where):
    _metadata(tmp_path, where, "1.134.0")
    assert installed_version(tmp_path) == (1, 134, 0)


def test_no_synapse_is_none_and_leftovers_give_the_newest(tmp_path):
    assert installed_version(tmp_path) is None
    venv = synapseversion.DIST_INFO_GLOBS[0]
    _metadata(tmp_path, venv, "1.130.0")
    _metadata(tmp_path, venv, "1.144.1")
    assert installed_version(tmp_path) == (1, 144, 1)


def test_unreadable_versions_are_ignored():
    assert parse_version("") is None and parse_version("v1.2.3") is None


def test_a_version_in_the_description_is_not_the_version(tmp_path):
    """importlib.metadata reads headers only: the body's "Version:" line is text."""
    directory = _metadata(tmp_path, synapseversion.DIST_INFO_GLOBS[0], "1.2.3")
    (directory / "METADATA").write_text("Name: x\n\nVersion: 1.2.3\n")
    assert installed_version(tmp_path) is None


# --- the real gated entries -------------------------------------------------------

BEFORE, AT = "before", "at"
#: (method, path, release that moved it to workers, role at and after it).
MOVED = [
    ("GET", "/_matrix/client/v3/notifications", (1, 93, 0), "client"),
    ("GET", "/_matrix/client/v3/devices/ABCDEF", (1, 130, 0), "client"),
    ("PUT", "/_matrix/client/v3/devices/ABCDEF", (1, 135, 0), "client"),
    ("DELETE", "/_matrix/client/v3/devices/ABCDEF", (1, 135, 0), "client"),
    ("POST", "/_matrix/client/v3/delete_devices", (1, 135, 0), "client"),
    ("POST", "/_matrix/client/v3/keys/device_signing/upload", (1, 135, 0), "client"),
    ("POST", "/_matrix/client/v3/keys/signatures/upload", (1, 135, 0), "client"),
    ("POST", "/_matrix/client/v3/account/deactivate", (1, 135, 0), "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1/restart", (1, 144, 0), "client"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events", (1, 116, 0), "client"),
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1", (1, 161, 0), "client"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", (1, 111, 0), "sync"),
    ("GET", "/_matrix/client/v1/room_summary/!a:x", (1, 153, 0), "client"),
    ("GET", "/_matrix/client/unstable/im.nheko.summary/summary/!a:x", (1, 153, 0), "client"),
]
#: (method, path, first release with it on workers, first release without it anywhere).
CAME_AND_WENT = [
    ("GET", "/_matrix/client/unstable/org.matrix.msc3575/sync/e2ee", (1, 111, 0), (1, 139, 0), "sync"),
    ("PUT", "/_matrix/client/unstable/org.matrix.msc2697.v2/dehydrated_device", (1, 135, 0), (1, 146, 0),
     "client"),
]


def _just_before(version: tuple[int, int, int]) -> tuple[int, int, int]:
    return (version[0], version[1] - 1, 9)


@pytest.mark.parametrize("method, path, moved, role", MOVED, ids=lambda x: str(x))
def test_an_endpoint_stays_on_main_until_the_release_that_moved_it(method, path, moved, role):
    plan = plan_of("sync,client")
    assert routing.destination(plan, path, method, _just_before(moved))[0] == "main"
    assert routing.destination(plan, path, method, moved)[0] == role
    assert routing.destination(plan, path, method, None)[0] == role


@pytest.mark.parametrize("method, path, start, end, role", CAME_AND_WENT, ids=lambda x: str(x))
def test_an_endpoint_synapse_dropped_goes_back_to_main(method, path, start, end, role):
    plan = plan_of("sync,client")
    assert [routing.destination(plan, path, method, v)[0]
            for v in (_just_before(start), start, _just_before(end), end, None)] == [
        "main", role, role, "main", "main"]


@pytest.mark.parametrize("version", [(1, 89, 0), (1, 129, 0), (1, 134, 3), (1, 135, 0), None])
def test_what_workers_always_served_goes_to_them_on_every_version(version):
    plan = plan_of("client")
    for method, path in (("GET", "/_matrix/client/v3/devices"), ("POST", "/_matrix/client/v3/keys/upload"),
                         ("GET", "/_matrix/client/v3/sync"), ("POST", "/_matrix/client/v3/createRoom")):
        assert routing.destination(plan, path, method, version)[0] == "client", (method, path)


def test_the_device_list_writer_gets_device_changes_only_where_synapse_has_it():
    plan = plan_of("client,device_lists")
    path = "/_matrix/client/v3/keys/upload"
    assert routing.destination(plan, path, "POST", (1, 135, 0))[0] == "device_lists"
    assert routing.destination(plan, path, "POST", (1, 134, 0))[0] == "client"


def test_the_mechanism_on_a_table_built_here():
    old = Endpoints("old", "before 2.0", "client", ("^/a$",), roles=("client",), until=(2, 0, 0),
                    why="a handler")
    new = Endpoints("new", "from 2.0", "client", ("^/a$", "^/b$"), roles=("sync",), since=(2, 0, 0),
                    why="a handler")
    always = Endpoints("always", "any", "client", ("^/",), why="main keeps it")
    table = (old, new, always)

    def route(path: str, version: tuple[int, int, int] | None) -> str | None:
        found = routing.endpoint_class(path, [e for e in table if e.applies_to(version)])
        return found.name if found else None

    assert [route("/a", v) for v in ((1, 99, 99), (2, 0, 0), None)] == ["old", "new", "new"]
    assert [route("/b", v) for v in ((1, 99, 99), (2, 0, 1))] == ["always", "new"]
    assert routing.check_table(table) == []
    broken = Endpoints("broken", "empty range", "client", ("^/c$",), since=(2, 0, 0), until=(1, 0, 0))
    dead = Endpoints("dead", "ended long ago", "client", ("^/d$",), until=MIN_SYNAPSE_VERSION)
    problems = routing.check_table((broken, dead))
    assert any("broken: since" in p for p in problems) and any("dead: ends" in p for p in problems)


def test_the_catalogs_gates_are_sound():
    assert routing.check_table() == []
    assert any(e.since for e in ENDPOINTS.values()) and any(e.until for e in ENDPOINTS.values())


# --- the nginx files -----------------------------------------------------------------

def test_the_files_say_which_version_they_route_for():
    plan = plan_of("sync,client")
    old_http, old_snippet = nginx_files(plan, (1, 134, 0))
    new_http, new_snippet = nginx_files(plan)
    assert "chosen for Synapse 1.134.0." in old_http.content
    assert "chosen for the newest Synapse" in new_http.content
    assert "account/deactivate" in new_snippet.content
    assert "account/deactivate" not in old_snippet.content
    assert "# devices_before_1_135:" in old_snippet.content
    assert "# devices_before_1_135:" not in new_snippet.content


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
@pytest.mark.parametrize("version", [(1, 89, 0), (1, 130, 0), (1, 143, 0), None])
def test_nginx_accepts_the_files_of_every_version(tmp_path: Path, version):
    http, snippet = nginx_files(plan_of("sync:2,client,device_lists,federation_reader"), version)
    r = nginx_test(tmp_path, http.content, snippet.content)
    assert r.returncode == 0, r.stderr
