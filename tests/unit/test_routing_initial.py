"""Initial syncs (no ``since``) to their own pool when the plan has one.

Upstream's worker documentation suggests it: an initial sync is the heavy
request a client makes on a new login, and isolating them keeps other users'
incremental syncs fast.  Without initial_sync workers nothing changes.
"""

from __future__ import annotations

import re
import shutil

import pytest

from matrix_synapse_workers.render import routing
from matrix_synapse_workers.core.catalog import ROLES

from matrix_synapse_workers.render.files import nginx_files
from matrix_synapse_workers.core.selection import select
from nginx_standins import get, running_nginx, socket_standins
from support.plans import plan_of

needs_nginx = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
SYNC = "/_matrix/client/v3/sync"


def test_the_role_is_a_generic_client_worker_that_scales():
    role = ROLES["initial_sync"]
    assert role.scales and role.resources == ("client",) and role.shared_scope is None
    # last in the catalog: the ports of the roles before it stay where they were
    assert list(ROLES)[-1] == "initial_sync"


@pytest.mark.parametrize("path, role", [
    (SYNC, "initial_sync"),
    (f"{SYNC}?timeout=0", "initial_sync"),
    (f"{SYNC}?since=", "initial_sync"),
    (f"{SYNC}?since=s72_1&timeout=30000", "sync"),
    ("/_matrix/client/v3/initialSync", "initial_sync"),
    ("/_matrix/client/v3/rooms/!a:x/initialSync", "initial_sync"),
    ("/_matrix/client/v3/events?from=s1", "sync"),
    ("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "sync"),
])
def test_initial_syncs_go_to_their_pool(path, role):
    assert routing.destination(plan_of("sync:2,initial_sync,client"), path, "GET")[0] == role


def test_without_initial_sync_workers_nothing_changes():
    plan = plan_of("sync:2,client")
    assert routing.destination(plan, SYNC, "GET")[0] == "sync"
    assert routing.destination(plan, "/_matrix/client/v3/initialSync", "GET")[0] == "sync"
    _, snippet = nginx_files(plan)
    assert "_by_since" not in snippet.content


def test_initial_sync_workers_alone_take_initial_syncs_and_leave_the_rest_to_main():
    plan = plan_of("initial_sync:2")
    assert routing.destination(plan, SYNC, "GET") == ("initial_sync", ("initial-sync-1", "initial-sync-2"))
    assert routing.destination(plan, f"{SYNC}?since=s1", "GET")[0] == "main"
    http, _ = nginx_files(plan)
    assert re.search(r"map \$arg_since \$msw_sync_by_since \{\n    default msw_main;\n"
                     r"    \"\" msw_initial_sync_by_user;\n\}", http.content), http.content


def test_the_pool_is_sticky_per_user_and_named_in_the_route_table():
    plan = plan_of("sync,initial_sync:2")
    http, snippet = nginx_files(plan)
    assert "upstream msw_initial_sync_by_user {\n    hash $msw_user consistent;" in http.content
    assert "proxy_pass http://$msw_sync_by_since;" in snippet.content
    row = next(r for r in routing.route_table(plan) if r["endpoints"] == "sync")
    assert (row["to"], row["initial_to"]) == (["sync-1"], ["initial-sync-1", "initial-sync-2"])


@needs_nginx
def test_nginx_sends_initial_syncs_to_their_pool(tmp_path):
    """Real nginx, the rendered files, a stand-in on every socket: who answered."""
    http, snippet = nginx_files(plan_of("sync,initial_sync,client"))
    sockets = tmp_path / "run"
    sockets.mkdir()
    token = {"Authorization": "Bearer syt_YWxpY2U_RaNdOm_0Abc1D"}
    with socket_standins(http.content, sockets) as moved:
        with running_nginx(tmp_path, moved, snippet.content) as listen:
            answers = {path: get(listen, path, token) for path in (
                SYNC, f"{SYNC}?timeout=0&since=", f"{SYNC}?since=s72_1&timeout=0",
                "/_matrix/client/r0/initialSync", "/_matrix/client/v3/events",
                "/_matrix/client/v3/account/whoami", "/_matrix/client/v3/pushers")}
    assert answers == {
        SYNC: "initial-sync-1", f"{SYNC}?timeout=0&since=": "initial-sync-1",
        f"{SYNC}?since=s72_1&timeout=0": "sync-1", "/_matrix/client/r0/initialSync": "initial-sync-1",
        "/_matrix/client/v3/events": "sync-1", "/_matrix/client/v3/account/whoami": "client-1",
        "/_matrix/client/v3/pushers": "main"}
