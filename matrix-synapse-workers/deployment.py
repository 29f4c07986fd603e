"""One reading of a deployment: a root directory -> :class:`Deployment`, or one error.

As postgresql-common's ``cluster_info`` is for a cluster: the host's Synapse
configuration (:class:`.core.facts.HostFacts`), what this host is (its
topology), the settings the files show and the plan, read once and used by
the command (plan, render, apply), the trigger's re-render after a Synapse
upgrade and status.  Reading is here; deciding stays in core/ (the plan) and
render/ (the files).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml

from .core import paths
from .core.cluster import Cluster, plan_from_cluster
from .core.facts import HostFacts, require_postgres
from .core.plan import Plan, counts_from_workers, make_plan, remote_workers
from .core.redisserver import server_of_socket
from .core.selection import Selection
from .core.errors import SelectionError
from .core.settings import RedisSettings, Settings, check_system_name, parse_redis
from .core.topology import HostRole, Topology
from .render.files import RenderedFile, render
from .system import applied, statoverride, webservers
from .system.clusterfile import deployed_topology, read_cluster
from .system.hostfacts import (deployed_memory_budget, deployed_socket_group, metrics_deployed,
                               read_host_facts)


@dataclass(frozen=True)
class Deployment:
    """What is (or, with a selection, would be) deployed on one host."""

    facts: HostFacts
    settings: Settings
    #: The main host's workers; None on a worker host (cluster.yaml names them).
    selection: Selection | None
    plan: Plan
    #: A worker host's cluster.yaml as read (its plan's source); None on the main host.
    cluster: Cluster | None = None

    def files(self) -> tuple[RenderedFile, ...]:
        return render(self.plan, self.facts, self.settings)


def redis_config(root: Path) -> Mapping[str, Any]:
    """The ``redis`` mapping of our conf.d/redis.yaml; empty when there is none."""
    try:
        data = yaml.safe_load((root / paths.REDIS_CONF_D).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    redis = data.get("redis") if isinstance(data, dict) else None
    return redis if isinstance(redis, dict) else {}


def redis_settings_of(config: Mapping[str, Any]) -> RedisSettings:
    """The Redis choice that renders this conf.d/redis.yaml ``redis`` mapping: our instance
    or guide edit (of Redis or Valkey, by the socket path), else an existing server."""
    path = config.get("path")
    ours = server_of_socket(path)
    if ours is not None:
        settings = parse_redis(ours[1], ours[0])
        if ours[1] == "guide" and config.get("password_path"):
            settings = replace(settings, password_path=PurePosixPath(config["password_path"]))
        return settings
    if path:
        return parse_redis(f"unix:{path}")
    return parse_redis(f"{config.get('host', 'localhost')}:{config.get('port', 6379)}")


def socket_group(root: Path) -> str:
    """The socket directory's group: an admin's statoverride wins over our tmpfiles file."""
    override = statoverride.read(str(paths.SOCKET_DIR), root)
    return override.group if override else deployed_socket_group(root)


def deployed_web_user(root: Path) -> str:
    """The web server user last applied (no file shows it: the applied record keeps it);
    the package default when nothing recorded it."""
    record = applied.read(root)
    if record is None or record.web_user is None:
        return paths.DEFAULT_WEB_USER
    if record.web_user:
        try:
            check_system_name("web server user", record.web_user)
        except SelectionError:  # a record edited by hand: the default, as with none
            return paths.DEFAULT_WEB_USER
    return record.web_user


def deployed_settings(root: Path, topology: Topology | None = None) -> Settings:
    """The settings the files under ``root`` show, and the web user the applied record keeps."""
    config = redis_config(root)
    return Settings(socket_group=socket_group(root), web_user=deployed_web_user(root),
                    redis=redis_settings_of(config) if config else Settings().redis,
                    topology=topology if topology is not None else deployed_topology(root),
                    metrics=metrics_deployed(root), web_server=webservers.deployed(root),
                    memory_budget=deployed_memory_budget(root))


def deployed_selection(facts: HostFacts) -> Selection:
    """The main host's workers on disk, as a Selection (empty when there are none)."""
    return Selection(counts_from_workers(facts.existing_workers))


def read_deployment(root: Path, selection: Selection | None = None, settings: Settings | None = None,
                    *, facts: HostFacts | None = None) -> Deployment:
    """Read the host once and plan: the one way from a root to a Deployment.

    ``selection`` and ``settings`` are what is asked for; without them, what is
    deployed (the workers on disk, the settings the files show).  A worker host
    plans from its copy of cluster.yaml; whether main, Redis and the database
    answer from here is not read here (``apply`` probes that as a step of its
    own).  Raises one :class:`.core.errors.WorkersError` when the host cannot
    take workers.
    """
    facts = facts if facts is not None else read_host_facts(root)
    require_postgres(facts)
    settings = settings if settings is not None else deployed_settings(root)
    topology = settings.topology
    if topology.role is HostRole.WORKER_HOST:
        cluster = read_cluster(root)
        return Deployment(facts, settings, None, plan_from_cluster(cluster, topology.label or ""), cluster)
    if selection is None:
        selection = deployed_selection(facts)
        if not selection.counts:
            return Deployment(facts, settings, selection, Plan(remote_workers(topology), topology.replication,
                                                               metrics=settings.metrics,
                                                               shared_media=topology.shared_media))
    return Deployment(facts, settings, selection, make_plan(selection, facts, topology,
                                                            metrics=settings.metrics))


