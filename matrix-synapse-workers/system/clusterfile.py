"""Read the deployment description (:mod:`..core.cluster`) and this host's role from the files."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..core import paths
from ..core.cluster import COPY_HINT, Cluster, main_topology_of, parse_cluster
from ..core.errors import HostConfigError
from ..core.topology import Topology, worker_host_topology


def deployed_topology(root: Path) -> Topology:
    """What this host is now: a worker host (its mark), a main host with worker hosts
    (its cluster.yaml), or one machine."""
    mark = root / paths.WORKER_HOST_MARK
    if mark.is_file():
        return worker_host_topology(mark.read_text(encoding="utf-8").strip())
    if not (root / paths.CLUSTER_FILE).is_file():
        return Topology()
    return main_topology_of(read_cluster(root))


def read_cluster(root: Path) -> Cluster:
    path = root / paths.CLUSTER_FILE
    shown = "/" + str(paths.CLUSTER_FILE)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HostConfigError(f"{shown} does not exist: a worker host takes its workers from the "
                              f"main host; {COPY_HINT}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise HostConfigError(f"{shown} cannot be read: {exc}; {COPY_HINT}") from None
    return parse_cluster(data, shown)
