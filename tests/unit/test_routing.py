"""The route table (catalog.ENDPOINTS) and the nginx files rendered from it."""

import re
import shutil
from pathlib import Path

import pytest

from nginx_standins import nginx_test
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.render import routing
from matrix_synapse_workers.core.catalog import ENDPOINTS, PRESETS, ROLES, Balance
from matrix_synapse_workers.core.plan import Plan, plan_workers
from support.plans import plan_of
from matrix_synapse_workers.render.files import nginx_files
from matrix_synapse_workers.core.selection import select


def snippet_and_http(spec: str) -> tuple[str, str]:
    http, snippet = nginx_files(plan_of(spec))
    return http.content, snippet.content


def test_the_table_is_consistent_with_the_roles():
    assert routing.check_table() == []


def test_no_pattern_is_written_twice_for_any_synapse_version():
    boundaries = {v for e in ENDPOINTS.values() for v in (e.since, e.until) if v}
    for version in (None, (1, 89, 0), *boundaries):
        patterns = [p for e in routing.table_for(version) for p in e.patterns]
        assert len(patterns) == len(set(patterns)), version


# One example request per endpoint class (method, path) and where it must go
# with every worker type present ("busy" plus user_dir etc.).
EXAMPLES = {
    ("GET", "/_matrix/client/v3/sync"): "sync",
    ("GET", "/_matrix/client/r0/initialSync"): "sync",
    ("GET", "/_matrix/client/v3/rooms/!a:x/messages"): "client",
    ("PUT", "/_matrix/client/v3/rooms/!a:x/send/m.room.message/1"): "client",
    ("GET", "/_matrix/client/v3/account/whoami"): "client",
    ("POST", "/_matrix/client/v3/login"): "client",
    ("GET", "/_matrix/client/v3/login/sso/redirect"): "main",
    ("GET", "/_synapse/client/pick_idp"): "main",
    ("PUT", "/_matrix/client/v3/rooms/!a:x/typing/@u:x"): "typing",
    ("PUT", "/_matrix/client/v3/sendToDevice/m.x/1"): "to_device",
    ("PUT", "/_matrix/client/v3/user/@u:x/account_data/t"): "account_data",
    ("POST", "/_matrix/client/v3/rooms/!a:x/receipt/m.read/$e"): "receipts",
    ("PUT", "/_matrix/client/v3/presence/@u:x/status"): "presence",
    ("PUT", "/_matrix/client/v3/pushrules/global/override/x"): "push_rules",
    ("POST", "/_matrix/client/v3/keys/upload"): "device_lists",
    ("GET", "/_matrix/client/v3/devices"): "device_lists",
    ("POST", "/_matrix/client/v3/keys/query"): "client",
    ("POST", "/_matrix/client/v3/user_directory/search"): "user_dir",
    ("GET", "/_matrix/media/v3/download/x/y"): "media",
    ("GET", "/_matrix/client/v1/media/config"): "media",
    ("GET", "/_matrix/federation/v1/media/download/x"): "media",
    ("PUT", "/_matrix/federation/v1/send/123"): "federation_reader",
    ("GET", "/_matrix/federation/v1/event/$e"): "federation_reader",
    ("POST", "/_matrix/key/v2/query"): "federation_reader",
    # Membership changes: where profile updates run (main without a background worker).
    ("PUT", "/_matrix/client/v3/rooms/!a:x/join/txn1"): "main",
    ("POST", "/_matrix/client/v3/rooms/!a:x/leave"): "main",
    ("POST", "/_matrix/client/v3/join/#a:x"): "main",
    ("PUT", "/_matrix/client/v3/profile/@u:x/displayname"): "client",
    # The media admin API: only media repositories register it.
    ("GET", "/_synapse/admin/v1/users/@u:x/media"): "media",
    ("POST", "/_synapse/admin/v1/purge_media_cache"): "media",
    ("DELETE", "/_synapse/admin/v1/media/x/y"): "media",
    ("POST", "/_synapse/admin/v1/media/quarantine/x/y"): "media",
    ("GET", "/_synapse/admin/v1/users/@u:x"): "main",
    ("PUT", "/_matrix/client/v3/createRoom/txn1"): "client",
    ("GET", "/_matrix/client/unstable/sync"): "sync",
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"): "sync",
    ("GET", "/_matrix/client/v3/events/$e"): "client",
    ("GET", "/_matrix/client/v1/room_summary/!a:x"): "client",
    ("POST", "/_matrix/client/v1/appservice/bridge/ping"): "client",
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1/restart"): "client",
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1/cancel"): "main",
    ("GET", "/_matrix/federation/v1/openid/userinfo"): "federation_reader",
    ("POST", "/_matrix/federation/v1/user/keys/claim"): "federation_reader",
    ("POST", "/_matrix/client/v3/rooms/!a:x/forget"): "main",
    ("GET", "/_matrix/client/v3/pushers"): "main",
    ("POST", "/_matrix/client/v3/logout"): "main",
    ("GET", "/_synapse/admin/v1/server_version"): "main",
}
EVERYTHING = "sync:2,client:2,federation_reader:2,media,user_dir,typing,to_device,account_data," \
             "receipts,presence,push_rules,device_lists,events"


