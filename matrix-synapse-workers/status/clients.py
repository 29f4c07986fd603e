"""The small clients and looks of ``status``: /health over a socket, Redis's client
list, ``ss``, systemd's unit states and sandbox scores, file modes, group members,
debconf's answers and nginx's configuration.  Each asks once and judges nothing."""

from __future__ import annotations

import grp

import os
import pwd
import re
import socket
import stat as statmod
import subprocess
from typing import Any, Mapping, Sequence

from ..core import paths
from .model import Exposure, Health, PathStat, RedisClient, UnitState
from ..system import netprobe, nginx
from ..core import vhost
from ..core.vhost import Routing
from ..system.accounts import group_name, user_name
from ..core.topology import Address

TIMEOUT = 1.0


# --- small clients --------------------------------------------------------------


def http_health(where: str | Address, timeout: float = TIMEOUT) -> Health:
    """GET /health over a UNIX socket (a path) or TCP (an :class:`Address`), HTTP/1.1,
    with X-Forwarded-For (Synapse needs it on sockets)."""
    headers = {"X-Forwarded-For": "127.0.0.1", "User-Agent": "matrix-synapse-workers-status"}
    try:
        answer = netprobe.http_get(where, "/health", headers, timeout)
    except FileNotFoundError:
        return Health(error="socket missing")
    except ConnectionRefusedError:
        return Health(error="connection refused (nothing listens)")
    except socket.timeout:
        return Health(error=f"no answer within {timeout:g} s")
    except PermissionError:
        return Health(error="permission denied (run as root)")
    except OSError as exc:
        return Health(error=exc.strerror or str(exc))
    except netprobe.NotHttp:
        return Health(error="not an HTTP answer")
    return Health(answer.status, answer.body, answer.headers.get("server", ""))


def parse_client_list(text: str) -> tuple[RedisClient, ...]:
    clients = []
    for line in text.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if "fd" in fields:
            clients.append(RedisClient(int(fields["fd"]), int(fields.get("sub", 0) or 0)
                                       + int(fields.get("psub", 0) or 0), fields.get("flags", ""),
                                       fields.get("addr", "")))
    return tuple(clients)


def probe_redis(config: Mapping[str, Any], timeout: float = TIMEOUT,
                password: str | None = None) -> tuple[str, int | None, tuple[RedisClient, ...]]:
    """(error, tcp port, clients) from the Redis conf.d/redis.yaml names.

    ``password``: read from its ``password_path`` by the caller; else its ``password``.
    """
    where: str | Address = (str(config["path"]) if config.get("path") else
                            Address(str(config.get("host", "localhost")), int(config.get("port", 6379))))
    try:
        session = netprobe.RedisSession(where, timeout)
    except OSError as exc:
        return exc.strerror or str(exc), None, ()
    with session:
        try:
            password = password if password is not None else config.get("password")
            if password:
                session.call("AUTH", str(password))
            session.call("PING")
            clients = parse_client_list(session.call("CLIENT", "LIST") or "")
        except (netprobe.RespError, OSError) as exc:
            return one_line(str(exc)), None, ()
        try:
            reply = session.call("CONFIG", "GET", "port")
            port = int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None
        except (netprobe.RespError, OSError, ValueError):
            port = None
    return "", port, clients


def parse_ss(text: str, server_path: str) -> dict[int, int]:
    """``ss -xpnH`` -> Redis server fd -> pid of the client at the other end."""
    server_fd_to_peer: dict[int, str] = {}
    inode_to_pid: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(None, 8)
        if len(fields) < 8 or fields[1] != "ESTAB":
            continue
        local, local_inode, peer_inode = fields[4], fields[5], fields[7]
        users = fields[8] if len(fields) > 8 else ""
        owner = re.search(r"pid=(\d+),fd=(\d+)", users)
        if owner is None:
            continue
        if local == server_path:
            server_fd_to_peer[int(owner[2])] = peer_inode
        else:
            inode_to_pid[local_inode] = int(owner[1])
    return {fd: inode_to_pid[peer] for fd, peer in server_fd_to_peer.items() if peer in inode_to_pid}


def _endpoint(text: str) -> str:
    """``[fd00::2]:41234`` and ``fd00::2:41234`` -> one spelling, for joining ss to Redis."""
    host, _, port = text.rpartition(":")
    return f"{host.strip('[]')}:{port}"


