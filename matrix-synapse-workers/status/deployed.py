"""What is deployed, as ``status`` reads it: the files this package wrote, the
settings they show, and on several machines this host's side of the cluster."""

from __future__ import annotations

import os

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..core import paths
from ..debconf.answers import QUESTIONS, from_answers, normalized_counts
from ..core.cluster import MAIN as CLUSTER_MAIN, Cluster, plan_from_cluster
from ..system.clusterfile import read_cluster
from ..core.errors import WorkersError
from ..system.hostfacts import (deployed_memory_budget, existing_worker_names, metrics_deployed,
                               read_host_facts)
from ..core.plan import Plan, Worker, parse_worker_name
from ..render.files import RenderedFile, dump_yaml, main_listeners, render
from ..render.webserver import ALL_PATHS
from ..core.settings import Settings
from .model import MAIN_HOST, WORKER_HOST, PathStat, Reach, SecretFile
from ..system import applied, netprobe
from ..system.accounts import group_name, user_name
from ..core.topology import Address, Topology
from ..deployment import read_deployment, redis_config, redis_settings_of
from .clients import one_line


# --- the deployed configuration -------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    workers: tuple[str, ...]
    redis_config: Mapping[str, Any]
    recorded_workers: str | None
    #: Our shared file switches metrics on.
    metrics: bool = False
    #: The memory budget our shared file was rendered with (None: auto).
    memory_budget: int | None = None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def read_deployed(root: Path) -> Deployed:
    record = applied.read(root)
    return Deployed(existing_worker_names(root), redis_config(root),
                    record.workers if record is not None else None, metrics_deployed(root),
                    deployed_memory_budget(root))


def redis_location(config: Mapping[str, Any]) -> str:
    if config.get("path"):
        return f"unix:{config['path']}"
    if config.get("host") or config.get("port"):
        return f"{config.get('host', 'localhost')}:{config.get('port', 6379)}"
    return ""


def settings_from(answers: Mapping[str, str] | None, deployed: Deployed,
                  group: str, topology: Topology = Topology()) -> tuple[Settings, str | None, str]:
    """(settings, the workers the answers ask for, why the answers are unusable).

    On a worker host the answers choose no workers (cluster.yaml does): None.
    """
    fallback = Settings(socket_group=group, redis=redis_settings_of(deployed.redis_config),
                        topology=topology, metrics=deployed.metrics,
                        memory_budget=deployed.memory_budget)
    if answers is None:
        return fallback, None, ""
    try:
        raw = [answers.get(q, "") for q in QUESTIONS]
        selection, settings = from_answers(*raw)
    except WorkersError as exc:
        return fallback, None, str(exc)
    # The answers do not say which server runs (what is installed does) nor hold the
    # guide-mode password file: those come from what is deployed.
    if settings.redis.mode is fallback.redis.mode:
        settings = replace(settings, redis=replace(settings.redis.with_server(fallback.redis.server),
                                                   password_path=fallback.redis.password_path))
    if selection is None:
        return settings, None, ""
    return settings, normalized_counts(selection.counts), ""


