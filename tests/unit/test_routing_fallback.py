"""What a client gets when a worker or main fails a request, with real nginx.

The rendered files run unchanged in nginx (only the socket directory moves into
the test's reach) against stand-ins on the sockets: main counts what reaches
it; a worker answers, refuses the connection (a socket nobody listens on: a
stopped worker), reads a request in full and then drops the connection (a
worker killed while handling it), or never reads (a stopped or hung worker, cut
short by a 1 s ``proxy_read_timeout`` set in the test's server block).

A request goes to main after a worker failed only when no worker can have acted
on it, or when it is repeatable; while main cannot be reached, a request it
cannot have acted on gets a Matrix 429 the client retries by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import shutil
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from nginx_standins import running_nginx
from test_routing_remote import spread_plan, worker_host  # noqa: F401 (a fixture)
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.render import routing
from matrix_synapse_workers.render.files import nginx_admin_file, nginx_files

needs_nginx = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")

CREATE_ROOM = "/_matrix/client/v3/createRoom"
MESSAGES = "/_matrix/client/v3/rooms/!r:x/messages"
SEND = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/txn1"
#: Served by main itself in these plans (no presence writer): its own locations.
PRESENCE = "/_matrix/client/v3/presence/@b:x/status"


def files(workers: str) -> tuple[str, str]:
    http, snippet = nginx_files(Plan(plan_workers(select(workers=workers))))
    return http.content, snippet.content


# --- the rendered files ----------------------------------------------------------

def blocks(snippet: str) -> dict[str, str]:
    return dict(re.findall(r"location ([^{]*)\{(.*?)\n    \}", snippet, re.S))


def test_worker_locations_fall_back_through_the_repeatable_judgement():
    _, snippet = files("sync,client,federation_reader,media")
    workers = {where: body for where, body in blocks(snippet).items()
               if where.startswith("~") and "msw_media" not in body}
    assert len(workers) > 5
    for where, body in workers.items():
        assert "recursive_error_pages on;" in body, where
        assert "error_page 502 = $msw_after_worker_502;" in body, where
        assert "error_page 504 = $msw_after_worker_504;" in body, where
        assert "@msw_main" not in body, where


def test_main_locations_answer_a_retry_when_main_is_down():
    _, snippet = files("client")
    located = blocks(snippet)
    for where in ("@msw_main ", "/_matrix/ ", "/_synapse/client/ "):
        assert "error_page 502 = $msw_after_main_502;" in located[where], where
        assert "error_page 504 = $msw_after_main_504;" in located[where], where
    retry = located["@msw_retry "]
    body = re.search(r"return 429 '(.*)';", retry).group(1)
    assert json.loads(body) == {"errcode": "M_LIMIT_EXCEEDED",
                                "error": "The server is restarting, try again shortly",
                                "retry_after_ms": routing.RETRY_AFTER_MS}
    assert f"add_header Retry-After {routing.RETRY_AFTER_MS // 1000} always;" in retry
    assert "default_type application/json;" in retry
    assert "return 502;" in located["@msw_502 "] and "return 504;" in located["@msw_504 "]


def test_only_set_and_return_inside_if():
    """nginx's `if` is safe in a location only around return and set."""
    _, snippet = files("sync,client")
    for body in re.findall(r"if \([^)]*\) \{(.*?)\}", snippet, re.S):
        directives = [line.strip().split()[0] for line in body.strip().splitlines()]
        assert set(directives) <= {"return", "set"}, body


def test_the_judgement_reads_bytes_sent_and_the_method():
    http, _ = files("client")
    judged = re.search(r"map \"\$request_method \$upstream_bytes_sent\" \$msw_repeatable \{(.*?)\n\}",
                       http, re.S).group(1)
    assert "volatile;" in judged and "default 0;" in judged
    assert '"~^(?:GET|HEAD|OPTIONS|PUT|DELETE) " 1;' in judged
    pattern = re.search(r'"~(\^\[A-Z\]\+ .*)" 1;', judged).group(1)
    # the forms nginx prints: servers of one upstream ", ", one upstream to the next " : "
    for sent in ("0", "0, 0", "0 : 0", "0, 0 : 0, 0"):
        assert re.fullmatch(pattern, f"POST {sent}"), sent
    for sent in ("1432", "0, 1432", "0 : 1432", "1432 : 0", "10", "0, 00", ""):
        assert not re.fullmatch(pattern, f"POST {sent}"), sent
    assert "POST" not in routing.REPEATABLE_METHODS and "PATCH" not in routing.REPEATABLE_METHODS


# --- real nginx ------------------------------------------------------------------

@dataclass
class Log:
    """What reached the stand-ins: (process, method, path) of each request read."""
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def count(self, method: str, path: str, process: str | None = None) -> int:
        return sum(1 for p, m, r in self.seen if (m, r) == (method, path) and process in (None, p))


