"""Run real nginx on rendered files against stand-in Synapse processes.

Each stand-in answers every GET with its own name, so a test sees which
process nginx chose.  Only addresses are moved into the test's reach (the
socket directory, a worker host's address); the rest of the files is as
rendered.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socketserver
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Iterator

from loopback import free_port, wait_listening
from matrix_synapse_workers.core import paths


def nginx_test(tmp_path: Path, http: str, snippet: str) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the two files in a whole configuration of their own."""
    conf = nginx_conf(tmp_path, http, snippet, 18080)
    return subprocess.run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(tmp_path)],
                          capture_output=True, text=True)


def nginx_conf(tmp_path: Path, http: str, snippet: str, listen: int,
               beside: str = "", beside_first: bool = False) -> Path:
    """A whole nginx.conf with the two files in the contexts Debian's layout puts them in.

    ``beside``: the admin's own lines in the server block, after the include (before it
    with ``beside_first``)."""
    (tmp_path / "http.conf").write_text(http)
    (tmp_path / "snippet.conf").write_text(snippet)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    include = f"    include {tmp_path}/snippet.conf;\n"
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n{temp}  include {tmp_path}/http.conf;\n"
        f"  server {{\n    listen 127.0.0.1:{listen};\n"
        + (beside + include if beside_first else include + beside) + "  }\n}\n")
    return conf


class _Answer(http.server.BaseHTTPRequestHandler):
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


def serve(server: socketserver.BaseServer, label: str) -> socketserver.BaseServer:
    server.label = label  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def tcp_standin(label: str) -> tuple[socketserver.BaseServer, int]:
    """A stand-in on a free loopback port, and the port."""
    server = _TcpHTTP(("127.0.0.1", 0), _Answer)
    return serve(server, label), int(server.socket.getsockname()[1])


def stop(server: socketserver.BaseServer) -> None:
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def socket_standins(http_conf: str, directory: Path) -> Iterator[str]:
    """A stand-in on every UNIX socket the http file names, moved into ``directory``;
    yields the moved file.  Each answers with its socket's name (``main``, ``sync-1``)."""
    moved = http_conf.replace(str(paths.SOCKET_DIR), str(directory))
    servers = [serve(_UnixHTTP(path, _Answer), Path(path).stem)
               for path in sorted(set(re.findall(r"server unix:(\S+);", moved)))]
    try:
        yield moved
    finally:
        for server in servers:
            stop(server)


@contextlib.contextmanager
def running_nginx(tmp_path: Path, http: str, snippet: str) -> Iterator[int]:
    """nginx serving the files on a free loopback port (yielded), stopped afterwards."""
    listen = free_port()
    conf = nginx_conf(tmp_path, http, snippet, listen)
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", listen, nginx, "nginx")
        yield listen
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


def get(listen: int, path: str, headers: dict[str, str] | None = None) -> str:
    """The body of a GET through nginx (the name of the stand-in that answered)."""
    request = urllib.request.Request(f"http://127.0.0.1:{listen}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200
        return r.read().decode()
