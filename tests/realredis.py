"""A real redis-server on loopback with a password, started and stopped by a test."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from support.require import need
from loopback import free_port, wait_listening
from matrix_synapse_workers.core.topology import Address


@contextlib.contextmanager
def redis_with_password(directory: Path, password: str) -> Iterator[Address]:
    """Skips (fails under MSW_REQUIRE_REDIS) where redis-server is not installed."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed", "MSW_REQUIRE_REDIS")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--requirepass", password, "--save", "", "--appendonly", "no",
                             "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = Address("127.0.0.1", port)
    try:
        wait_listening(address.host, address.port, proc, "redis-server")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
