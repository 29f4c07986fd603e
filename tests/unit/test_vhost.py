"""The vhost check against real nginx: ``nginx -T`` on whole configurations that
hold the rendered files, judged by core.vhost (which location nginx picks for each
worker path), and the judgement held to what real nginx answers for a request.

The vhosts: the usual one (Synapse's reverse-proxy documentation) with the include
in place of its location; the same with its location left above the include
(shadows every worker path, and ``nginx -t`` passes); one without the include;
and two servers where only the Matrix one includes the snippet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from loopback import free_port, wait_listening
from matrix_synapse_workers.core import nginxconf, vhost
from matrix_synapse_workers.core.catalog import ENDPOINTS
from matrix_synapse_workers.render.files import nginx_files
from support.plans import plan_of

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin")
needs_nginx = pytest.mark.skipif(NGINX is None and not os.environ.get("MSW_REQUIRE_NGINX"),
                                 reason="nginx is not installed")

SYNAPSE_DOC_LOCATION = """
    location ~ ^(/_matrix|/_synapse/client) {
        proxy_pass http://127.0.0.1:%(main)d;
        proxy_set_header X-Forwarded-For $remote_addr;
    }"""
INCLUDE = "\n    include snippets/matrix-synapse-workers.conf;"


def server(port: int, name: str, body: str) -> str:
    return f"server {{\n    listen 127.0.0.1:{port};\n    server_name {name};{body}\n}}\n"


def write_config(tmp: Path, spec: str, sites: dict[str, str]) -> Path:
    """Debian's layout under tmp: nginx.conf, conf.d/ (http context), snippets/, sites-enabled/."""
    http, snippet = nginx_files(plan_of(spec))
    for directory in ("conf.d", "snippets", "sites-enabled", "tmp"):
        (tmp / directory).mkdir(exist_ok=True)
    (tmp / "conf.d" / http.path.name).write_text(http.content)
    (tmp / "snippets" / snippet.path.name).write_text(snippet.content)
    for name, text in sites.items():
        (tmp / "sites-enabled" / name).write_text(text)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {tmp}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(f"{user}daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;\n"
                    f"error_log {tmp}/error.log;\nevents {{}}\nhttp {{\n    access_log off;\n{temp}"
                    f"    include {tmp}/conf.d/*.conf;\n    include {tmp}/sites-enabled/*;\n}}\n")
    return conf


def dump(conf: Path) -> str:
    done = subprocess.run([NGINX, "-T", "-q", "-c", str(conf), "-p", str(conf.parent)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def judged(tmp: Path, spec: str, sites: dict[str, str]) -> vhost.Routing:
    conf = write_config(tmp, spec, sites)
    return vhost.judge(dump(conf), snippet=str(tmp / "snippets" / "matrix-synapse-workers.conf"))


def test_every_catalog_pattern_has_an_example_path():
    missing = [p for e in ENDPOINTS.values() for p in e.patterns if vhost.example_path(p) is None]
    assert not missing
    assert len(vhost.worker_paths()) > 50


@needs_nginx
def test_the_usual_vhost_with_the_include_in_place_of_its_location_routes_to_the_workers(tmp_path):
    routing = judged(tmp_path, "sync:2,client,federation_reader,media",
                     {"matrix": server(18080, "matrix.example.org", INCLUDE)})
    assert routing.ok and len(routing.including) == 1 and routing.checked > 20
    assert vhost.todo(routing) == []


@needs_nginx
def test_the_synapse_doc_location_above_the_include_shadows_every_worker_path(tmp_path):
    site = server(18080, "matrix.example.org", SYNAPSE_DOC_LOCATION % {"main": 8008} + INCLUDE)
    routing = judged(tmp_path, "sync:2,client", {"matrix": site})
    assert not routing.ok
    [shadow] = routing.shadows
    assert shadow.location.where == f"{tmp_path}/sites-enabled/matrix:4"
    assert shadow.location.text == "location ~ ^(/_matrix|/_synapse/client)"
    assert len(shadow.paths) == routing.checked
    [line] = vhost.todo(routing)
    assert line.startswith(f"{tmp_path}/sites-enabled/matrix:4: 'location ~ ^(/_matrix|/_synapse/client)'")
    assert "server_name matrix.example.org" in line and vhost.INCLUDE_LINE in line


@needs_nginx
def test_the_same_location_below_the_include_shadows_nothing(tmp_path):
    site = server(18080, "matrix.example.org", INCLUDE + SYNAPSE_DOC_LOCATION % {"main": 8008})
    assert judged(tmp_path, "sync:2,client", {"matrix": site}).ok


@needs_nginx
def test_a_vhost_without_the_include_is_named_with_the_line_to_add(tmp_path):
    site = server(18080, "matrix.example.org", SYNAPSE_DOC_LOCATION % {"main": 8008})
    routing = judged(tmp_path, "sync", {"matrix": site})
    assert not routing.ok and routing.including == ()
    assert [s.where for s in routing.candidates] == [f"{tmp_path}/sites-enabled/matrix:1"]
    [line] = vhost.todo(routing)
    assert f"the server block at {tmp_path}/sites-enabled/matrix:1 (server_name matrix.example.org)" in line
    assert "with the line 'include snippets/matrix-synapse-workers.conf;'; then: nginx -t" in line


@needs_nginx
def test_only_the_matrix_server_includes_the_snippet(tmp_path):
    sites = {"default": server(18081, "_", "\n    location / { return 404; }"),
             "matrix": server(18080, "matrix.example.org", INCLUDE)}
    routing = judged(tmp_path, "sync,client", sites)
    assert routing.ok
    assert [s.names for s in routing.including] == [("matrix.example.org",)]
    assert routing.candidates == ()  # the default server does not serve /_matrix


@needs_nginx
def test_a_caret_tilde_prefix_stops_the_regexes_and_an_exact_match_wins(tmp_path):
    body = "\n    location ^~ /_matrix/client/ { return 200 admin; }" + INCLUDE
    routing = judged(tmp_path, "sync,federation_reader", {"matrix": server(18080, "m", body)})
    [shadow] = routing.shadows
    assert shadow.location.text == "location ^~ /_matrix/client/"
    assert all(p.startswith("/_matrix/client/") for p in shadow.paths)
    assert not any(p.startswith("/_matrix/federation/") for p in shadow.paths)


@needs_nginx
@pytest.mark.parametrize("above", [True, False])
def test_the_judgement_is_what_real_nginx_does_with_a_request(tmp_path, above):
    """The simulation against nginx itself: each location answers with its own name."""
    port = free_port()
    marked = "\n    location ~ ^(/_matrix|/_synapse/client) { return 200 admin; }"
    site = server(port, "m", (marked + INCLUDE) if above else (INCLUDE + marked))
    conf = write_config(tmp_path, "sync", {"matrix": site})
    snippet = tmp_path / "snippets" / "matrix-synapse-workers.conf"
    # Our locations answer with their line instead of proxying (only the answer changes).
    lines = snippet.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("proxy_pass"):
            lines[number] = "        return 200 snippet;"
    snippet.write_text("\n".join(lines) + "\n")
    routing = vhost.judge(dump(conf), snippet=str(snippet))
    process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)],
                               stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port, process, "nginx")
        path = "/_matrix/client/v3/sync"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            served_by = answer.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert served_by == ("admin" if above else "snippet")
    assert bool(routing.shadows) is above


