"""Routes to workers on other hosts: TCP servers, fast failure, fallback to main.

The plans are the real ones for a main host with a worker host
(``topology.main_topology`` + ``plan.make_plan``); the last tests run real
nginx on the rendered files against a stand-in main (a UNIX socket) and a
stand-in worker host that answers, refuses, or never completes a connection.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from hostroot import make_root
from nginx_standins import free_port, get, nginx_test, running_nginx, socket_standins, stop, tcp_standin
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.render import routing
from matrix_synapse_workers.system.hostfacts import read_host_facts
from matrix_synapse_workers.core.plan import Plan, make_plan
from matrix_synapse_workers.render.files import nginx_files
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.topology import main_topology

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
        assert "error_page 502 = $msw_after_worker_502;" in body, where
        assert "error_page 504 = $msw_after_worker_504;" in body, where
    # main's own locations do not bounce to themselves
    for where in ("@msw_main ", "/_matrix/ "):
        assert "@msw_main" not in blocks[where]


# --- real nginx ------------------------------------------------------------------

@needs_nginx
@pytest.mark.parametrize("hosts", ["hostb 10.99.0.2 sync,events", "hostc fd00::2 sync:3,client:2"])
def test_nginx_accepts_remote_upstreams(tmp_path, hosts):
    http, snippet = nginx_files(spread_plan(tmp_path, "sync,client,federation_reader", hosts))
    r = nginx_test(tmp_path, http.content, snippet.content)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def worker_host() -> Iterator[dict[str, int]]:
    """Three stand-ins for a worker host's sync worker on 127.0.0.1: one answering,
    one refusing (nothing listens), one whose connections never complete (a full
    listen queue drops the SYNs, as a cut link would)."""
    answering, answering_port = tcp_standin("worker")
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
        yield {"answering": answering_port, "refusing": free_port(),
               "cut": black_hole.getsockname()[1]}
    finally:
        stop(answering)
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
    with socket_standins(http.content, sockets) as moved:
        moved = moved.replace("10.99.0.2:18001", f"127.0.0.1:{worker_host[state]}")
        assert moved.count(f"127.0.0.1:{worker_host[state]}") == 1
        with running_nginx(tmp_path, moved, snippet.content) as listen:
            started = time.monotonic()
            body = get(listen, "/_matrix/client/v3/sync")
            took = time.monotonic() - started
    assert body == answer, (tmp_path / "error.log").read_text()
    assert took < slowest
    if state == "cut":
        assert took >= 2.5, "the fallback came before the connect timeout: not the 504 path"
