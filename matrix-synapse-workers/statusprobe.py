"""The looking half of ``matrix-synapse-workers status``: host -> :class:`status.Facts`.

Reads the deployed files, then asks systemd, every Synapse socket (GET
/health over HTTP/1.1 on AF_UNIX), Redis (RESP over its socket), ``ss``,
debconf and nginx, all at once in threads with short timeouts, so the whole
look stays well under two seconds with twenty workers.  Nothing here judges:
:mod:`status` turns the facts into verdicts.  Nothing here changes anything.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import stat as statmod
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from . import paths
from .answers import QUESTIONS, counts_from_workers, deployed_socket_group, from_answers, \
    normalized_counts
from .errors import WorkersError
from .hostfacts import existing_worker_names, read_host_facts
from .plan import Plan, make_plan
from .render import RenderedFile, dump_yaml, main_listeners, render
from .selection import select
from .settings import RedisMode, Settings, parse_redis
from .status import (ConfigFacts, Expected, Facts, Health, NginxFacts, PathStat, RedisClient,
                     RedisFacts, UnitState, expected_processes)

TIMEOUT = 1.0
REDIS_UNIT = f"redis-server@{paths.REDIS_INSTANCE}.service"
GUIDE_REDIS_UNIT = "redis-server.service"
APPLIED = paths.STATE_DIR / "applied"
STATOVERRIDE_DB = Path("/var/lib/dpkg/statoverride")
SYNAPSE_DIST_INFO = ("opt/venvs/matrix-synapse/lib/python3*/site-packages/matrix_synapse-*.dist-info",
                     "usr/lib/python3/dist-packages/matrix_synapse-*.dist-info")
SYNAPSE_PACKAGES = ("matrix-synapse-py3", "matrix-synapse")


# --- small clients --------------------------------------------------------------


def _connect_unix(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def http_health(path: str, timeout: float = TIMEOUT) -> Health:
    """GET /health over a UNIX socket, HTTP/1.1, with X-Forwarded-For (Synapse needs it)."""
    request = (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 127.0.0.1\r\n"
               b"User-Agent: matrix-synapse-workers-status\r\nConnection: close\r\n\r\n")
    try:
        with _connect_unix(path, timeout) as sock:
            sock.sendall(request)
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(8192)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
    except FileNotFoundError:
        return Health(error="socket missing")
    except ConnectionRefusedError:
        return Health(error="connection refused (nothing listens)")
    except PermissionError:
        return Health(error="permission denied (run as root)")
    except socket.timeout:
        return Health(error=f"no answer within {timeout:g} s")
    except OSError as exc:
        return Health(error=exc.strerror or str(exc))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0] if lines else "")
    if not match:
        return Health(error="not an HTTP answer")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _unchunk(body)
    return Health(int(match[1]), body.decode("utf-8", "replace"), headers.get("server", ""))


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(found) and len(body) >= int(found[1])


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


class RespError(Exception):
    pass


class Resp:
    """Just enough of the Redis protocol to ask a few questions."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")
        self.sock = sock

    def call(self, *words: str) -> Any:
        command = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
        self.sock.sendall(command.encode())
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


def parse_client_list(text: str) -> tuple[RedisClient, ...]:
    clients = []
    for line in text.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if "fd" in fields:
            clients.append(RedisClient(int(fields["fd"]), int(fields.get("sub", 0) or 0)
                                       + int(fields.get("psub", 0) or 0), fields.get("flags", "")))
    return tuple(clients)


def probe_redis(config: Mapping[str, Any], timeout: float = TIMEOUT) -> tuple[str, int | None,
                                                                              tuple[RedisClient, ...]]:
    """(error, tcp port, clients) from the Redis conf.d/redis.yaml names."""
    try:
        if config.get("path"):
            sock = _connect_unix(str(config["path"]), timeout)
        else:
            sock = socket.create_connection((str(config.get("host", "localhost")),
                                             int(config.get("port", 6379))), timeout)
    except OSError as exc:
        return exc.strerror or str(exc), None, ()
    with sock:
        resp = Resp(sock)
        try:
            if config.get("password"):
                resp.call("AUTH", str(config["password"]))
            resp.call("PING")
            clients = parse_client_list(resp.call("CLIENT", "LIST") or "")
        except (RespError, OSError) as exc:
            return str(exc), None, ()
        try:
            reply = resp.call("CONFIG", "GET", "port")
            port = int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None
        except (RespError, OSError, ValueError):
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


def _run(argv: Sequence[str], timeout: float = 1.5) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def unit_states(units: Sequence[str]) -> dict[str, UnitState]:
    done = _run(["systemctl", "show", "--property=Id,ActiveState,SubState,MainPID", "--", *units])
    states: dict[str, UnitState] = {}
    if done is None or done.returncode != 0:
        return states
    for block, unit in zip(done.stdout.strip().split("\n\n"), units):
        values = dict(line.partition("=")[::2] for line in block.splitlines())
        states[unit] = UnitState(values.get("ActiveState", "unknown"), values.get("SubState", ""),
                                 int(values.get("MainPID", "0") or 0))
    return states