def _handler(label: str, log: Log, behaviour: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self) -> None:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline or not self.parse_request():
                self.close_connection = True
                return
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            log.seen.append((label, self.command, self.path.partition("?")[0]))
            if behaviour == "dies":     # read it all, then gone without a word
                self.close_connection = True
                return
            body = label.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass
    return Handler


class _Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def standin(path: str, behaviour: str, log: Log) -> Iterator[None]:
    """One process's socket: ``answers``, ``dies`` (after reading the request),
    ``hangs`` (listens, never reads) or ``refuses`` (bound, nobody listens)."""
    label = Path(path).stem
    if behaviour in ("answers", "dies"):
        server = _Unix(path, _handler(label, log, behaviour))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
        return
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    if behaviour == "hangs":
        sock.listen(16)
    try:
        yield
    finally:
        sock.close()


@contextlib.contextmanager
def deployment(tmp_path: Path, workers: str, main: str, rendered: tuple[str, str] | None = None,
               **behaviours: str) -> Iterator[tuple[int, Log]]:
    """nginx on the rendered files (of ``workers``, or ``rendered``); main and each
    named worker behaving as told (others answer).  Yields nginx's port and the log
    of every stand-in."""
    http, snippet = rendered or files(workers)
    sockets = tmp_path / "run"
    sockets.mkdir()
    http = http.replace(str(paths.SOCKET_DIR), str(sockets))
    log = Log()
    with contextlib.ExitStack() as stack:
        for path in sorted(set(re.findall(r"server unix:(\S+);", http))):
            behaviour = main if Path(path).stem == "main" else behaviours.get(
                Path(path).stem.replace("-", "_"), "answers")
            stack.enter_context(standin(path, behaviour, log))
        # the admin's server block: a short read timeout, so a hung worker costs 1 s
        listen = stack.enter_context(running_nginx(
            tmp_path, http, "proxy_read_timeout 1s;\n" + snippet))
        yield listen, log


