"""Hosts set up by hand, file by file, as the worker guide and Synapse's own worker docs
have admins do it: for the unit tests of the take-over and the booted one.

Each builder writes under a root directory (a test's, or a container's) and
returns nothing; users, groups and running services are the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

#: The guide's template unit, as an admin copies it (the guide's text, comments and all).
GUIDE_TEMPLATE = """[Unit]
Description=Synapse %i
AssertPathExists=/etc/matrix-synapse/workers/%i.yaml

# This service should be restarted when the synapse target is restarted.
PartOf=matrix-synapse.target
ReloadPropagatedFrom=matrix-synapse.target

# if this is started at the same time as the main, let the main process start
# first, to initialise the database schema.
After=matrix-synapse.service

[Service]
Type=notify
NotifyAccess=main
User=matrix-synapse
WorkingDirectory=/var/lib/matrix-synapse
EnvironmentFile=-/etc/default/matrix-synapse
ExecStart=/opt/venvs/matrix-synapse/bin/python -m synapse.app.generic_worker --config-path=/etc/matrix-synapse/homeserver.yaml --config-path=/etc/matrix-synapse/conf.d/ --config-path=/etc/matrix-synapse/workers/%i.yaml
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=3
SyslogIdentifier=matrix-synapse-%i

[Install]
WantedBy=matrix-synapse.target
"""

GUIDE_TARGET = """[Unit]
Description=Matrix Synapse with all its workers
After=network.target

[Install]
WantedBy=multi-user.target
"""

#: The guide's redis.conf edit (the three lines), on top of whatever the file had.
GUIDE_REDIS_LINES = "port 0\nunixsocket /run/redis/redis-server.sock\nunixsocketperm 770\n"
GUIDE_REPLICATION = {"path": "/run/matrix-synapse/replication.sock", "mode": 0o660, "type": "http",
                     "resources": [{"names": ["replication"]}]}
DOCS_REPLICATION = {"port": 9093, "bind_address": "127.0.0.1", "type": "http",
                    "resources": [{"names": ["replication"]}]}


def _write(root: Path, relative: str, text: str) -> None:
    target = root / relative.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def _yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False)


def guide_worker(name: str) -> dict[str, Any]:
    return {"worker_app": "synapse.app.generic_worker", "worker_name": name,
            "worker_log_config": f"/etc/matrix-synapse/logconf.d/{name}.yaml",
            "worker_listeners": [{"path": f"/run/matrix-synapse/inbound_{name}.sock",
                                  "mode": 0o660, "type": "http",
                                  "resources": [{"names": ["client", "federation"]}]}]}


def guide_homeserver_additions() -> dict[str, Any]:
    """What the guide adds to homeserver.yaml (with its listeners, given apart)."""
    return {"instance_map": {"main": {"path": "/run/matrix-synapse/replication.sock"}}}


def enable_links(root: Path, workers: list[str], target: str = "/etc/systemd/system/matrix-synapse.target",
                 template: str = "/etc/systemd/system/matrix-synapse-worker@.service") -> None:
    """What `systemctl enable` of the target and of each worker makes."""
    units = root / "etc/systemd/system"
    for directory in ("multi-user.target.wants", "matrix-synapse.target.wants"):
        (units / directory).mkdir(parents=True, exist_ok=True)
    (units / "multi-user.target.wants/matrix-synapse.target").symlink_to(target)
    for name in workers:
        (units / f"matrix-synapse.target.wants/matrix-synapse-worker@{name}.service").symlink_to(template)


def guide_files(root: Path, workers: tuple[str, ...] = ("clientworker1", "syncworker1"),
                log_config: Mapping[str, Any] | None = None) -> None:
    """Everything the guide has the admin write besides homeserver.yaml's edits."""
    redis_conf = root / "etc/redis/redis.conf"
    old = redis_conf.read_text() if redis_conf.exists() else "bind 127.0.0.1 -::1\nport 6379\n"
    old = "".join(l + "\n" for l in old.splitlines() if not l.startswith(("port ", "unixsocket")))
    _write(root, "etc/redis/redis.conf", old + GUIDE_REDIS_LINES)
    _write(root, "etc/matrix-synapse/conf.d/redis.yaml",
           _yaml({"redis": {"enabled": True, "path": "/run/redis/redis-server.sock"}}))
    _write(root, "etc/systemd/system/matrix-synapse-worker@.service", GUIDE_TEMPLATE)
    _write(root, "etc/systemd/system/matrix-synapse.target", GUIDE_TARGET)
    for name in workers:
        _write(root, f"etc/matrix-synapse/workers/{name}.yaml", _yaml(guide_worker(name)))
        if log_config is not None:
            _write(root, f"etc/matrix-synapse/logconf.d/{name}.yaml", _yaml(log_config))
    enable_links(root, list(workers))


def docs_workers() -> dict[str, dict[str, Any]]:
    """Synapse's docs/systemd-with-workers examples: a generic worker on TCP and a federation
    sender by its legacy worker_app."""
    return {
        "generic_worker": {"worker_app": "synapse.app.generic_worker", "worker_name": "generic_worker1",
                           "worker_listeners": [{"type": "http", "port": 8083, "x_forwarded": True,
                                                 "bind_addresses": ["127.0.0.1"],
                                                 "resources": [{"names": ["client", "federation"]}]}]},
        "federation_sender": {"worker_app": "synapse.app.federation_sender",
                              "worker_name": "federation_sender1"},
    }


def docs_homeserver_additions() -> dict[str, Any]:
    """Main's side of Synapse's docs: replication over TCP, Redis on its default port, and
    the legacy switch that hands outbound federation to the sender."""
    return {"instance_map": {"main": {"host": "localhost", "port": 9093}},
            "redis": {"enabled": True}, "send_federation": False}


def docs_files(root: Path) -> None:
    _write(root, "etc/systemd/system/matrix-synapse-worker@.service", GUIDE_TEMPLATE)
    _write(root, "etc/systemd/system/matrix-synapse.target",
           GUIDE_TARGET.replace("Matrix Synapse with all its workers", "Synapse parent target"))
    for stem, data in docs_workers().items():
        _write(root, f"etc/matrix-synapse/workers/{stem}.yaml", _yaml(data))
    enable_links(root, list(docs_workers()))
