"""A read-only look at the Synapse configuration on a host (under a root dir).

Synapse reads ``homeserver.yaml``, then ``conf.d/*.yaml`` in sorted order, and
merges them by a shallow top-level update.  We do the same, leaving out the
files this package writes, to learn what the admin configured: the listeners
our shared file must re-emit, the database engine, the log config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core import paths
from ..core.errors import HostConfigError
from ..core.dbconnections import pool_sizes
from ..core.facts import HostFacts
from .synapseversion import installed_version

#: conf.d files this package writes; they never count as the admin's config.
OWN_CONF_D = frozenset({paths.SHARED_CONF.name, paths.REDIS_CONF_D.name})
#: Keys our shared file sets: an admin file merged after it would override them.
MANAGED_KEYS = frozenset({
    "listeners", "instance_map", "stream_writers", "redis",
    "federation_sender_instances", "pusher_instances", "notify_appservices_from_worker",
    "update_user_directory_from_worker", "run_background_tasks_on", "enable_media_repo",
    "media_instance_running_background_jobs",
})
_WORKER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _load_yaml(path: Path, shown: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostConfigError(
            f"{shown} does not exist; install and configure Synapse first "
            "(matrix-synapse-py3 writes it)") from None
    except OSError as exc:
        raise HostConfigError(f"{shown} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HostConfigError(f"{shown} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HostConfigError(
            f"{shown} must be a YAML mapping of options, but holds a {type(data).__name__}")
    return data


def _admin_config_files(root: Path) -> list[tuple[Path, str]]:
    files = [(root / paths.HOMESERVER_YAML, "/" + str(paths.HOMESERVER_YAML))]
    conf_d = root / paths.CONF_D
    if conf_d.is_dir():
        for path in sorted(conf_d.glob("*.yaml")):
            if path.name not in OWN_CONF_D and path.is_file():
                files.append((path, "/" + str(paths.CONF_D / path.name)))
    return files


def merged_admin_config(root: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Merge the admin's files the way Synapse does, leaving ours out."""
    merged: dict[str, Any] = {}
    shown_files = []
    for path, shown in _admin_config_files(root):
        data = _load_yaml(path, shown)
        if path.parent.name == paths.CONF_D.name and path.name > paths.SHARED_CONF.name:
            overridden = sorted(MANAGED_KEYS & data.keys())
            if overridden:
                raise HostConfigError(
                    f"{shown} sets {', '.join(overridden)}, and Synapse reads it after "
                    f"/{paths.SHARED_CONF}, so it would undo the worker setup; move these keys "
                    f"to /{paths.HOMESERVER_YAML} or rename the file to sort before "
                    f"{paths.SHARED_CONF.name}")
        merged.update(data)
        shown_files.append(shown)
    return merged, tuple(shown_files)


def _database_engine(config: Mapping[str, Any]) -> str:
    database = config.get("database")
    if database is None:
        return "sqlite3"  # Synapse's default when the key is absent.
    if not isinstance(database, dict) or not isinstance(database.get("name"), str):
        raise HostConfigError("'database' in the Synapse configuration must be a mapping with a 'name'")
    return database["name"]


def _database_address(config: Mapping[str, Any]) -> tuple[str, int] | None:
    """psycopg2's host/port; None for a UNIX socket (a host starting with '/') or none."""
    database = config.get("database")
    args = database.get("args") if isinstance(database, dict) else None
    if not isinstance(args, dict):
        return None
    host = args.get("host")
    if not isinstance(host, str) or not host or host.startswith("/"):
        return None
    try:
        port = int(args.get("port") or 5432)
    except (TypeError, ValueError):
        return None
    return host, port


def _listeners(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    listeners = config.get("listeners") or []
    if not isinstance(listeners, list) or not all(isinstance(x, dict) for x in listeners):
        raise HostConfigError("'listeners' in the Synapse configuration must be a list of mappings")
    return tuple(listeners)


def existing_worker_names(root: Path) -> tuple[str, ...]:
    """Names of the worker files on disk (the files are the registry)."""
    workers_dir = root / paths.WORKERS_DIR
    if not workers_dir.is_dir():
        return ()
    return tuple(sorted(p.stem for p in workers_dir.glob("*.yaml")
                        if p.is_file() and _WORKER_NAME.match(p.stem)))


def metrics_deployed(root: Path) -> bool:
    """Whether our shared file switches metrics on (what ``apply`` keeps when not told)."""
    try:
        data = yaml.safe_load((root / paths.SHARED_CONF).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("enable_metrics") is True


def read_host_facts(root: Path) -> HostFacts:
    """Read the Synapse configuration under ``root``; raise HostConfigError if unusable."""
    config, sources = merged_admin_config(root)
    log_config_path = config.get("log_config")
    log_config = None
    if isinstance(log_config_path, str):
        candidate = root / log_config_path.lstrip("/")
        if candidate.is_file():
            loaded = _load_yaml(candidate, log_config_path)
            log_config = loaded or None
    return HostFacts(
        listeners=_listeners(config),
        database_engine=_database_engine(config),
        database_address=_database_address(config),
        database_pool=pool_sizes(config.get("database") if isinstance(config.get("database"), dict) else None),
        synapse_version=installed_version(root),
        log_config_path=log_config_path if isinstance(log_config_path, str) else None,
        log_config=log_config,
        existing_workers=existing_worker_names(root),
        sources=sources,
    )


def require_server_name(root: Path) -> None:
    """Synapse refuses an empty server_name: what matrix-synapse-py3 writes when its
    question was not answered (a noninteractive install with nothing preseeded)."""
    config, sources = merged_admin_config(root)
    name = config.get("server_name")
    if not isinstance(name, str) or not name.strip():
        raise HostConfigError(
            f"Synapse has no server name (server_name is {name!r} in "
            f"{', '.join(sources)}), so it cannot start. Set it in "
            f"/{paths.CONF_D}/server_name.yaml (e.g. server_name: example.org) or answer "
            "matrix-synapse/server-name: dpkg-reconfigure matrix-synapse-py3 (when installing "
            "unattended, preseed: matrix-synapse-py3 matrix-synapse/server-name string "
            "example.org); then run: dpkg-reconfigure matrix-synapse-workers")
