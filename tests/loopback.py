"""Servers the tests start on loopback: a free port, and waiting until one listens."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, process: subprocess.Popen, what: str,
                   timeout: float = 10.0) -> None:
    """Until ``host:port`` accepts a connection; fails if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise AssertionError(f"{what} exited: {err}")
            assert time.monotonic() < deadline, f"{what} did not start listening"
            time.sleep(0.05)
