"""Probes of the other hosts over the private network: TCP, Redis AUTH, replication secret.

Each probe returns a :class:`Probe`: an :class:`Outcome` and, when not OK, one
line saying what was seen, for an error message or a status row.  The one
HTTP client (:func:`http_get`, Python's http.client) and the one Redis client
(:class:`RedisSession`, python3-redis) of the package live here too; status asks
local sockets with them.  Used before a worker
host is configured (nothing is written unless they pass) and by ``status``.
"""

from __future__ import annotations

import errno
import http.client
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


# --- HTTP ---------------------------------------------------------------------------


class NotHttp(Exception):
    """What answered did not speak HTTP."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: str


class _Connection(http.client.HTTPConnection):
    """http.client's connection, opened on a UNIX socket (a path) or over TCP."""

    def __init__(self, where: str | Address, timeout: float) -> None:
        host = where.host if isinstance(where, Address) else "localhost"
        port = where.port if isinstance(where, Address) else None
        super().__init__(host, port, timeout=timeout)
        self.where = where

    def connect(self) -> None:
        self.sock = connect(self.where, self.timeout)


def http_get(where: str | Address, path: str, headers: Mapping[str, str] | None = None,
             timeout: float = TIMEOUT, limit: int = 65536) -> HttpAnswer:
    """GET ``path`` (``Connection: close``) on a UNIX socket or TCP, with http.client.

    Raises OSError when nothing answers, :class:`NotHttp` when what answered is
    not HTTP (or closed without an answer).  The one HTTP client of the package
    (status and the probes); at most ``limit`` bytes of the body are read.
    """
    connection = _Connection(where, timeout)
    try:
        connection.request("GET", path, headers={**(headers or {}), "Connection": "close"})
        response = connection.getresponse()
        body = response.read(limit)
    except http.client.HTTPException as exc:
        # RemoteDisconnected is also an OSError: what answered, answered wrongly.
        raise NotHttp(str(exc)[:40]) from exc
    finally:
        connection.close()
    return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      body.decode("utf-8", "replace"))


# --- Redis ------------------------------------------------------------------------


class RespError(Exception):
    """Redis answered with an error, or not as Redis does; the text is one line."""

    def __init__(self, text: str, from_redis: bool = True) -> None:
        super().__init__(text)
        #: An error reply of Redis itself; False: what answered does not speak RESP.
        self.from_redis = from_redis


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind one of redis-py's connection errors, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RedisSession:
    """One connection to Redis with python3-redis, asked a few raw commands.

    No connection pool, no retries and no reply parsing: each :meth:`call`
    sends one command and returns Redis's reply (strings decoded).  Nothing
    can be sent before the connection is open, so opening it raises the
    OSError seen (``FileNotFoundError`` for a missing socket...), as
    :func:`connect` does; a Redis error reply raises :class:`RespError`.
    """

    def __init__(self, where: str | Address, timeout: float) -> None:
        import redis  # status and the probes alone need it: other commands start faster

        self._errors = redis.exceptions
        # From python3-redis 5 (trixie has 6) a new connection says who it is (CLIENT SETINFO)
        # before anything else; a server with a password answers that with NOAUTH, so the
        # connection would fail before our AUTH.  Nothing is sent before our first command.
        quiet = ({"lib_name": None, "lib_version": None}
                 if int(redis.__version__.split(".")[0]) >= 5 else {})
        if isinstance(where, Address):
            self.connection = redis.Connection(host=where.host, port=where.port,
                                               socket_timeout=timeout,
                                               socket_connect_timeout=timeout,
                                               decode_responses=True, **quiet)
        else:
            self.connection = redis.UnixDomainSocketConnection(path=where, socket_timeout=timeout,
                                                               decode_responses=True, **quiet)
        try:
            self.connection.connect()
        except self._errors.RedisError as exc:
            raise (_os_error(exc) or OSError(str(exc))) from exc

    def call(self, *words: str) -> Any:
        errors = self._errors
        try:
            self.connection.send_command(*words)
            return self.connection.read_response()
        except errors.InvalidResponse as exc:
            raise RespError(_quoted_answer(str(exc)), from_redis=False) from exc
        except (errors.TimeoutError, errors.ConnectionError) as exc:
            found = _os_error(exc)
            if found is not None:
                raise found from exc
            if isinstance(exc, errors.TimeoutError):
                raise TimeoutError(str(exc)) from exc
            raise RespError(str(exc)) from exc  # an error reply ("max number of clients")
        except errors.RedisError as exc:
            raise RespError(str(exc)) from exc

    def close(self) -> None:
        self.connection.disconnect()

    def __enter__(self) -> "RedisSession":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


#: Redis's own errors for a wrong password (6.x, 7.x; older: "invalid password").
_WRONG_PASSWORD = ("WRONGPASS", "invalid password", "invalid username-password")


def redis_auth(address: Address, password: str, timeout: float = TIMEOUT) -> Probe:
    """AUTH with the password, then PING: what Synapse's own connection does first."""
    try:
        with RedisSession(address, timeout) as session:
            try:
                session.call("AUTH", password)
            except RespError as exc:
                text = _one_line(exc) or "no answer"
                if exc.from_redis:
                    wrong = any(word in text for word in _WRONG_PASSWORD)
                    return Probe(Outcome.REFUSED if wrong else Outcome.UNEXPECTED,
                                 f"Redis at {address} refuses the password: {text}")
                return Probe(Outcome.UNEXPECTED, f"{address} did not answer as Redis does: {text}")
            try:
                answer = session.call("PING")
            except RespError as exc:
                answer = _one_line(exc)
            if answer != "PONG":
                return Probe(Outcome.UNEXPECTED, f"Redis at {address} answered PING with "
                                                 f"{str(answer)[:120] or 'nothing'}")
            return Probe(Outcome.OK)
    except OSError as exc:
        return Probe(Outcome.UNREACHABLE, f"Redis at {address} is unreachable: {exc.strerror or exc}")


def _quoted_answer(text: str) -> str:
    """What a server that is not Redis answered, from redis-py's words for it.

    >>> _quoted_answer("Protocol Error: b'HTTP/1.1 400 Bad Request'")
    'HTTP/1.1 400 Bad Request'
    >>> _quoted_answer('Protocol error, got "H" as reply type byte')
    'Protocol error, got "H" as reply type byte'
    """
    found = re.fullmatch(r"Protocol Error: b?(['\"])(.*)\1", text, re.DOTALL)
    return found[2] if found else text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120]


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
