"""Host-wide choices besides the workers: socket group, web server user, Redis.

>>> parse_redis("dedicated").socket
PurePosixPath('/run/redis-matrix-synapse/redis-server.sock')
>>> parse_redis("unix:/run/redis/other.sock").synapse_config()
{'enabled': True, 'path': '/run/redis/other.sock'}
>>> parse_redis("10.0.0.5:6380").synapse_config()
{'enabled': True, 'host': '10.0.0.5', 'port': 6380}
>>> from .redisserver import VALKEY
>>> parse_redis("dedicated").with_server(VALKEY).socket
PurePosixPath('/run/valkey-matrix-synapse/valkey-server.sock')
>>> parse_redis("guide", VALKEY).socket
PurePosixPath('/run/valkey/valkey-server.sock')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from . import paths
from .errors import SelectionError
from .redisserver import REDIS, RedisServer
from .topology import Topology
from .webserver import WebServer

# adduser's default NAME_REGEX for system names, which is what addgroup accepts.
_SYSTEM_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?")
#: A host name is at most 253 characters (RFC 1035); a port at most 5 digits.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:]{2,45}\]|[A-Za-z0-9.-]{1,253}):(?P<port>[0-9]{1,5})")
#: An absolute path with no control character, within sun_path (108 bytes with its NUL).
_SOCKET_PATH = re.compile(r"/[^\x00-\x1f\x7f]*")
SOCKET_PATH_MAX_BYTES = 107


class RedisMode(Enum):
    #: An instance of our own: redis-server@matrix-synapse.service (or valkey-server@...).
    DEDICATED = "dedicated"
    #: The guide's way: edit the admin's /etc/redis/redis.conf (or /etc/valkey/valkey.conf).
    GUIDE = "guide"
    #: A Redis the admin already runs and names.
    EXISTING = "existing"


REDIS_CHOICES = "dedicated, guide, unix:/PATH/TO/SOCKET or HOST:PORT"


@dataclass(frozen=True)
class RedisSettings:
    mode: RedisMode = RedisMode.DEDICATED
    socket: PurePosixPath | None = REDIS.instance_socket
    host: str | None = None
    port: int | None = None
    #: The server package that runs the dedicated instance or whose stock config the
    #: guide edits (chosen from what is installed, at the edge); unused for EXISTING.
    server: RedisServer = REDIS
    #: Guide mode on a Redis that requires a password: the file Synapse reads it from.
    password_path: PurePosixPath | None = None

    def with_server(self, server: RedisServer) -> "RedisSettings":
        """The same choice on another server (its own socket paths)."""
        if self.mode is RedisMode.DEDICATED:
            return replace(self, server=server, socket=server.instance_socket)
        if self.mode is RedisMode.GUIDE:
            return replace(self, server=server, socket=server.guide_socket)
        return self

    def synapse_config(self) -> dict[str, Any]:
        """The ``redis:`` section for conf.d/redis.yaml."""
        config: dict[str, Any] = ({"enabled": True, "path": str(self.socket)} if self.socket is not None
                                  else {"enabled": True, "host": self.host, "port": self.port})
        if self.password_path is not None:
            config["password_path"] = str(self.password_path)
        return config

    def describe(self) -> str:
        if self.mode is RedisMode.EXISTING:
            return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"
        return self.mode.value


def parse_redis(text: str, server: RedisServer = REDIS) -> RedisSettings:
    """Spaces around are ignored; a newline or other control character is refused."""
    value = text.strip(" ")
    if value == RedisMode.DEDICATED.value:
        return RedisSettings().with_server(server)
    if value == RedisMode.GUIDE.value:
        return RedisSettings(RedisMode.GUIDE).with_server(server)
    if value.startswith("unix:"):
        socket = value[len("unix:"):]
        if not _SOCKET_PATH.fullmatch(socket) or len(socket.encode()) > SOCKET_PATH_MAX_BYTES:
            raise SelectionError(f"Redis socket {socket!r} must be an absolute path without control "
                                 f"characters, at most {SOCKET_PATH_MAX_BYTES} bytes; accepted: "
                                 f"{REDIS_CHOICES}")
        return RedisSettings(RedisMode.EXISTING, PurePosixPath(socket))
    match = _HOST_PORT.fullmatch(value)
    if match and 0 < int(match["port"]) < 65536:
        return RedisSettings(RedisMode.EXISTING, None, match["host"].strip("[]"), int(match["port"]))
    raise SelectionError(f"Redis location {text!r} is not understood; accepted: {REDIS_CHOICES}")


def check_system_name(kind: str, name: str) -> str:
    if not _SYSTEM_NAME.fullmatch(name) or len(name) > 32:
        raise SelectionError(
            f"{kind} {name!r} is not a valid user or group name; use lower-case letters, digits, "
            "'_' and '-', starting with a letter or '_', at most 32 characters")
    return name


@dataclass(frozen=True)
class Settings:
    socket_group: str = paths.DEFAULT_SOCKET_GROUP
    web_user: str = paths.DEFAULT_WEB_USER
    redis: RedisSettings = field(default_factory=RedisSettings)
    #: Owner and mode of /run/matrix-synapse; an admin's dpkg-statoverride sets them.
    socket_dir_owner: str = paths.SYNAPSE_USER
    socket_dir_mode: int = paths.SOCKET_DIR_MODE
    #: This host's part when Synapse spans machines; the default is one machine.
    topology: Topology = field(default_factory=Topology)
    #: Every process serves Prometheus metrics (main host's choice; cluster.yaml carries it).
    metrics: bool = False
    #: The web server in front, whose routing files are rendered; None: as deployed,
    #: else detected (system/webservers.py resolves it before anything is rendered).
    web_server: WebServer | None = None
    #: MiB the Synapse processes of this host may hold (core/memory.py); None: ``auto``.
    memory_budget: int | None = None

    @property
    def socket_dir_is_default(self) -> bool:
        return (self.socket_dir_owner, self.socket_group, self.socket_dir_mode) == (
            paths.SYNAPSE_USER, paths.DEFAULT_SOCKET_GROUP, paths.SOCKET_DIR_MODE)

    def __post_init__(self) -> None:
        check_system_name("socket group", self.socket_group)
        if self.web_user:
            check_system_name("web server user", self.web_user)