@pytest.mark.parametrize("request_line", sorted(EXAMPLES), ids=lambda r: f"{r[0]} {r[1]}")
def test_each_class_goes_to_its_role(request_line):
    method, path = request_line
    assert routing.destination(plan_of(EVERYTHING), path, method)[0] == EXAMPLES[request_line]


def test_without_the_writer_its_endpoints_fall_back_in_the_catalog_order():
    plan = plan_of("sync,client")
    assert routing.destination(plan, "/_matrix/client/v3/keys/upload", "POST")[0] == "client"
    assert routing.destination(plan, "/_matrix/client/v3/rooms/!a:x/typing/@u:x", "PUT")[0] == "main"
    # account data: a generic worker serves only reads of it.
    path = "/_matrix/client/v3/user/@u:x/account_data/t"
    assert routing.destination(plan, path, "GET")[0] == "client"
    assert routing.destination(plan, path, "PUT")[0] == "main"
    # sync without a sync worker: the client pool serves it.
    assert routing.destination(plan_of("client"), "/_matrix/client/v3/sync", "GET")[0] == "client"
    # federation needs the federation resource: never the client pool.
    assert routing.destination(plan, "/_matrix/federation/v1/send/1", "PUT")[0] == "main"


# Issue 12: a worker that registers the servlet but lacks the writer's handler
# answers 500 (a receipt: insert_receipt asserts the receipts writer; another
# user's presence: WorkerPresenceHandler.is_visible raises).
WRITER_ONLY_REQUESTS = {
    "typing": [("PUT", "/_matrix/client/v3/rooms/!a:x/typing/@u:x")],
    "to_device": [("PUT", "/_matrix/client/v3/sendToDevice/m.x/1")],
    "receipts": [("POST", "/_matrix/client/v3/rooms/!a:x/receipt/m.read/$e"),
                 ("POST", "/_matrix/client/v3/rooms/!a:x/read_markers")],
    "presence": [("GET", "/_matrix/client/v3/presence/@b:x/status"),
                 ("PUT", "/_matrix/client/v3/presence/@u:x/status"),
                 ("GET", "/_matrix/client/api/v1/presence/@b:x/status")],
    "thread_subscriptions": [
        ("PUT", "/_matrix/client/unstable/io.element.msc4306/rooms/!a:x/thread/$t/subscription")],
}


def test_the_writer_only_classes_are_the_ones_listed_here():
    assert {e.name for e in ENDPOINTS.values() if e.writers_only} == set(WRITER_ONLY_REQUESTS)


@pytest.mark.parametrize("spec", ["sync", "client", "sync,client", "sync:2,client:2,user_dir,media",
                                  *(f"preset:{p}" for p in PRESETS)])
def test_requests_only_a_writer_can_answer_go_to_the_writer_or_main(spec):
    plan = Plan(plan_workers(select(preset=spec[7:]) if spec.startswith("preset:") else select(workers=spec)))
    for stream, requests in WRITER_ONLY_REQUESTS.items():
        expected = stream if plan.of_role(stream) else "main"
        for method, path in requests:
            assert routing.destination(plan, path, method)[0] == expected, (spec, method, path)


def test_every_class_says_which_handler_lets_its_workers_serve_it():
    """So the next route added names what was checked (not only that a servlet exists)."""
    for endpoints in ENDPOINTS.values():
        assert len(endpoints.why.strip()) > 20, endpoints.name
    writerless = routing.check_table([ENDPOINTS["receipts"].__class__(
        "r", "x", "client", ("^/r$",), roles=("receipts", "client"), why="-", writers_only=True)])
    assert writerless and "only its stream's writer" in writerless[0]
    nameless = routing.check_table([ENDPOINTS["receipts"].__class__("n", "x", "client", ("^/n$",))])
    assert nameless == ["n: no why (the handler that lets its roles serve it)"]


def test_no_workers_means_no_locations_but_the_main_ones():
    http, snippet = snippet_and_http("pusher")
    assert "location ~" not in snippet
    assert "location /_matrix/" in snippet and "location @msw_main" in snippet
    assert re.findall(r"^upstream (\S+)", http, re.M) == ["msw_main"]


