"""Host-wide choices besides the workers: socket group, web server user, Redis.

>>> parse_redis("dedicated").socket
PurePosixPath('/run/redis-matrix-synapse/redis-server.sock')
>>> parse_redis("unix:/run/redis/other.sock").synapse_config()
{'enabled': True, 'path': '/run/redis/other.sock'}
>>> parse_redis("10.0.0.5:6380").synapse_config()
{'enabled': True, 'host': '10.0.0.5', 'port': 6380}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from . import paths
from .errors import SelectionError
from .topology import Topology

# adduser's default NAME_REGEX for system names, which is what addgroup accepts.
_SYSTEM_NAME = re.compile(r"^[a-z_][a-z0-9_-]*\$?$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


class RedisMode(Enum):
    #: A Redis instance of our own through redis-server@matrix-synapse.service.
    DEDICATED = "dedicated"
    #: The guide's way: edit the admin's /etc/redis/redis.conf.
    GUIDE = "guide"
    #: A Redis the admin already runs and names.
    EXISTING = "existing"


REDIS_CHOICES = "dedicated, guide, unix:/PATH/TO/SOCKET or HOST:PORT"


@dataclass(frozen=True)
class RedisSettings:
    mode: RedisMode = RedisMode.DEDICATED
    socket: PurePosixPath | None = paths.REDIS_INSTANCE_SOCKET
    host: str | None = None
    port: int | None = None

    def synapse_config(self) -> dict[str, Any]:
        """The ``redis:`` section for conf.d/redis.yaml."""
        if self.socket is not None:
            return {"enabled": True, "path": str(self.socket)}
        return {"enabled": True, "host": self.host, "port": self.port}

    def describe(self) -> str:
        if self.mode is RedisMode.EXISTING:
            return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"
        return self.mode.value


def parse_redis(text: str) -> RedisSettings:
    value = text.strip()
    if value == RedisMode.DEDICATED.value:
        return RedisSettings()
    if value == RedisMode.GUIDE.value:
        return RedisSettings(RedisMode.GUIDE, paths.REDIS_GUIDE_SOCKET)
    if value.startswith("unix:"):
        socket = value[len("unix:"):]
        if not socket.startswith("/"):
            raise SelectionError(f"Redis socket {socket!r} must be an absolute path; accepted: {REDIS_CHOICES}")
        return RedisSettings(RedisMode.EXISTING, PurePosixPath(socket))
    match = _HOST_PORT.match(value)
    if match and 0 < int(match["port"]) < 65536:
        return RedisSettings(RedisMode.EXISTING, None, match["host"].strip("[]"), int(match["port"]))
    raise SelectionError(f"Redis location {text!r} is not understood; accepted: {REDIS_CHOICES}")


def check_system_name(kind: str, name: str) -> str:
    if not _SYSTEM_NAME.match(name) or len(name) > 32:
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

    @property
    def socket_dir_is_default(self) -> bool:
        return (self.socket_dir_owner, self.socket_group, self.socket_dir_mode) == (
            paths.SYNAPSE_USER, paths.DEFAULT_SOCKET_GROUP, paths.SOCKET_DIR_MODE)

    def __post_init__(self) -> None:
        check_system_name("socket group", self.socket_group)
        if self.web_user:
            check_system_name("web server user", self.web_user)