def path_stat(path: str) -> PathStat:
    try:
        st = os.lstat(path)
    except OSError:
        return PathStat(False)
    return PathStat(True, statmod.S_ISSOCK(st.st_mode), _user(st.st_uid), _group(st.st_gid),
                    st.st_mode & 0o7777)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


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
    done = _run(["debconf-show", paths.PACKAGE])
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


def installed_version(root: Path) -> str | None:
    for pattern in SYNAPSE_DIST_INFO:
        for found in sorted(root.glob(pattern)):
            return found.name[len("matrix_synapse-"):-len(".dist-info")]
    for package in SYNAPSE_PACKAGES:
        done = _run(["dpkg-query", "--show", "--showformat=${Version}", package])
        if done is not None and done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return None


def statoverride(path: str, db: Path = STATOVERRIDE_DB) -> tuple[str, str, int] | None:
    try:
        lines = db.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=3)
        if len(fields) == 4 and fields[3] == path:
            return fields[0], fields[1], int(fields[2], 8)
    return None


def nginx_dump() -> tuple[bool | None, str, frozenset[str]]:
    """(nginx -T passed, its messages, the files its configuration is made of)."""
    done = _run(["nginx", "-T"], timeout=1.5)
    if done is None:
        return None, "", frozenset()
    files = frozenset(re.findall(r"^# configuration file (.+):$", done.stdout, re.M))
    return done.returncode == 0, done.stderr, files


# --- the deployed configuration -------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    workers: tuple[str, ...]
    redis_config: Mapping[str, Any]
    recorded_workers: str | None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def read_deployed(root: Path) -> Deployed:
    data = _read_yaml(root / paths.REDIS_CONF_D)
    redis = data.get("redis") if isinstance(data, dict) else None
    recorded = None
    try:
        for line in (root / APPLIED).read_text(encoding="utf-8").splitlines():
            if line.startswith("workers="):
                recorded = line.partition("=")[2]
    except OSError:
        pass
    return Deployed(existing_worker_names(root), redis if isinstance(redis, dict) else {}, recorded)


def redis_settings_of(config: Mapping[str, Any]):
    path = config.get("path")
    if path == str(paths.REDIS_INSTANCE_SOCKET):
        return parse_redis("dedicated")
    if path == str(paths.REDIS_GUIDE_SOCKET):
        return parse_redis("guide")
    if path:
        return parse_redis(f"unix:{path}")
    return parse_redis(f"{config.get('host', 'localhost')}:{config.get('port', 6379)}")


def redis_location(config: Mapping[str, Any]) -> str:
    if config.get("path"):
        return f"unix:{config['path']}"
    if config.get("host") or config.get("port"):
        return f"{config.get('host', 'localhost')}:{config.get('port', 6379)}"
    return ""


def settings_from(answers: Mapping[str, str] | None, deployed: Deployed,
                  group: str) -> tuple[Settings, str | None, str]:
    """(settings, the workers the answers ask for, why the answers are unusable)."""
    fallback = Settings(socket_group=group, redis=redis_settings_of(deployed.redis_config))
    if answers is None:
        return fallback, None, ""
    try:
        raw = [answers.get(q, "") for q in QUESTIONS]
        selection, settings = from_answers(*raw)
    except WorkersError as exc:
        return fallback, None, str(exc)
    return settings, normalized_counts(selection.counts), ""