def test_sync_is_sticky_by_user_rooms_by_room_federation_by_origin():
    http, _ = snippet_and_http("sync:3,client:2,federation_reader:2")
    upstreams = dict(re.findall(r"^upstream (\S+) \{\n    (.*);", http, re.M))
    assert upstreams["msw_sync_by_user"] == "hash $msw_user consistent"
    assert upstreams["msw_client_by_room"] == "hash $msw_room consistent"
    assert upstreams["msw_federation_reader_by_origin"] == "hash $msw_origin consistent"
    assert upstreams["msw_client"] == "least_conn"
    for name in ("sync-1", "sync-2", "sync-3"):
        assert f"server unix:{paths.SOCKET_DIR}/{name}.sock;" in http


def test_every_worker_location_falls_back_and_sets_the_forwarded_headers():
    _, snippet = snippet_and_http(EVERYTHING)
    blocks = re.findall(r"location ([^{]*)\{(.*?)\n    \}", snippet, re.S)
    assert len(blocks) > 10
    for where, body in blocks:
        if "proxy_pass" not in body:  # the answers nginx gives itself (@msw_502, @msw_retry)
            assert where.startswith("@msw_") and "return " in body, where
            continue
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in body, where
        assert "proxy_set_header X-Forwarded-Proto $scheme;" in body, where
        assert "client_max_body_size 50M;" in body, where
        if where.startswith("~"):
            # main stands in for generic workers; a writer's or media worker's own
            # process must answer (a 429 meanwhile)
            after = "main" if "Only " in body else "worker"
            assert f"error_page 502 = $msw_after_{after}_502;" in body, where
            assert after == "worker" or re.search(
                r"proxy_pass http://msw_(typing|to_device|account_data|receipts|presence|"
                r"push_rules|device_lists|thread_subscriptions|media|quarantined_media|"
                r"background|user_dir)\b", body), where
    assert "backup" not in snippet


def test_reads_only_classes_pick_the_upstream_by_method():
    http, snippet = snippet_and_http("client")
    assert "map $request_method $msw_account_data_by_method {" in http
    assert "proxy_pass http://$msw_account_data_by_method;" in snippet


def test_rendering_is_deterministic():
    assert snippet_and_http(EVERYTHING) == snippet_and_http(EVERYTHING)


def test_files_start_with_the_generated_marker_and_sit_where_debian_includes_them():
    http, snippet = nginx_files(plan_of("sync"))
    assert str(http.path) == "etc/nginx/conf.d/matrix-synapse-workers.conf"
    assert str(snippet.path) == "etc/nginx/snippets/matrix-synapse-workers.conf"
    assert http.content.startswith("# Generated by matrix-synapse-workers")
    assert snippet.content.startswith("# Generated by matrix-synapse-workers")


def test_synapse_tokens_hash_on_the_localpart():
    """The map's regex, run by Python on a token Synapse would issue."""
    http, _ = snippet_and_http("sync:2")
    regex = re.search(r'"~\^syt_(.*)" \$msw_localpart', http)[1]
    match = re.match("^syt_" + regex.replace("?<", "?P<"), "syt_YWxpY2U_RaNdOmStRiNgXXXXXXXX_0Abc1D")
    assert match["msw_localpart"] == "YWxpY2U"


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")
@pytest.mark.parametrize("spec", ["sync", "client", EVERYTHING, *(f"preset:{p}" for p in PRESETS)])
def test_nginx_accepts_the_files(tmp_path: Path, spec: str):
    """`nginx -t` with the files in the contexts Debian's layout puts them in."""
    plan = Plan(plan_workers(select(preset=spec[7:]) if spec.startswith("preset:") else select(workers=spec)))
    http, snippet = nginx_files(plan)
    r = nginx_test(tmp_path, http.content, snippet.content)
    assert r.returncode == 0, r.stderr


def test_every_role_with_client_endpoints_is_routed_somewhere():
    """A role serving an HTTP resource other than health appears in the table."""
    routed = {r for e in ENDPOINTS.values() for r in e.roles + e.read_roles}
    serving = {name for name, role in ROLES.items() if role.resources and not role.stream}
    assert serving <= routed
    assert all(b in routing.HASH_KEYS for b in Balance)


# --- the nginx edge: a rejected check puts everything back -----------------

from matrix_synapse_workers.core.errors import ApplyError  # noqa: E402
from matrix_synapse_workers.system import nginx as nginx_edge  # noqa: E402


def test_a_rejected_nginx_check_puts_the_previous_files_back(tmp_path, monkeypatch):
    http, snippet = nginx_files(plan_of("sync"))
    (tmp_path / http.path).parent.mkdir(parents=True)
    (tmp_path / http.path).write_text("# the previous http file\n")
    (tmp_path / snippet.path).parent.mkdir(parents=True)
    monkeypatch.setattr(nginx_edge, "check", lambda root: "unknown directive \"x\" in ...")
    with pytest.raises(ApplyError, match=r"nginx -t' rejects .*unknown directive.*put back"):
        nginx_edge.write_checked(tmp_path, [http, snippet], [], chown=False)
    assert (tmp_path / http.path).read_text() == "# the previous http file\n"
    assert not (tmp_path / snippet.path).exists()


