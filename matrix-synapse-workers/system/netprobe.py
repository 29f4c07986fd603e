"""Probes of the other hosts over the private network: TCP, Redis AUTH, replication secret.

Each probe returns a :class:`Probe`: an :class:`Outcome` and, when not OK, one
line saying what was seen, for an error message or a status row.  The one
HTTP client (:func:`http_get`) and the one Redis client (:class:`Resp`) of the
package live here too; status asks local sockets with them.  Used before a worker
host is configured (nothing is written unless they pass) and by ``status``.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from ..core.topology import Address

TIMEOUT = 3.0
#: A replication endpoint main always registers (its path ends in a transaction
#: id, as for every cached replication endpoint); an unknown stream name makes it
#: answer 400 once the secret is accepted, and 500 when it is refused.
SECRET_PROBE_PATH = ("/_synapse/replication/get_repl_stream_updates/msw-secret-probe/msw-probe"
                     "?from_token=0&upto_token=0")


class Outcome(Enum):
    """What a probe of another host met; callers branch on this, never on the wording."""

    OK = "ok"
    #: Nothing answered (refused connection, timeout, no route).
    UNREACHABLE = "unreachable"
    #: The expected server answered and refused the secret or password.
    REFUSED = "refused"
    #: Something answered, but not as the expected server does.
    UNEXPECTED = "unexpected"


@dataclass(frozen=True)
class Probe:
    outcome: Outcome
    #: One line saying what was seen, when not OK.
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def connect(where: str | Address, timeout: float) -> socket.socket:
    """A connected stream socket: to a UNIX socket (a path) or over TCP (an :class:`Address`)."""
    if isinstance(where, Address):
        return socket.create_connection((where.host, where.port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(where)
    except OSError:
        sock.close()
        raise
    return sock


def tcp(address: Address, timeout: float = TIMEOUT) -> Probe:
    try:
        with connect(address, timeout):
            return Probe(Outcome.OK)
    except OSError as exc:
        return Probe(Outcome.UNREACHABLE, f"{address} is unreachable: {exc.strerror or exc}")


# --- HTTP -------------------------------------------------------------------------


class NotHttp(Exception):
    """What answered did not speak HTTP."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: str


def http_get(where: str | Address, path: str, headers: Mapping[str, str] | None = None,
             timeout: float = TIMEOUT, limit: int = 65536) -> HttpAnswer:
    """GET ``path`` over HTTP/1.1 (``Connection: close``) on a UNIX socket or TCP.

    Raises OSError when nothing answers, :class:`NotHttp` when what answered is
    not HTTP.  The one HTTP client of the package (status and the probes).
    """
    host = "localhost" if not isinstance(where, Address) else str(where)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Connection: close")
    with connect(where, timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while len(data) < limit:
            chunk = sock.recv(8192)
            if not chunk:
                break
            data += chunk
            if _complete(data):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", head_lines[0] if head_lines else "")
    if not match:
        raise NotHttp(data[:20])
    answer_headers = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in head_lines[1:])}
    if "chunked" in answer_headers.get("transfer-encoding", ""):
        body = _unchunk(body)
    return HttpAnswer(int(match[1]), answer_headers, body.decode("utf-8", "replace"))


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return found is not None and len(body) >= int(found[1])


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


# --- Redis ------------------------------------------------------------------------


class RespError(Exception):
    pass


def encode(*words: str) -> bytes:
    """One Redis command in RESP (an array of bulk strings)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        raw = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class Resp:
    """Just enough of the Redis protocol to ask a few questions: the one Redis client."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")
        self.sock = sock

    def call(self, *words: str) -> Any:
        self.sock.sendall(encode(*words))
        return self._read()

    def _read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise RespError("connection closed")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RespError(f"unexpected reply {line[:20]!r}")


def _recv_line(sock: socket.socket) -> bytes:
    """The first line of the answer (a Redis status reply is one line)."""
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].strip()


#: Redis's own errors for a wrong password (6.x, 7.x; older: "invalid password").
_WRONG_PASSWORD = ("WRONGPASS", "invalid password", "invalid username-password")


def redis_auth(address: Address, password: str, timeout: float = TIMEOUT) -> Probe:
    """AUTH with the password, then PING: what Synapse's own connection does first.

    Reads raw lines rather than through :class:`Resp` so that a server that is
    not Redis is quoted as it answered.
    """
    try:
        with connect(address, timeout) as sock:
            sock.sendall(encode("AUTH", password))
            answer = _recv_line(sock)
            if answer != b"+OK":
                text = answer.decode(errors="replace")[:120] or "no answer"
                if answer.startswith(b"-"):
                    wrong = any(word in text for word in _WRONG_PASSWORD)
                    return Probe(Outcome.REFUSED if wrong else Outcome.UNEXPECTED,
                                 f"Redis at {address} refuses the password: {text}")
                return Probe(Outcome.UNEXPECTED, f"{address} did not answer as Redis does: {text}")
            sock.sendall(encode("PING"))
            answer = _recv_line(sock)
            if answer != b"+PONG":
                return Probe(Outcome.UNEXPECTED, f"Redis at {address} answered PING with "
                                                 f"{answer.decode(errors='replace')[:120] or 'nothing'}")
            return Probe(Outcome.OK)
    except OSError as exc:
        return Probe(Outcome.UNREACHABLE, f"Redis at {address} is unreachable: {exc.strerror or exc}")


def replication_secret(address: Address, secret: str, timeout: float = TIMEOUT) -> Probe:
    """Whether main's replication listener accepts ``secret``."""
    try:
        answer = http_get(address, SECRET_PROBE_PATH, {"Authorization": f"Bearer {secret}"}, timeout)
    except OSError as exc:
        return Probe(Outcome.UNREACHABLE,
                     f"main's replication listener {address} is unreachable: {exc.strerror or exc}")
    except NotHttp:
        return Probe(Outcome.UNEXPECTED, f"main's replication listener {address} did not answer HTTP")
    if answer.status == 400 and "Unknown stream" in answer.body:
        return Probe(Outcome.OK)
    if answer.status == 500:
        return Probe(Outcome.REFUSED, f"main's replication listener at {address} refuses the "
                                      "replication secret (the secret file differs from the main host's)")
    return Probe(Outcome.UNEXPECTED, f"main's replication listener at {address} answered HTTP "
                                     f"{answer.status}, not what Synapse's replication endpoint answers")


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