def test_nested_and_quoted_locations_are_read():
    text = ("# configuration file /etc/nginx/nginx.conf:\n"
            "http {\n server {\n  location /a/ {\n   location ~ \"^/a/b{2}\" { }\n  }\n"
            "  location ~* ^/A/ { }\n }\n}\n")
    [srv] = nginxconf.read_servers(text)
    assert nginxconf.choose(srv.locations, "/a/bb").text == 'location ~ ^/a/b{2}'
    assert nginxconf.choose(srv.locations, "/a/c").text == "location ~* ^/A/"
    assert nginxconf.choose(srv.locations, "/b") is None


@needs_nginx
def test_status_fails_naming_the_file_and_location_or_the_missing_include(tmp_path):
    from matrix_synapse_workers.status.web_checks import check_routing
    shadowing = server(18080, "matrix.example.org", SYNAPSE_DOC_LOCATION % {"main": 8008} + INCLUDE)
    (tmp_path / "a").mkdir()
    [row] = check_routing(judged(tmp_path / "a", "sync", {"matrix": shadowing}))
    assert row.status == "fail" and row.subject == "shadowed"
    assert row.detail.startswith(f"{tmp_path}/a/sites-enabled/matrix:4 'location ~ ^(/_matrix|/_synapse/client)'")
    assert "move it below the line 'include snippets/matrix-synapse-workers.conf;'" in row.advice
    (tmp_path / "b").mkdir()
    without = server(18080, "matrix.example.org", SYNAPSE_DOC_LOCATION % {"main": 8008})
    [row] = check_routing(judged(tmp_path / "b", "sync", {"matrix": without}))
    assert row.status == "fail" and row.subject == "include"
    assert f"{tmp_path}/b/sites-enabled/matrix:1" in row.advice
    (tmp_path / "c").mkdir()
    [row] = check_routing(judged(tmp_path / "c", "sync", {"matrix": server(18080, "m", INCLUDE)}))
    assert row.status == "ok" and "reach the snippet in 1 server block" in row.detail


def test_an_unreadable_dump_is_a_warning_not_a_crash():
    from matrix_synapse_workers.status.web_checks import check_routing
    routing = vhost.judge("# configuration file /etc/nginx/nginx.conf:\nhttp { server { }\n")
    assert routing.error.startswith("nginx -T could not be read: ") and vhost.todo(routing) == []
    [row] = check_routing(routing)
    assert row.status == "warn"