def test_an_admin_file_in_the_way_is_kept_or_restored(tmp_path, monkeypatch):
    http, _ = nginx_files(plan_of("sync"))
    target = tmp_path / http.path
    target.parent.mkdir(parents=True)
    target.write_text("upstream mine {}\n")
    monkeypatch.setattr(nginx_edge, "check", lambda root: "duplicate upstream")
    with pytest.raises(ApplyError):
        nginx_edge.write_checked(tmp_path, [http], [http.path], chown=False)
    assert target.read_text() == "upstream mine {}\n"
    monkeypatch.setattr(nginx_edge, "check", lambda root: None)
    assert nginx_edge.write_checked(tmp_path, [http], [http.path], chown=False)
    assert target.read_text() == http.content
    assert (tmp_path / f"{http.path}.dpkg-old").read_text() == "upstream mine {}\n"


@pytest.mark.skipif(nginx_edge.binary() is None, reason="nginx is not installed")
def test_the_check_knows_the_temporary_directories_nginx_t_makes():
    # Debian's nginx: the ones 'nginx -t' makes where nginx never ran, removed after the check.
    assert Path("/var/lib/nginx/body") in nginx_edge.temp_paths(nginx_edge.binary())


# Issue 23: with a background worker, membership changes go where the profile task runs.
def test_membership_changes_go_where_background_tasks_run():
    plan = plan_of("sync,client,background")
    for method, path in (("POST", "/_matrix/client/v3/rooms/!a:x/leave"),
                         ("PUT", "/_matrix/client/v3/rooms/!a:x/invite/t1"),
                         ("POST", "/_matrix/client/v3/knock/!a:x"),
                         ("POST", "/_matrix/client/r0/join/!a:x")):
        assert routing.destination(plan, path, method) == ("background", ("background-1",)), path
    # before 1.150 the profile request wrote the joins itself: client workers keep them.
    assert routing.destination(plan, "/_matrix/client/v3/rooms/!a:x/leave", "POST",
                               (1, 149, 0))[0] == "client"


def test_quarantine_goes_to_its_writer_and_the_media_admin_to_media_workers():
    plan = plan_of("media:2,quarantined_media")
    for path in ("/_synapse/admin/v1/quarantine_media/!a:x", "/_synapse/admin/v1/room/!a:x/media/quarantine",
                 "/_synapse/admin/v1/user/@u:x/media/quarantine", "/_synapse/admin/v1/media/quarantine/x/y",
                 "/_synapse/admin/v1/media/unquarantine/x/y", "/_synapse/admin/v1/media/quarantine_changes"):
        assert routing.destination(plan, path, "POST")[0] == "quarantined_media", path
    assert routing.destination(plan, "/_synapse/admin/v1/room/!a:x/media", "GET")[0] == "media"
    # a quarantine writer alone is the media repository too.
    alone = plan_of("quarantined_media")
    assert routing.destination(alone, "/_matrix/media/v3/upload", "POST")[0] == "quarantined_media"
    assert routing.destination(alone, "/_synapse/admin/v1/users/@u:x/media", "GET")[0] == "quarantined_media"


def test_the_admin_api_has_a_snippet_of_its_own(tmp_path):
    from matrix_synapse_workers.render.files import nginx_admin_file
    http, snippet = nginx_files(plan_of("media"))
    admin = nginx_admin_file(plan_of("media"))
    assert str(admin.path) == "etc/nginx/snippets/matrix-synapse-workers-admin.conf"
    assert "_synapse/admin" not in snippet.content  # the client snippet never exposes it
    assert "location /_synapse/admin/ {" in admin.content
    assert "purge_media_cache" in admin.content and "proxy_pass http://msw_media;" in admin.content
    assert "upstream msw_media {" in http.content
    if shutil.which("nginx"):
        r = nginx_test(tmp_path, http.content, snippet.content + admin.content)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("size,expected", [(None, "50M"), ("100M", "100M"), ("1G", "1G"),
                                           (104857600, "100M"), ("1T", "1024G"), ("1000", "1000")])
def test_the_body_size_follows_max_upload_size(size, expected):
    assert routing.body_size(size) == expected
    http, snippet = nginx_files(plan_of("media"), max_body=routing.body_size(size))
    assert f"client_max_body_size {expected};" in snippet.content


@pytest.mark.parametrize("size", ["100m", "lots", "", True, 1.5])
def test_a_max_upload_size_synapse_refuses_is_refused(size):
    with pytest.raises(ValueError, match="max_upload_size"):
        routing.body_size(size)