def ask(listen: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
    try:
        body = b"{}" if method in ("POST", "PUT") else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@needs_nginx
def test_a_post_a_worker_read_and_died_on_is_not_sent_to_main(tmp_path):
    with deployment(tmp_path, "client", "answers", client_1="dies") as (listen, log):
        status, _, _ = ask(listen, "POST", CREATE_ROOM)
        assert status == 502, (tmp_path / "error.log").read_text()
        # one read, by the worker: main never saw it (it would have made a second room)
        assert log.seen == [("client-1", "POST", CREATE_ROOM)]
        status, _, body = ask(listen, "GET", MESSAGES)
        assert (status, body) == (200, b"main")
        status, _, body = ask(listen, "PUT", SEND)
        assert (status, body) == (200, b"main")
    # worker once, main once, for each repeatable request
    for method, path in (("GET", MESSAGES), ("PUT", SEND)):
        assert log.count(method, path, "client-1") == log.count(method, path, "main") == 1


@needs_nginx
def test_a_pool_where_one_refuses_and_one_dies_still_keeps_the_post_from_main(tmp_path):
    with deployment(tmp_path, "client:2", "answers", client_1="refuses",
                    client_2="dies") as (listen, log):
        status, _, _ = ask(listen, "POST", CREATE_ROOM)
        assert status == 502, (tmp_path / "error.log").read_text()
        assert log.seen == [("client-2", "POST", CREATE_ROOM)]
        # both now out of the pool for fail_timeout: nginx tries none, so main may have it
        status, _, body = ask(listen, "POST", CREATE_ROOM)
        assert (status, body) == (200, b"main")
    assert log.seen == [("client-2", "POST", CREATE_ROOM), ("main", "POST", CREATE_ROOM)]


@needs_nginx
def test_a_refused_worker_sends_every_method_to_main(tmp_path):
    with deployment(tmp_path, "client", "answers", client_1="refuses") as (listen, log):
        for method, path in (("POST", CREATE_ROOM), ("GET", MESSAGES), ("PUT", SEND)):
            status, _, body = ask(listen, method, path)
            assert (status, body) == (200, b"main"), (method, (tmp_path / "error.log").read_text())
    assert [p for p, _, _ in log.seen] == ["main"] * 3


@needs_nginx
def test_a_hung_worker_keeps_a_post_and_gives_its_504(tmp_path):
    with deployment(tmp_path, "client", "answers", client_1="hangs") as (listen, log):
        status, _, _ = ask(listen, "POST", CREATE_ROOM)
        assert status == 504
        status, _, body = ask(listen, "GET", MESSAGES)
        assert (status, body) == (200, b"main")
    assert log.seen == [("main", "GET", MESSAGES)]


def assert_retry(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 429, (status, body)
    assert json.loads(body) == {"errcode": "M_LIMIT_EXCEEDED",
                                "error": "The server is restarting, try again shortly",
                                "retry_after_ms": routing.RETRY_AFTER_MS}
    assert headers["content-type"] == "application/json"
    assert headers["retry-after"] == str(routing.RETRY_AFTER_MS // 1000)
    assert headers["access-control-allow-origin"] == "*"


@needs_nginx
def test_main_down_too_answers_a_retry_for_what_nobody_read(tmp_path):
    with deployment(tmp_path, "client", "refuses", client_1="refuses") as (listen, log):
        for method, path in (("POST", CREATE_ROOM), ("GET", MESSAGES), ("PUT", SEND),
                             ("POST", PRESENCE), ("GET", PRESENCE)):
            assert_retry(ask(listen, method, path))
        status, headers, _ = ask(listen, "OPTIONS", CREATE_ROOM)  # a browser's preflight
        assert status == 204 and headers["access-control-allow-origin"] == "*"
    assert log.seen == []


@needs_nginx
def test_main_down_after_a_worker_read_the_post_gives_the_workers_error(tmp_path):
    with deployment(tmp_path, "client", "refuses", client_1="dies") as (listen, log):
        status, _, _ = ask(listen, "POST", CREATE_ROOM)
        assert status == 502
        assert_retry(ask(listen, "GET", MESSAGES))
    assert log.seen == [("client-1", "POST", CREATE_ROOM), ("client-1", "GET", MESSAGES)]


@needs_nginx
def test_main_that_read_a_post_and_died_gives_502_not_a_retry(tmp_path):
    with deployment(tmp_path, "client", "dies") as (listen, log):
        status, _, _ = ask(listen, "POST", PRESENCE)
        assert status == 502
        assert_retry(ask(listen, "GET", PRESENCE))   # a read main dropped: retried
        assert_retry(ask(listen, "PUT", PRESENCE))
    assert log.seen == [("main", "POST", PRESENCE), ("main", "GET", PRESENCE),
                        ("main", "PUT", PRESENCE)]


@needs_nginx
def test_main_that_read_a_post_a_worker_refused_gives_502_not_a_retry(tmp_path):
    """Judged again after main failed: the worker's "nothing sent" no longer holds."""
    with deployment(tmp_path, "client", "dies", client_1="refuses") as (listen, log):
        status, _, _ = ask(listen, "POST", CREATE_ROOM)
        assert status == 502, (tmp_path / "error.log").read_text()
        assert_retry(ask(listen, "GET", MESSAGES))
    assert log.seen == [("main", "POST", CREATE_ROOM), ("main", "GET", MESSAGES)]


@needs_nginx
@pytest.mark.parametrize("state, answer", [("refusing", "main"), ("cut", "main")])
def test_a_post_to_a_worker_host_never_reached_goes_to_main(tmp_path, worker_host, state, answer):
    """Over TCP nginx counts the connect time even of a refused connection, but sends
    nothing: refused, and no connection within the connect timeout, both go to main."""
    http_file, snippet = nginx_files(spread_plan(tmp_path, "sync", "hostb 10.99.0.2 client"))
    assert "server unix:/run/matrix-synapse/client" not in http_file.content
    moved = re.sub(r"10\.99\.0\.2:\d+", f"127.0.0.1:{worker_host[state]}", http_file.content)
    with deployment(tmp_path, "", "answers", (moved, snippet.content)) as (listen, log):
        status, _, body = ask(listen, "POST", CREATE_ROOM)
    assert (status, body.decode()) == (200, answer), (tmp_path / "error.log").read_text()
    assert log.seen == [("main", "POST", CREATE_ROOM)]


# --- issue 25: every route class, while its process restarts ------------------------
# A stream writer's requests and the media repository's cannot go to main (main would
# refuse them, forward them to the same writer, or has no media repository): while
# their process is down the client gets the 429 it retries, and main sees nothing.

TYPING = "/_matrix/client/v3/rooms/!r:x/typing/@a:x"
TO_DEVICE = "/_matrix/client/v3/sendToDevice/m.test/t1"
MEDIA = "/_matrix/media/v3/config"
SYNC = "/_matrix/client/v3/sync?since=s1"
FEDERATION = "/_matrix/federation/v1/send/t1"
MEDIA_ADMIN = "/_synapse/admin/v1/purge_media_cache"
USERS_ADMIN = "/_synapse/admin/v2/users/@a:x"


@needs_nginx
@pytest.mark.parametrize("behaviour", ["refuses", "dies"])
def test_a_writer_restarting_gets_a_retry_never_main(tmp_path, behaviour):
    with deployment(tmp_path, "typing,to_device,client", "answers", typing_1=behaviour,
                    to_device_1=behaviour) as (listen, log):
        for method, path in (("PUT", TYPING), ("PUT", TO_DEVICE)):
            assert_retry(ask(listen, method, path))
    assert all(p != "main" for p, _, _ in log.seen), log.seen


@needs_nginx
def test_a_media_worker_restarting_gets_a_retry_never_main(tmp_path):
    with deployment(tmp_path, "media", "answers", media_1="refuses") as (listen, log):
        assert_retry(ask(listen, "GET", MEDIA))
        assert_retry(ask(listen, "POST", "/_matrix/media/v3/upload"))
    assert log.seen == []


@needs_nginx
def test_a_post_a_writer_read_and_died_on_keeps_its_error(tmp_path):
    with deployment(tmp_path, "receipts", "answers", receipts_1="dies") as (listen, log):
        status, _, _ = ask(listen, "POST", "/_matrix/client/v3/rooms/!r:x/receipt/m.read/$e")
        assert status == 502
    assert [p for p, _, _ in log.seen] == ["receipts-1"]


@needs_nginx
@pytest.mark.parametrize("path", [SYNC, FEDERATION, MESSAGES])
def test_a_generic_pool_down_falls_back_to_main_and_with_main_down_retries(tmp_path, path):
    with deployment(tmp_path, "sync:2,client,federation_reader", "answers", sync_1="refuses",
                    sync_2="refuses", client_1="refuses",
                    federation_reader_1="refuses") as (listen, log):
        method = "PUT" if path == FEDERATION else "GET"
        status, _, body = ask(listen, method, path)
        assert (status, body) == (200, b"main")
    shutil.rmtree(tmp_path / "run")
    with deployment(tmp_path, "sync:2,client,federation_reader", "refuses", sync_1="refuses",
                    sync_2="refuses", client_1="refuses",
                    federation_reader_1="refuses") as (listen, _):
        assert_retry(ask(listen, "PUT" if path == FEDERATION else "GET", path))


@needs_nginx
def test_one_sync_worker_of_a_sticky_pool_down_the_other_answers(tmp_path):
    with deployment(tmp_path, "sync:2", "answers", sync_1="refuses") as (listen, log):
        for n in range(4):
            status, _, body = ask(listen, "GET", f"/_matrix/client/v3/sync?since=s{n}&access_token=syt_dTE_{n}")
            assert (status, body) == (200, b"sync-2")
    assert {p for p, _, _ in log.seen} == {"sync-2"}


def admin_deployment(tmp_path: Path, workers: str, main: str, **behaviours: str):
    """The admin snippet in its own server block (as admins include it)."""
    plan = Plan(plan_workers(select(workers=workers)))
    http, _ = nginx_files(plan)
    return deployment(tmp_path, workers, main, (http.content, nginx_admin_file(plan).content),
                      **behaviours)


@needs_nginx
def test_admin_media_api_with_its_worker_down_retries_never_main(tmp_path):
    with admin_deployment(tmp_path, "media", "answers", media_1="refuses") as (listen, log):
        assert_retry(ask(listen, "POST", MEDIA_ADMIN))
        status, _, body = ask(listen, "GET", USERS_ADMIN)
        assert (status, body) == (200, b"main")
    assert [p for p, _, _ in log.seen] == ["main"]


@needs_nginx
def test_admin_api_with_main_down_retries(tmp_path):
    with admin_deployment(tmp_path, "media", "refuses") as (listen, log):
        assert_retry(ask(listen, "GET", USERS_ADMIN))
        status, _, body = ask(listen, "POST", MEDIA_ADMIN)
        assert (status, body) == (200, b"media-1")


@needs_nginx
def test_mas_paths_with_main_down_retry(tmp_path):
    plan = Plan(plan_workers(select(workers="client")))
    http, snippet = nginx_files(plan, mas=True)
    with deployment(tmp_path, "client", "refuses", (http.content, snippet.content)) as (listen, _):
        assert_retry(ask(listen, "GET", routing.MAS_TO_SYNAPSE + "users/x"))


@needs_nginx
def test_the_error_handling_from_before_gives_the_proxys_errors(tmp_path):
    """client_retries=False (only the restart benchmark renders it): what clients got
    before issue 25, to measure against: 502 from main, a writer's request sent to main."""
    plan = Plan(plan_workers(select(workers="typing,client")))
    http, snippet = nginx_files(plan, client_retries=False)
    with deployment(tmp_path, "", "refuses", (http.content, snippet.content)) as (listen, _):
        assert ask(listen, "GET", PRESENCE)[0] == 502
    shutil.rmtree(tmp_path / "run")
    with deployment(tmp_path, "", "answers", (http.content, snippet.content),
                    typing_1="refuses") as (listen, _):
        status, _, body = ask(listen, "PUT", TYPING)
        assert (status, body) == (200, b"main")
