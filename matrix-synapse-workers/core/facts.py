"""What the admin's Synapse configuration says, as far as workers care: the record and its rules.

:mod:`..system.hostfacts` reads it from the host; everything here is pure.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from .dbconnections import DEFAULT_CP_MAX, DEFAULT_CP_MIN
from .errors import HostConfigError

#: Synapse's setting that hands logins to the Matrix Authentication Service
#: (from 1.136), and the experimental one before it (refused from 1.157).
MAS_KEY = "matrix_authentication_service"
MSC3861_KEY = "experimental_features.msc3861"
MAS_KEY_SINCE = (1, 136, 0)
MSC3861_REMOVED_IN = (1, 157, 0)


@dataclass(frozen=True)
class WritablePath:
    """A place the admin's configuration has Synapse write to.

    ``real`` is the path with every symlink resolved (the sandbox must open
    the target, which may lie outside /var/lib), or None when it does not
    exist.  ``media_only``: only the process serving media writes there.
    """

    setting: str
    path: str
    real: str | None
    media_only: bool = False


@dataclass(frozen=True)
class AuthService:
    """The Matrix Authentication Service Synapse hands logins to.

    ``setting`` is the key that turns it on (for messages); ``endpoint`` is
    where Synapse reaches MAS (the stable key), or MAS's introspection endpoint
    or else its issuer (the experimental one), as configured.
    """

    setting: str
    endpoint: str | None = None

    @property
    def host(self) -> str | None:
        """The host every Synapse process connects to when it checks a token.

        >>> AuthService(MAS_KEY, "http://[::1]:8080/").host
        '::1'
        """
        return urllib.parse.urlsplit(self.endpoint).hostname if self.endpoint else None


@dataclass(frozen=True)
class HostFacts:
    """What the admin's Synapse configuration says, as far as workers care."""

    listeners: tuple[Mapping[str, Any], ...]
    database_engine: str
    log_config_path: str | None
    log_config: Mapping[str, Any] | None
    existing_workers: tuple[str, ...] = ()
    #: The installed Synapse (major, minor, patch); None when unknown. Routes depend on it.
    synapse_version: tuple[int, int, int] | None = None
    #: Each process's database pool: (cp_min, cp_max).
    database_pool: tuple[int, int] = (DEFAULT_CP_MIN, DEFAULT_CP_MAX)
    #: PostgreSQL's TCP host and port, when it is reached over TCP.
    database_address: tuple[str, int] | None = None
    #: What Synapse writes besides its sockets: the media store, storage
    #: providers' directories, the log files' directories.
    writable_paths: tuple[WritablePath, ...] = ()
    #: The directory of Synapse's signing key while the key does not exist yet (an
    #: image build): main's ExecStartPre makes it there at its first start.
    signing_key_dir: str | None = None
    #: The Matrix Authentication Service, when Synapse hands logins to it.
    auth_service: AuthService | None = None
    #: Synapse's max_upload_size as the admin wrote it (None: not set, Synapse's 50M).
    max_upload_size: object = None
    #: This machine's RAM in MiB (0: unknown), and the resident memory PostgreSQL and
    #: Redis here are configured to hold (what, MiB): the ``auto`` memory budget.
    memory_mib: int = 0
    memory_reserved: tuple[tuple[str, int], ...] = ()
    #: libjemalloc2's library when installed (the units preload it: core/memory.py).
    jemalloc: str | None = None
    #: The admin's own ``caches`` settings (homeserver.yaml, conf.d): they win over ours.
    admin_caches: Mapping[str, Any] = field(default_factory=dict)
    #: Admin files that were read, for messages.
    sources: tuple[str, ...] = field(default=())


def require_postgres(facts: HostFacts) -> None:
    if facts.database_engine != "psycopg2":
        raise HostConfigError(
            f"Synapse uses the {facts.database_engine!r} database engine here; workers need "
            "PostgreSQL ('psycopg2'). Migrate with synapse_port_db (see Synapse's "
            "docs/postgres.md), then run: dpkg-reconfigure matrix-synapse-workers")


def socket_paths_in_use(facts: HostFacts) -> dict[PurePosixPath, int]:
    """Admin listener socket paths, with the listener's position for messages."""
    return {PurePosixPath(str(listener["path"])): index
            for index, listener in enumerate(facts.listeners) if "path" in listener}


def require_writable_paths(facts: HostFacts) -> None:
    """Every path the sandbox opens for writing must exist, or the units cannot start."""
    missing = [w for w in facts.writable_paths if w.real is None]
    if missing:
        first = missing[0]
        raise HostConfigError(
            f"{first.setting} is {first.path!r}, which does not exist; the sandboxed Synapse "
            f"units may write only to existing directories: create it (owned by "
            f"matrix-synapse) or change {first.setting}, then run: "
            "dpkg-reconfigure matrix-synapse-workers")


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def auth_service(config: Mapping[str, Any],
                 version: tuple[int, int, int] | None) -> AuthService | None:
    """Whether the merged admin configuration hands logins to MAS, read as the
    installed Synapse reads it (``version``; None: unknown).

    Either spelling counts when the version is unknown: treating a homeserver
    as MAS-backed only sends login and registration to main or to the admin's
    MAS location, which works either way.  A spelling the installed Synapse
    ignores or refuses is one error naming what to do.

    >>> auth_service({MAS_KEY: {"enabled": True, "endpoint": "http://mas:8080/"}}, None)
    AuthService(setting='matrix_authentication_service', endpoint='http://mas:8080/')
    >>> auth_service({"experimental_features": {"msc3861": {"enabled": True}}}, (1, 135, 0))
    AuthService(setting='experimental_features.msc3861', endpoint=None)
    >>> auth_service({MAS_KEY: {"enabled": False}}, (1, 163, 2)) is None
    True
    """
    stable = config.get(MAS_KEY)
    if isinstance(stable, dict) and stable.get("enabled") is True:
        if version is not None and version < MAS_KEY_SINCE:
            raise HostConfigError(
                f"{MAS_KEY} is enabled in the Synapse configuration, but Synapse "
                f"{_dotted(version)} is installed, which ignores that key (it exists from "
                f"{_dotted(MAS_KEY_SINCE)}): logins would stay with Synapse. Upgrade Synapse, or "
                f"use {MSC3861_KEY}, its older form; then run: dpkg-reconfigure matrix-synapse-workers")
        endpoint = stable.get("endpoint", "http://localhost:8080")
        return AuthService(MAS_KEY, str(endpoint))
    experimental = config.get("experimental_features")
    msc3861 = experimental.get("msc3861") if isinstance(experimental, dict) else None
    if not isinstance(msc3861, dict) or not msc3861:
        return None
    if version is not None and version >= MSC3861_REMOVED_IN:
        raise HostConfigError(
            f"{MSC3861_KEY} is set in the Synapse configuration, but Synapse {_dotted(version)} "
            f"is installed, which refuses to start with it (removed in "
            f"{_dotted(MSC3861_REMOVED_IN)}): replace it with {MAS_KEY} (enabled, endpoint, "
            "secret or secret_path; see Synapse's configuration manual); then run: "
            "dpkg-reconfigure matrix-synapse-workers")
    if msc3861.get("enabled") is not True:
        return None
    where = msc3861.get("introspection_endpoint") or msc3861.get("issuer")
    return AuthService(MSC3861_KEY, str(where) if where else None)
