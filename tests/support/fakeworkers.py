"""Stand-ins for Synapse processes: HTTP on UNIX sockets, answering with their own name.

Only what a proxy meets: any method on any path answers 200 with the process's
name as the body, and /health answers OK (HAProxy's checks).
"""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import threading
from pathlib import Path


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.open: set[socket.socket] = set()

    def get_request(self):  # type: ignore[no-untyped-def]
        connection, address = super().get_request()
        self.open.add(connection)
        return connection, address

    def close_all(self) -> None:
        """A stopped process drops its kept-alive connections too."""
        for connection in list(self.open):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _handler(name: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Path", self.path)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer

        def address_string(self) -> str:  # a UNIX socket has no peer address
            return name

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class FakeWorker:
    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.sock"
        self.server = _Server(str(self.path), _handler(name))
        os.chmod(self.path, 0o666)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.close_all()
        self.path.unlink(missing_ok=True)
