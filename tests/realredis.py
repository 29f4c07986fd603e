"""A real redis-server on loopback with a password, started and stopped by a test."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from matrix_synapse_workers.topology import Address


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_with_password(directory: Path, password: str) -> Iterator[Address]:
    """Skips (fails under MSW_REQUIRE_REDIS) where redis-server is not installed."""
    if shutil.which("redis-server") is None:
        if os.environ.get("MSW_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--requirepass", password, "--save", "", "--appendonly", "no",
                             "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = Address("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((address.host, address.port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
