"""Pure: the two Redis-protocol servers Debian packages, and which one this host uses.

Debian 13 ships redis-server (Redis 8) and valkey-server (Valkey 8.1); neither
provides the other.  Both come with a template unit for extra instances
(``redis-server@NAME.service`` reading /etc/redis/redis-NAME.conf,
``valkey-server@NAME.service`` reading /etc/valkey/valkey-NAME.conf, each with
/run/SERVER-NAME as its runtime directory, run as its own user) and a stock
instance on 127.0.0.1:6379.  Every name the package needs comes from here.

>>> VALKEY.instance_unit
'valkey-server@matrix-synapse.service'
>>> str(VALKEY.instance_socket)
'/run/valkey-matrix-synapse/valkey-server.sock'
>>> str(REDIS.guide_conf)
'etc/redis/redis.conf'
>>> choose_server({"redis-server", "valkey-server"}, in_use=VALKEY).name
'valkey'
>>> choose_server({"valkey-server"}, in_use=REDIS).name
'valkey'
>>> choose_server(set(), in_use=None).name
'redis'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Collection

#: The dedicated instance's name, for either server.
INSTANCE = "matrix-synapse"


@dataclass(frozen=True)
class RedisServer:
    #: redis or valkey: the name of its directories, user and group.
    name: str
    #: The Debian package and the stock unit's name.
    package: str
    #: The command-line client's package (redis-cli / valkey-cli).
    cli: str

    @property
    def user(self) -> str:
        """The user and group the server runs as (its socket's group)."""
        return self.name

    @property
    def etc(self) -> PurePosixPath:
        return PurePosixPath("etc") / self.name

    @property
    def stock_unit(self) -> str:
        return f"{self.package}.service"

    @property
    def template_unit(self) -> str:
        return f"{self.package}@.service"

    @property
    def instance_unit(self) -> str:
        return f"{self.package}@{INSTANCE}.service"

    @property
    def instance_conf(self) -> PurePosixPath:
        return self.etc / f"{self.name}-{INSTANCE}.conf"

    @property
    def instance_auth_conf(self) -> PurePosixPath:
        """``requirepass`` of the instance when other hosts reach it (0640, the server's user)."""
        return self.etc / f"{self.name}-{INSTANCE}-auth.conf"

    @property
    def runtime_dir(self) -> PurePosixPath:
        """The template unit's RuntimeDirectory for the instance."""
        return PurePosixPath("/run") / f"{self.name}-{INSTANCE}"

    @property
    def instance_socket(self) -> PurePosixPath:
        return self.runtime_dir / f"{self.package}.sock"

    @property
    def instance_pidfile(self) -> PurePosixPath:
        return self.runtime_dir / f"{self.package}.pid"

    @property
    def log_dir(self) -> PurePosixPath:
        """Writable inside the unit's sandbox, with data_dir."""
        return PurePosixPath("/var/log") / self.name

    @property
    def data_dir(self) -> PurePosixPath:
        return PurePosixPath("/var/lib") / self.name

    @property
    def instance_log(self) -> PurePosixPath:
        return self.log_dir / f"{self.package}-{INSTANCE}.log"

    @property
    def instance_dump(self) -> str:
        """The dump file name, never written (no persistence) but named inside data_dir."""
        return f"dump-{INSTANCE}.rdb"

    @property
    def guide_conf(self) -> PurePosixPath:
        """The stock instance's configuration, a conffile of the server's package."""
        return self.etc / f"{self.name}.conf"

    @property
    def guide_socket(self) -> PurePosixPath:
        """The socket the stock configuration suggests (commented out as shipped)."""
        return PurePosixPath("/run") / self.name / f"{self.package}.sock"


REDIS = RedisServer("redis", "redis-server", "redis-cli")
VALKEY = RedisServer("valkey", "valkey-server", "valkey-cli")
#: In order of preference when nothing decides: redis-server is the first
#: alternative of the package's Depends, so apt installs it on a fresh system.
SERVERS = (REDIS, VALKEY)


def choose_server(installed: Collection[str], in_use: RedisServer | None) -> RedisServer:
    """The server to run the dedicated instance or to edit in guide mode.

    installed: the server packages whose template unit is on the host.  The
    one in use stays while it is installed (installing the other changes
    nothing); once it is gone, the other; with nothing installed (an image
    being built with the dependency still to come: never, since we depend on
    one) or nothing in use, the first installed in SERVERS order.
    """
    if in_use is not None and in_use.package in installed:
        return in_use
    for server in SERVERS:
        if server.package in installed:
            return server
    return in_use or REDIS


def server_of_socket(path: str | PurePosixPath | None) -> tuple[RedisServer, str] | None:
    """(server, "dedicated" or "guide") for a socket path this package configures, else None."""
    if path is None:
        return None
    for server in SERVERS:
        if str(path) == str(server.instance_socket):
            return server, "dedicated"
        if str(path) == str(server.guide_socket):
            return server, "guide"
    return None
