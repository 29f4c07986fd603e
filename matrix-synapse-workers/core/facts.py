"""What the admin's Synapse configuration says, as far as workers care: the record and its rules.

:mod:`..system.hostfacts` reads it from the host; everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from .dbconnections import DEFAULT_CP_MAX, DEFAULT_CP_MIN
from .errors import HostConfigError


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
    #: Synapse's max_upload_size as the admin wrote it (None: not set, Synapse's 50M).
    max_upload_size: object = None
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
