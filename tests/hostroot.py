"""Build a fake host root (etc/matrix-synapse/...) for tests of the pure core."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

DEBIAN_LOG_CONFIG = {
    "version": 1,
    "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
    "handlers": {
        "file": {"class": "logging.handlers.RotatingFileHandler", "formatter": "precise",
                 "filename": "/var/log/matrix-synapse/homeserver.log", "maxBytes": 104857600,
                 "backupCount": 10, "encoding": "utf8"},
        "console": {"class": "logging.StreamHandler", "formatter": "precise"},
    },
    "root": {"level": "INFO", "handlers": ["file", "console"]},
    "disable_existing_loggers": False,
}

#: What matrix-synapse-py3 ships: Synapse's generate_log_config for /var/log/matrix-synapse/homeserver.log.
SYNAPSE_LOG_CONFIG = {
    "version": 1,
    "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
    "handlers": {
        "file": {"class": "logging.handlers.TimedRotatingFileHandler", "formatter": "precise",
                 "filename": "/var/log/matrix-synapse/homeserver.log", "when": "midnight",
                 "backupCount": 3, "encoding": "utf8"},
        "buffer": {"class": "synapse.logging.handlers.PeriodicallyFlushingMemoryHandler",
                   "target": "file", "capacity": 10, "flushLevel": 30, "period": 5},
        "console": {"class": "logging.StreamHandler", "formatter": "precise"},
    },
    "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
    "root": {"level": "INFO", "handlers": ["buffer"]},
    "disable_existing_loggers": False,
}


def homeserver(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A homeserver.yaml like matrix-synapse-py3 writes, switched to PostgreSQL."""
    config: dict[str, Any] = {
        "pid_file": str(tmp / "homeserver.pid"),
        "listeners": [{
            "port": 8008, "tls": False, "bind_addresses": ["::1", "127.0.0.1"], "type": "http",
            "x_forwarded": True, "resources": [{"names": ["client", "federation"], "compress": False}],
        }],
        "database": {"name": "psycopg2", "args": {"user": "synapse", "password": "x",
                                                 "database": "synapse", "host": "localhost"}},
        "log_config": "/etc/matrix-synapse/log.yaml",
        "media_store_path": str(tmp / "media"),
        "signing_key_path": str(tmp / "signing.key"),
        "trusted_key_servers": [{"server_name": "matrix.org"}],
    }
    config.update(overrides)
    return config


def make_root(tmp: Path, config: Mapping[str, Any] | None = None, *,
              conf_d: Mapping[str, Mapping[str, Any]] | None = None,
              log_config: Mapping[str, Any] | None = DEBIAN_LOG_CONFIG,
              raw_homeserver: str | None = None) -> Path:
    root = tmp / "root"
    etc = root / "etc/matrix-synapse"
    (etc / "conf.d").mkdir(parents=True)
    if raw_homeserver is not None:
        (etc / "homeserver.yaml").write_text(raw_homeserver)
    else:
        (etc / "homeserver.yaml").write_text(yaml.safe_dump(dict(config or homeserver(tmp))))
    # Like matrix-synapse-py3's postinst.
    (etc / "conf.d/server_name.yaml").write_text("server_name: example.org\n")
    (etc / "conf.d/report_stats.yaml").write_text("report_stats: false\n")
    for name, data in (conf_d or {}).items():
        (etc / "conf.d" / name).write_text(yaml.safe_dump(dict(data)))
    if log_config is not None:
        (etc / "log.yaml").write_text(yaml.safe_dump(dict(log_config)))
    # What the sandbox opens for writing exists, as on a host where Synapse has run.
    media = (config or {}).get("media_store_path", str(tmp / "media")) if raw_homeserver is None else None
    for made in ([str(media)] if isinstance(media, str) and media.startswith("/") else []) + [
            "/var/log/matrix-synapse"]:
        (root / made.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root