def parse_ss_tcp(text: str, clients: Sequence[RedisClient], server: Address) -> dict[int, int] | None:
    """``ss -tpnH`` on a worker host -> Redis server fd -> pid of the local client.

    Redis names each client by its end of the connection (``addr=``), which is
    the local end of this host's connection to Redis in ``ss``.  None when this
    host has connections to Redis but Redis knows none of them by that name
    (address translation on the way): they cannot be attributed.
    """
    by_endpoint: dict[str, int] = {}
    peer = _endpoint(str(server))
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or fields[0] != "ESTAB" or _endpoint(fields[4]) != peer:
            continue
        owner = re.search(r"pid=(\d+),fd=(\d+)", fields[5])
        if owner is not None:
            by_endpoint[_endpoint(fields[3])] = int(owner[1])
    found = {c.fd: by_endpoint[_endpoint(c.addr)] for c in clients
             if c.addr and _endpoint(c.addr) in by_endpoint}
    return None if by_endpoint and not found else found


def run_quietly(argv: Sequence[str], timeout: float = 1.5) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def unit_states(units: Sequence[str]) -> dict[str, UnitState]:
    done = run_quietly(["systemctl", "show", "--property=Id,ActiveState,SubState,MainPID", "--", *units])
    states: dict[str, UnitState] = {}
    if done is None or done.returncode != 0:
        return states
    for block, unit in zip(done.stdout.strip().split("\n\n"), units):
        values = dict(line.partition("=")[::2] for line in block.splitlines())
        states[unit] = UnitState(values.get("ActiveState", "unknown"), values.get("SubState", ""),
                                 int(values.get("MainPID", "0") or 0))
    return states


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")


def exposures(units: Sequence[str]) -> dict[str, Exposure]:
    """systemd's score of each unit's sandbox (one systemd-analyze for all) and its drop-ins."""
    if not units:
        return {}
    scored = run_quietly(["systemd-analyze", "security", "--no-pager", *units], timeout=10)
    scores = {u: float(v) for u, v in _EXPOSURE.findall(scored.stdout)} if scored else {}
    shown = run_quietly(["systemctl", "show", "--property=Id,DropInPaths", "--", *units])
    dropins: dict[str, tuple[str, ...]] = {}
    if shown is not None and shown.returncode == 0:
        for block in shown.stdout.strip().split("\n\n"):
            values = dict(line.partition("=")[::2] for line in block.splitlines())
            dropins[values.get("Id", "")] = tuple(values.get("DropInPaths", "").split())
    return {u: Exposure(scores.get(u), dropins.get(u, ())) for u in units}


def path_stat(path: str) -> PathStat:
    try:
        st = os.lstat(path)
    except OSError:
        return PathStat(False)
    return PathStat(True, statmod.S_ISSOCK(st.st_mode), user_name(st.st_uid), group_name(st.st_gid),
                    st.st_mode & 0o7777)


def group_members(groups: Sequence[str], users: Sequence[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in groups:
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            continue
        members = set(entry.gr_mem)
        for user in users:
            try:
                if pwd.getpwnam(user).pw_gid == entry.gr_gid:
                    members.add(user)
            except KeyError:
                pass
        found[name] = frozenset(members)
    return found


def debconf_answers() -> dict[str, str] | str:
    """Our debconf answers, or the reason they cannot be read."""
    done = run_quietly(["debconf-show", paths.PACKAGE])
    if done is None:
        return "debconf-show is not available"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["debconf-show failed"])[-1]
    answers = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.lstrip("* ").partition(":")
        if sep:
            answers[key.strip()] = value.strip()
    return answers if answers else "no answers recorded"


def nginx_dump() -> tuple[bool | None, str, frozenset[str], Routing | None]:
    """(nginx -T passed, its messages, the files its configuration is made of, how it routes
    the worker paths)."""
    done = nginx.dump(timeout=1.5)
    if done is None:
        return None, "", frozenset(), None
    files = frozenset(re.findall(r"^# configuration file (.+):$", done.stdout, re.M))
    routing = vhost.judge(done.stdout) if done.returncode == 0 else None
    return done.returncode == 0, done.stderr, files, routing

def one_line(text: str, limit: int = 200) -> str:
    """A peer's answer quoted in a row: its first line, not a whole HTTP header block."""
    return (text.strip().splitlines() or [""])[0][:limit]