def compare_files(root: Path, rendered: Sequence[RenderedFile]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    missing, drifted = [], []
    for item in rendered:
        target = root / item.path
        try:
            if target.read_text(encoding="utf-8") != item.content:
                drifted.append(f"/{item.path}")
        except FileNotFoundError:
            missing.append(f"/{item.path}")
        except (OSError, UnicodeDecodeError):
            drifted.append(f"/{item.path}")
    return tuple(missing), tuple(drifted)


def listeners_match(root: Path, facts: Any, replication: Address | None = None) -> bool | None:
    data = _read_yaml(root / paths.SHARED_CONF)
    if not isinstance(data, dict):
        return None
    metrics = data.get("enable_metrics") is True
    listeners = (main_listeners(facts, remote_replication=replication, metrics=metrics)
                 if replication is not None else main_listeners(facts, metrics=metrics))
    wanted = yaml.safe_load(dump_yaml({"listeners": listeners}))["listeners"]
    return data.get("listeners") == wanted


def _ours(item: RenderedFile) -> bool:
    if item.path in (paths.REPLICATION_SECRET, paths.REDIS_PASSWORD):
        return False  # random content, written once: nothing to compare against
    return (item.path.parts[:2] == paths.SYNAPSE_ETC.parts or item.path.parts[:2] == paths.NGINX_DIR.parts
            or any(item.path in files for files in ALL_PATHS.values()))


def plan_here(root: Path, settings: Settings, side: "Side | None" = None,
              facts: Any = None) -> tuple[Any, Plan]:
    """(host facts, the plan for the workers on disk): a worker host's from cluster.yaml,
    a main host's the workers on disk plus the worker hosts of ``settings``' topology."""
    if side is not None and side.role == WORKER_HOST:
        facts = facts if facts is not None else read_host_facts(root)
        if side.plan is None:
            raise WorkersError(side.error or f"/{paths.CLUSTER_FILE} is not usable")
        return facts, side.plan
    deployment = read_deployment(root, settings=settings, facts=facts)
    return deployment.facts, deployment.plan


def desired_files(root: Path, settings: Settings, side: "Side | None" = None,
                  facts: Any = None) -> tuple[Any, tuple[RenderedFile, ...]]:
    """(host facts, the files the package would write now for the workers on disk)."""
    facts, plan = plan_here(root, settings, side, facts)
    return facts, tuple(f for f in render(plan, facts, settings) if _ours(f))


# --- several machines --------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """Which host this is: one machine, the main host of several, or a worker host."""

    role: str = MAIN_HOST
    label: str | None = None
    cluster: Cluster | None = None
    #: Why the worker-host mark or cluster.yaml cannot be used.
    error: str = ""
    #: Worker host: the deployment's plan rendered for this host.
    plan: Plan | None = None

    @property
    def spans_hosts(self) -> bool:
        return self.role == WORKER_HOST or self.cluster is not None or bool(self.error)


def read_side(root: Path) -> Side:
    try:
        label = (root / paths.WORKER_HOST_MARK).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not (root / paths.CLUSTER_FILE).exists():
            return Side()
        try:
            return Side(MAIN_HOST, cluster=read_cluster(root))
        except WorkersError as exc:
            return Side(MAIN_HOST, error=str(exc))
    except OSError as exc:
        return Side(WORKER_HOST, error=f"/{paths.WORKER_HOST_MARK} cannot be read: {exc.strerror}")
    if not label:
        return Side(WORKER_HOST, error=f"/{paths.WORKER_HOST_MARK} names no host: run: "
                                       f"dpkg-reconfigure {paths.PACKAGE}")
    try:
        cluster = read_cluster(root)
    except WorkersError as exc:
        return Side(WORKER_HOST, label, error=str(exc))
    try:
        plan = plan_from_cluster(cluster, label)
    except WorkersError:
        plan = None  # the verdict names the missing label from the cluster's hosts
    return Side(WORKER_HOST, label, cluster, plan=plan)


def cluster_workers(cluster: Cluster, label: str | None) -> tuple[Worker, ...]:
    """Workers cluster.yaml gives host ``label`` (None: every worker host)."""
    found = []
    for host, names in cluster.workers.items():
        if host == CLUSTER_MAIN or (label is not None and host != label):
            continue
        for name in names:
            parsed = parse_worker_name(name)
            if parsed is not None:
                found.append(parsed.worker(host, cluster.addresses.get(host)))
    return tuple(found)


def writers_elsewhere(side: Side) -> tuple[tuple[Worker, Address], ...]:
    """Stream writers on other hosts whose replication listeners this host's processes use."""
    cluster = side.cluster
    if cluster is None:
        return ()
    if side.role == WORKER_HOST:
        workers = side.plan.workers if side.plan is not None else ()
    else:
        workers = cluster_workers(cluster, None)
    found = []
    for worker in workers:
        if worker.host == side.label:
            continue  # this host's own
        address = worker.replication_address(cluster.replication)
        if address is not None:
            found.append((worker, address))
    return tuple(found)


def local_workers(names: Sequence[str], side: Side) -> tuple[Worker, ...]:
    """A worker host's workers on disk, at the address cluster.yaml gives the host."""
    address = side.cluster.addresses.get(side.label or "") if side.cluster is not None else None
    found = []
    for name in names:
        parsed = parse_worker_name(name)
        if parsed is not None:
            found.append(parsed.worker(parsed.host or side.label, address if address else None))
    return tuple(found)


def read_secret(root: Path, relative: Any) -> tuple[SecretFile, str | None]:
    """(what the status shows of a secret file, its content when readable and not empty)."""
    shown = f"/{relative}"
    path = root / relative
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return SecretFile(shown, PathStat(False)), None
    except PermissionError:
        return SecretFile(shown, None, "its directory is closed to this user (run as root)"), None
    except OSError as exc:
        return SecretFile(shown, None, exc.strerror or str(exc)), None
    stat = PathStat(True, False, user_name(st.st_uid), group_name(st.st_gid), st.st_mode & 0o7777)
    try:
        content = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        return SecretFile(shown, stat, "not readable by this user (run as root)"), None
    except (OSError, UnicodeDecodeError) as exc:
        return SecretFile(shown, stat, str(exc)), None
    if not content:
        return SecretFile(shown, stat, "empty"), None
    return SecretFile(shown, stat), content




def reach_of(probe: netprobe.Probe) -> Reach:
    return Reach(probe.ok, one_line(probe.detail), probe.outcome is not netprobe.Outcome.UNREACHABLE,
                 probe.outcome is netprobe.Outcome.REFUSED)


def holds_address(host: str) -> bool | None:
    try:
        return netprobe.is_local_address(host)
    except (OSError, ValueError):
        return None


