"""A read-only look at the Synapse configuration on a host (under a root dir).

Synapse reads ``homeserver.yaml``, then ``conf.d/*.yaml`` in sorted order, and
merges them by a shallow top-level update.  We do the same, leaving out the
files this package writes, to learn what the admin configured: the listeners
our shared file must re-emit, the database engine, the log config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml

from ..core import paths
from ..core.errors import HostConfigError, SelectionError
from ..core.memory import BUDGET_LINE, parse_budget
from ..core.dbconnections import pool_sizes
from ..core.adoption import superseded_listeners
from ..core.facts import HostFacts, WritablePath, auth_service
from ..core.redisserver import SERVERS, RedisServer, choose_server, server_of_socket
from .memoryfacts import jemalloc_path, ram_mib, reserved_memory
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
_WORKER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


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
    """The admin's listeners our shared file re-emits: all but a guide's replication
    listener, which ours replaces (core/adoption.py, superseded_listeners)."""
    listeners = config.get("listeners") or []
    if not isinstance(listeners, list) or not all(isinstance(x, dict) for x in listeners):
        raise HostConfigError("'listeners' in the Synapse configuration must be a list of mappings")
    replaced = superseded_listeners(listeners)
    return tuple(l for i, l in enumerate(listeners) if i not in replaced)


#: Synapse's own file storage provider, by both of its names.
_FILE_PROVIDERS = frozenset({"file_system",
                             "synapse.media.storage_provider.FileStorageProviderBackend",
                             "synapse.rest.media.v1.storage_provider.FileStorageProviderBackend"})


def resolve_under(root: Path, path: str, *, leaf_may_be_missing: bool = False) -> str | None:
    """``path`` (absolute, or relative to Synapse's working directory) with every
    symlink resolved inside ``root``; None when it does not exist (with
    ``leaf_may_be_missing``: when its parent does not)."""
    given = PurePosixPath(path)
    if not given.is_absolute():
        given = paths.SYNAPSE_WORKDIR / given
    queue = list(given.parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        full = root / candidate.relative_to("/")
        if full.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(os.readlink(full))
            if target.is_absolute():
                current = PurePosixPath("/")
                queue = list(target.parts[1:]) + queue
            else:
                queue = list(target.parts) + queue
            continue
        if not full.exists():
            if leaf_may_be_missing and not queue and full.parent.is_dir():
                return str(candidate)
            return None
        current = candidate
    return str(current)


def _writable_paths(root: Path, config: Mapping[str, Any],
                    log_config: Mapping[str, Any] | None) -> tuple[WritablePath, ...]:
    """Where Synapse writes, as the admin's configuration says (sockets aside)."""
    found: list[tuple[str, str, bool]] = []
    media = config.get("media_store_path", paths.DEFAULT_MEDIA_STORE)
    if isinstance(media, str) and media:
        found.append(("media_store_path", media, True))
    # Synapse's config loader makes a missing media store (in the check apply runs, as
    # matrix-synapse, before anything is written): only its parent must exist.
    created_by_synapse = {"media_store_path"}
    providers = config.get("media_storage_providers") or []
    for index, provider in enumerate(providers if isinstance(providers, list) else []):
        if isinstance(provider, dict) and provider.get("module") in _FILE_PROVIDERS:
            directory = (provider.get("config") or {}).get("directory")
            if isinstance(directory, str) and directory:
                found.append((f"media_storage_providers.<item {index}>.config.directory",
                              directory, True))
    handlers = (log_config or {}).get("handlers")
    for name, handler in (handlers.items() if isinstance(handlers, dict) else ()):
        if isinstance(handler, dict) and isinstance(handler.get("filename"), str):
            directory = str(PurePosixPath(handler["filename"]).parent)
            found.append((f"the log directory of handler {name!r} in log_config", directory, False))
    return tuple(WritablePath(setting, path, resolve_under(
        root, path, leaf_may_be_missing=setting in created_by_synapse), media_only)
                 for setting, path, media_only in found)


def _signing_key_dir(root: Path, config: Mapping[str, Any]) -> str | None:
    """Where main's first start writes the signing key, while it is missing."""
    key = config.get("signing_key_path")
    if not isinstance(key, str) or not key or resolve_under(root, key) is not None:
        return None
    return resolve_under(root, str(PurePosixPath(key).parent))


def existing_worker_names(root: Path) -> tuple[str, ...]:
    """Names of the worker files on disk (the files are the registry)."""
    workers_dir = root / paths.WORKERS_DIR
    if not workers_dir.is_dir():
        return ()
    return tuple(sorted(p.stem for p in workers_dir.glob("*.yaml")
                        if p.is_file() and _WORKER_NAME.fullmatch(p.stem)))


def metrics_deployed(root: Path) -> bool:
    """Whether our shared file switches metrics on (what ``apply`` keeps when not told)."""
    try:
        data = yaml.safe_load((root / paths.SHARED_CONF).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("enable_metrics") is True


def deployed_memory_budget(root: Path) -> int | None:
    """The memory budget our shared file was rendered with (None: ``auto``, or none yet)."""
    try:
        text = (root / paths.SHARED_CONF).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith(BUDGET_LINE):
            try:
                return parse_budget(line[len(BUDGET_LINE):])
            except SelectionError:
                return None
    return None


def deployed_socket_group(root: Path) -> str:
    """The group of the socket directory as the files say (what ``debian/config`` reads)."""
    group = paths.DEFAULT_SOCKET_GROUP
    try:
        text = (root / paths.TMPFILES_OVERRIDE).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return group
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "d" and fields[1] == str(paths.SOCKET_DIR):
            group = fields[4]
    return group


def _admin_caches(config: Mapping[str, Any]) -> dict[str, Any]:
    caches = config.get("caches")
    if caches is not None and not isinstance(caches, dict):
        raise HostConfigError("'caches' in the Synapse configuration must be a mapping of "
                              "options (global_factor, per_cache_factors, ...)")
    return dict(caches or {})


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
    version = installed_version(root)
    return HostFacts(
        listeners=_listeners(config),
        database_engine=_database_engine(config),
        database_address=_database_address(config),
        database_pool=pool_sizes(config.get("database") if isinstance(config.get("database"), dict) else None),
        synapse_version=version,
        log_config_path=log_config_path if isinstance(log_config_path, str) else None,
        log_config=log_config,
        existing_workers=existing_worker_names(root),
        writable_paths=_writable_paths(root, config, log_config),
        signing_key_dir=_signing_key_dir(root, config),
        auth_service=auth_service(config, version),
        max_upload_size=config.get("max_upload_size"),
        memory_mib=ram_mib(),
        memory_reserved=reserved_memory(root),
        jemalloc=jemalloc_path(root),
        admin_caches=_admin_caches(config),
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


#: Where the server packages ship their template unit (trixie: /usr/lib; bookworm: /lib).
_UNIT_DIRS = (PurePosixPath("usr/lib/systemd/system"), PurePosixPath("lib/systemd/system"))


def installed_servers(root: Path) -> frozenset[str]:
    """The Redis-protocol server packages on the host, by the template unit each ships."""
    return frozenset(server.package for server in SERVERS
                     if any((root / d / server.template_unit).is_file() for d in _UNIT_DIRS))


def deployed_redis_server(root: Path) -> RedisServer | None:
    """The server our conf.d/redis.yaml points Synapse at (dedicated or guide), if one of ours."""
    try:
        data = yaml.safe_load((root / paths.REDIS_CONF_D).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    redis = data.get("redis") if isinstance(data, dict) else None
    found = server_of_socket(redis.get("path")) if isinstance(redis, dict) else None
    return found[0] if found else None


def host_redis_server(root: Path) -> RedisServer:
    """The server this host's dedicated instance or guide edit uses (redisserver.choose_server)."""
    return choose_server(installed_servers(root), deployed_redis_server(root))
