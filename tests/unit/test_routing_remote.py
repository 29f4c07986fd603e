"""Routes to workers on other hosts: TCP servers, fast failure, fallback to main.

The plans are the real ones for a main host with a worker host
(``topology.main_topology`` + ``plan.make_plan``); the last tests run real
nginx on the rendered files against a stand-in main (a UNIX socket) and a
stand-in worker host that answers, refuses, or never completes a connection.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from hostroot import make_root
from matrix_synapse_workers import paths, routing
from matrix_synapse_workers.hostfacts import read_host_facts
from matrix_synapse_workers.plan import Plan, make_plan
from matrix_synapse_workers.render import nginx_files
from matrix_synapse_workers.selection import select
from matrix_synapse_workers.topology import main_topology

needs_nginx = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed")


def spread_plan(tmp_path: Path, local: str = "sync,client", hosts: str = "hostb 10.99.0.2 sync,events",
                ) -> Plan:
    facts = read_host_facts(make_root(tmp_path))
    return make_plan(select(workers=local), facts, main_topology(hosts, "10.99.0.1"))


def upstream_blocks(http: str) -> dict[str, list[str]]:
    return {name: re.findall(r"^    server (.*);$", body, re.M)
            for name, body in re.findall(r"^upstream (\S+) \{\n(.*?)^\}", http, re.M | re.S)}


def test_a_pool_mixes_local_sockets_and_remote_addresses(tmp_path):
    http, _ = nginx_files(spread_plan(tmp_path))
    upstreams = upstream_blocks(http.content)
    assert upstreams["msw_sync_by_user"] == [
        f"unix:{paths.SOCKET_DIR}/sync-1.sock", "10.99.0.2:18001 max_fails=1 fail_timeout=10s"]
    # main stays on its socket, whatever runs elsewhere
    assert upstreams["msw_main"] == [f"unix:{paths.MAIN_HTTP_SOCKET}"]
    # a local-only pool has no failure parameters
    assert upstreams["msw_client"] == [f"unix:{paths.SOCKET_DIR}/client-1.sock"]


def test_every_server_line_is_the_workers_own_upstream(tmp_path):
    plan = spread_plan(tmp_path, "sync:2,client,federation_reader", "hostb 10.99.0.2 sync:2,client")
    model = routing.nginx_model(plan)
    by_name = {w.name: w for w in plan.workers}
    for upstream in model.upstreams:
        assert len(upstream.servers) == len(upstream.workers) > 0
        for line, name in zip(upstream.servers, upstream.workers):
            worker = by_name[name]
            assert line.split()[0] == worker.http_upstream
            assert ("max_fails=1" in line) == worker.remote


def test_an_ipv6_worker_host_is_bracketed(tmp_path):
    http, _ = nginx_files(spread_plan(tmp_path, "client", "hostc fd00::2 sync"))
    assert upstream_blocks(http.content)["msw_sync_by_user"] == [
        "[fd00::2]:18001 max_fails=1 fail_timeout=10s"]


def test_a_pool_only_on_another_host_still_routes_there(tmp_path):
    plan = spread_plan(tmp_path, "client", "hostb 10.99.0.2 sync:2")
    assert routing.destination(plan, "/_matrix/client/v3/sync", "GET") == (
        "sync", ("sync-1-hostb", "sync-2-hostb"))
    row = next(r for r in routing.route_table(plan) if r["endpoints"] == "sync")
    assert row["to"] == ["sync-1-hostb", "sync-2-hostb"]


def test_worker_locations_fail_fast_and_fall_back_on_502_and_504(tmp_path):
    _, snippet = nginx_files(spread_plan(tmp_path))
    blocks = dict(re.findall(r"location ([^{]*)\{(.*?)\n    \}", snippet.content, re.S))
    workers = {where: body for where, body in blocks.items() if where.startswith("~")}
    assert workers
    for where, body in workers.items():
        assert f"proxy_connect_timeout {routing.CONNECT_TIMEOUT};" in body, where
        assert "error_page 502 504 = @msw_main;" in body, where
    # main's own locations do not bounce to themselves
    for where in ("@msw_main ", "/_matrix/ "):
        assert "error_page" not in blocks[where]


# --- real nginx ------------------------------------------------------------------

def nginx_conf(tmp_path: Path, http: str, snippet: str, listen: int) -> Path:
    (tmp_path / "http.conf").write_text(http)
    (tmp_path / "snippet.conf").write_text(snippet)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n{temp}  include {tmp_path}/http.conf;\n"
        f"  server {{\n    listen 127.0.0.1:{listen};\n    include {tmp_path}/snippet.conf;\n  }}\n}}\n")
    return conf


@needs_nginx
@pytest.mark.parametrize("hosts", ["hostb 10.99.0.2 sync,events", "hostc fd00::2 sync:3,client:2"])
def test_nginx_accepts_remote_upstreams(tmp_path, hosts):
    http, snippet = nginx_files(spread_plan(tmp_path, "sync,client,federation_reader", hosts))
    conf = nginx_conf(tmp_path, http.content, snippet.content, 18080)
    r = subprocess.run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the name of the server it stands for."""

    def do_GET(self) -> None:
        body = self.server.label.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpHTTP(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _serve(server: socketserver.BaseServer, label: str) -> socketserver.BaseServer:
    server.label = label  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def worker_host() -> Iterator[dict[str, int]]:
    """Three stand-ins for a worker host's sync worker on 127.0.0.1: one answering,
    one refusing (nothing listens), one whose connections never complete (a full
    listen queue drops the SYNs, as a cut link would)."""
    answering = _serve(_TcpHTTP(("127.0.0.1", 0), _Answer), "worker")
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(black_hole.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield {"answering": answering.server_address[1], "refusing": _free_port(),
               "cut": black_hole.getsockname()[1]}
    finally:
        answering.shutdown()
        answering.server_close()
        for s in fillers + [black_hole]:
            s.close()


@needs_nginx
@pytest.mark.parametrize("state, answer, slowest", [
    ("answering", "worker", 2.0),
    ("refusing", "main", 2.0),          # 502: straight to main
    ("cut", "main", 3.0 + 4.0),         # 504 after the 3 s connect timeout
])
def test_a_cut_off_worker_host_falls_back_to_main(tmp_path, worker_host, state, answer, slowest):
    """The rendered files, run by nginx: only addresses are moved into this test's reach."""
    http, snippet = nginx_files(spread_plan(tmp_path, "client", "hostb 10.99.0.2 sync"))
    sockets = tmp_path / "run"
    sockets.mkdir()
    main = _serve(_UnixHTTP(str(sockets / paths.MAIN_HTTP_SOCKET.name), _Answer), "main")
    moved = http.content.replace(str(paths.SOCKET_DIR), str(sockets)).replace(
        "10.99.0.2:18001", f"127.0.0.1:{worker_host[state]}")
    assert moved.count(f"127.0.0.1:{worker_host[state]}") == 1
    listen = _free_port()
    conf = nginx_conf(tmp_path, moved, snippet.content, listen)
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                assert nginx.poll() is None, nginx.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/_matrix/client/v3/sync", timeout=30) as r:
            body = r.read().decode()
        took = time.monotonic() - started
        assert (r.status, body) == (200, answer), (tmp_path / "error.log").read_text()
        assert took < slowest
        if state == "cut":
            assert took >= 2.5, "the fallback came before the connect timeout: not the 504 path"
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        main.shutdown()
        main.server_close()
