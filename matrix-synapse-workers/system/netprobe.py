"""Probes of the other hosts over the private network: TCP, Redis AUTH, replication secret.

Each probe returns a :class:`Probe`: ``ok`` and, when not, one line saying
what was seen, for an error message or a status row.  Used before a worker
host is configured (nothing is written unless they pass) and by ``status``.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from ..core.topology import Address

TIMEOUT = 3.0
#: A replication endpoint main always registers (its path ends in a transaction
#: id, as for every cached replication endpoint); an unknown stream name makes it
#: answer 400 once the secret is accepted, and 500 when it is refused.
SECRET_PROBE_PATH = ("/_synapse/replication/get_repl_stream_updates/msw-secret-probe/msw-probe"
                     "?from_token=0&upto_token=0")


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str = ""


def connect(address: Address, timeout: float) -> socket.socket:
    return socket.create_connection((address.host, address.port), timeout=timeout)


def tcp(address: Address, timeout: float = TIMEOUT) -> Probe:
    try:
        with connect(address, timeout):
            return Probe(True)
    except OSError as exc:
        return Probe(False, f"{address} is unreachable: {exc.strerror or exc}")


def _recv_line(sock: socket.socket) -> bytes:
    """The first line of the answer (a Redis status reply is one line)."""
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].strip()


def redis_auth(address: Address, password: str, timeout: float = TIMEOUT) -> Probe:
    """AUTH with the password, then PING: what Synapse's own connection does first."""
    def bulk(*words: str) -> bytes:
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            raw = word.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(parts)
    try:
        with connect(address, timeout) as sock:
            sock.sendall(bulk("AUTH", password))
            answer = _recv_line(sock)
            if answer != b"+OK":
                text = answer.decode(errors="replace")[:120] or "no answer"
                if answer.startswith(b"-"):
                    return Probe(False, f"Redis at {address} refuses the password: {text}")
                return Probe(False, f"{address} did not answer as Redis does: {text}")
            sock.sendall(bulk("PING"))
            answer = _recv_line(sock)
            if answer != b"+PONG":
                return Probe(False, f"Redis at {address} answered PING with "
                                    f"{answer.decode(errors='replace')[:120] or 'nothing'}")
            return Probe(True)
    except OSError as exc:
        return Probe(False, f"Redis at {address} is unreachable: {exc.strerror or exc}")


def http_get(address: Address, path: str, headers: dict[str, str] | None = None,
             timeout: float = TIMEOUT) -> tuple[int | None, str, str]:
    """(status, body, error) of a plain HTTP/1.0 GET."""
    lines = [f"GET {path} HTTP/1.0", f"Host: {address}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    try:
        with connect(address, timeout) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return None, "", f"{address} is unreachable: {exc.strerror or exc}"
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, "", f"{address} did not answer HTTP"
    return status, body.decode(errors="replace"), ""


def replication_secret(address: Address, secret: str, timeout: float = TIMEOUT) -> Probe:
    """Whether main's replication listener accepts ``secret``."""
    status, body, error = http_get(address, SECRET_PROBE_PATH,
                                   {"Authorization": f"Bearer {secret}"}, timeout)
    if error:
        return Probe(False, f"main's replication listener {error}")
    if status == 400 and "Unknown stream" in body:
        return Probe(True)
    if status == 500:
        return Probe(False, f"main's replication listener at {address} refuses the replication "
                            "secret (the secret file differs from the main host's)")
    return Probe(False, f"main's replication listener at {address} answered HTTP {status}, "
                        "not what Synapse's replication endpoint answers")


def is_local_address(host: str) -> bool:
    """Whether this machine holds ``host`` (binding to it succeeds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