def compare_files(root: Path, rendered: Sequence[RenderedFile]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    missing, drifted = [], []
    for item in rendered:
        target = root / item.path
        try:
            if target.read_text(encoding="utf-8") != item.content:
                drifted.append(f"/{item.path}")
        except FileNotFoundError:
            missing.append(f"/{item.path}")
        except (OSError, UnicodeDecodeError):
            drifted.append(f"/{item.path}")
    return tuple(missing), tuple(drifted)


def listeners_match(root: Path, facts: Any) -> bool | None:
    data = _read_yaml(root / paths.SHARED_CONF)
    if not isinstance(data, dict):
        return None
    wanted = yaml.safe_load(dump_yaml({"listeners": main_listeners(facts)}))["listeners"]
    return data.get("listeners") == wanted


def _ours(item: RenderedFile) -> bool:
    return item.path.parts[:2] == paths.SYNAPSE_ETC.parts or item.path.parts[:2] == paths.NGINX_DIR.parts


def desired_files(root: Path, deployed: Deployed, settings: Settings) -> tuple[Any, tuple[RenderedFile, ...]]:
    """(host facts, the files the package would write now for the workers on disk)."""
    facts = read_host_facts(root)
    spec = normalized_counts(counts_from_workers(deployed.workers))
    plan = make_plan(select(workers=spec), facts) if spec else Plan(())
    return facts, tuple(f for f in render(plan, facts, settings) if _ours(f))


# --- all of it ------------------------------------------------------------------


def gather(root: Path = Path("/"), timeout: float = TIMEOUT) -> Facts:
    deployed = read_deployed(root)
    processes = expected_processes(deployed.workers)
    redis_settings = redis_settings_of(deployed.redis_config)
    redis_unit = {RedisMode.DEDICATED: REDIS_UNIT, RedisMode.GUIDE: GUIDE_REDIS_UNIT}.get(redis_settings.mode) \
        if deployed.redis_config else None
    override = statoverride(str(paths.SOCKET_DIR))
    group = override[1] if override else deployed_socket_group(root)

    # nginx files do not depend on the answers: known before anything is asked.
    first_settings = Settings(socket_group=group, redis=redis_settings)
    try:
        host, first_render = desired_files(root, deployed, first_settings)
        config_error = ""
    except WorkersError as exc:
        host, first_render, config_error = None, (), str(exc)
    nginx_files = tuple(f"/{f.path}" for f in first_render if f.path.parts[:2] == paths.NGINX_DIR.parts)

    units = [paths.TARGET_UNIT, *(p.unit for p in processes), *([redis_unit] if redis_unit else [])]
    socket_paths = [str(paths.SOCKET_DIR)] + [str(s) for p in processes
                                              for s in (p.http_socket, p.replication_socket) if s]
    jobs: dict[str, Callable[[], Any]] = {
        "units": lambda: unit_states(units),
        "redis": lambda: probe_redis(deployed.redis_config, timeout) if deployed.redis_config
        else ("", None, ()),
        "ss": lambda: _run(["ss", "-xpnH"]),
        "debconf": debconf_answers,
        "installed": lambda: installed_version(root),
    }
    if nginx_files:
        jobs["nginx"] = nginx_dump
    for process in processes:
        jobs[f"health:{process.name}"] = (lambda s=str(process.http_socket): http_health(s, timeout))
    with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
        futures: dict[str, Future[Any]] = {name: pool.submit(job) for name, job in jobs.items()}
        stats = {path: path_stat(path) for path in socket_paths}
        results = {name: future.result() for name, future in futures.items()}

    answers = results["debconf"] if isinstance(results["debconf"], dict) else None
    settings, answer_workers, answer_error = settings_from(answers, deployed, group)
    if answers is None:
        answer_error = str(results["debconf"])
    web_user = settings.web_user if answers is not None else paths.DEFAULT_WEB_USER
    expected = Expected(
        processes=processes, socket_group=group, web_user=web_user,
        dir_owner=override[0] if override else paths.SYNAPSE_USER,
        dir_mode=override[2] if override else paths.SOCKET_DIR_MODE,
        needs_redis_group=redis_settings.mode in (RedisMode.DEDICATED, RedisMode.GUIDE))

    missing, drifted, match = (), (), None
    if host is not None:
        try:
            _, rendered = desired_files(root, deployed, settings) if answers else (host, first_render)
            missing, drifted = compare_files(root, rendered)
            match = listeners_match(root, host)
        except WorkersError as exc:
            config_error = str(exc)
    config = ConfigFacts(
        disk_workers=normalized_counts(counts_from_workers(deployed.workers)),
        answer_workers=answer_workers, answer_error=answer_error,
        recorded_workers=deployed.recorded_workers, drifted=drifted, missing=missing,
        listeners_match=match, error=config_error)

    error, tcp_port, clients = results["redis"]
    ss = results["ss"]
    client_pids = None
    if redis_settings.socket is not None and ss is not None and ss.returncode == 0 and os.geteuid() == 0:
        client_pids = parse_ss(ss.stdout, str(redis_settings.socket))
    redis = RedisFacts(
        location=redis_location(deployed.redis_config), unit=redis_unit, socket=redis_settings.socket,
        socket_stat=path_stat(str(redis_settings.socket)) if redis_settings.socket else None,
        error=error, tcp_port=tcp_port, clients=clients, client_pids=client_pids)

    nginx = NginxFacts()
    if nginx_files:
        test_ok, output, included = results["nginx"]
        nginx = NginxFacts(
            rendered=nginx_files, missing=tuple(f for f in nginx_files if not (root / f.lstrip('/')).exists()),
            not_included=tuple(f for f in nginx_files if test_ok is not None and f not in included),
            test_ok=test_ok, test_output=output)

    unit_map = results["units"]
    return Facts(
        expected=expected, units=unit_map,
        health={p.name: results[f"health:{p.name}"] for p in processes},
        paths=stats,
        groups=group_members([group, "redis"], [paths.SYNAPSE_USER, web_user]),
        redis=redis, installed_version=results["installed"], config=config, nginx=nginx,
        target_unit=unit_map.get(paths.TARGET_UNIT))
