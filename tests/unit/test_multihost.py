"""Synapse over several machines: topology answers, the plan and files on each host,
cluster.yaml as the one description, the secret checks and the network probes.

The two-host proof with real Synapse processes is tests/booted/test_booted_multihost.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
import yaml

from hostroot import make_root
from loopback import free_port
from realredis import redis_with_password
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.redisserver import REDIS
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.core.cluster import cluster_data, parse_cluster, plan_from_cluster
from matrix_synapse_workers.core.errors import HostConfigError, SelectionError
from matrix_synapse_workers.system.hostfacts import read_host_facts
from matrix_synapse_workers.core.plan import make_plan, parse_worker_name
from matrix_synapse_workers.render.files import render
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.system import netprobe, secrets
from matrix_synapse_workers.core.topology import (
    Address, http_port, main_topology, parse_address, replication_port, worker_host_topology)

HOSTS = "hostb 10.99.0.2 sync:2,events; hostc 10.99.0.3 federation_sender"


def _files(rendered) -> dict[str, str]:
    return {str(f.path): f.content for f in rendered}


def _yaml(text: str):
    return yaml.safe_load(text)


@pytest.fixture
def main_side(tmp_path):
    root = make_root(tmp_path / "a")
    topology = main_topology(HOSTS, "10.99.0.1")
    facts = read_host_facts(root)
    plan = make_plan(select(workers="sync,typing"), facts, topology)
    return root, facts, plan, Settings(topology=topology)


# --- answers --------------------------------------------------------------------


@pytest.mark.parametrize("hosts,address,fragment", [
    (HOSTS, "", "no replication address"),
    (HOSTS, "8.8.8.8", "'8.8.8.8' is a public address"),
    (HOSTS, "0.0.0.0", "is a wildcard address"),
    (HOSTS, "127.0.0.1", "loopback"),
    (HOSTS, "10.99.0.1:70000", "outside 1..65535"),
    (HOSTS, "mainhost", "not an IP address"),
    (HOSTS, "10.99.0.2", "has main's own address"),
    ("hostb 10.99.0.2", "10.99.0.1", "write LABEL ADDRESS WORKERS"),
    ("Host_B 10.99.0.2 sync", "10.99.0.1", "host name 'Host_B' is not allowed"),
    ("main 10.99.0.2 sync", "10.99.0.1", "host name 'main' is not allowed"),
    ("hostb 10.99.0.2 sync; hostb 10.99.0.3 sync", "10.99.0.1", "the label 'hostb'"),
    ("hostb 10.99.0.2 sync; hostc 10.99.0.2 sync", "10.99.0.1", "the address '10.99.0.2'"),
    ("hostb 1.2.3.4 sync", "10.99.0.1", "'1.2.3.4' is a public address"),
    ("hostb 10.99.0.2 nosuch", "10.99.0.1", "unknown worker type 'nosuch'"),
    ("hostb 10.99.0.2 sync:50", "10.99.0.1", "above 49"),
])
def test_bad_topology_names_the_value(hosts, address, fragment):
    with pytest.raises(SelectionError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        main_topology(hosts, address)


def test_public_address_needs_confirmation_and_then_is_taken():
    topology = main_topology("hostb 1.2.3.4 sync", "9.9.9.9:9100", allow_public=True)
    assert topology.replication == Address("9.9.9.9", 9100)
    assert topology.worker_hosts[0].address == "1.2.3.4"
    assert parse_address("[fd00::1]:9093", default_port=1, what="x") == Address("fd00::1", 9093)


def test_no_worker_hosts_is_one_machine():
    topology = main_topology("  ", "")
    assert not topology.spans_hosts and topology.replication is None


def test_a_role_that_runs_once_cannot_run_on_two_hosts(tmp_path):
    facts = read_host_facts(make_root(tmp_path))
    with pytest.raises(SelectionError, match="'typing' can run only once in the whole deployment"):
        make_plan(select(workers="typing"), facts, main_topology("hostb 10.99.0.2 typing", "10.99.0.1"))


# --- the main host's files ---------------------------------------------------------


def test_main_host_writes_only_its_workers_and_reaches_the_others_by_address(main_side):
    root, facts, plan, settings = main_side
    files = _files(render(plan, facts, settings))
    workers = sorted(p for p in files if p.startswith("etc/matrix-synapse/workers/"))
    assert workers == ["etc/matrix-synapse/workers/sync-1.yaml", "etc/matrix-synapse/workers/typing-1.yaml"]
    shared = _yaml(files[str(paths.SHARED_CONF)])
    assert shared["instance_map"]["main"] == {"path": str(paths.MAIN_REPLICATION_SOCKET)}
    assert shared["instance_map"]["events-1-hostb"] == {"host": "10.99.0.2", "port": replication_port("events", 1)}
    # typing runs here: local workers reach it by its socket.
    assert shared["instance_map"]["typing-1"] == {"path": "/run/matrix-synapse/typing-1-replication.sock"}
    assert shared["federation_sender_instances"] == ["federation-sender-1-hostc"]
    assert shared["worker_replication_secret_path"] == "/" + str(paths.REPLICATION_SECRET)
    tcp = [l for l in shared["listeners"] if l.get("bind_addresses") == ["10.99.0.1"]]
    assert tcp == [{"port": 9093, "bind_addresses": ["10.99.0.1"], "type": "http",
                    "resources": [{"names": ["replication"]}]}]
    # The main host's stream writer also listens where the worker hosts can reach it.
    typing = _yaml(files["etc/matrix-synapse/workers/typing-1.yaml"])["worker_listeners"]
    assert {"port": replication_port("typing", 1), "bind_addresses": ["10.99.0.1"], "type": "http",
            "resources": [{"names": ["replication"]}]} in typing
    redis = _yaml(files[str(paths.REDIS_CONF_D)])["redis"]
    assert redis["password_path"] == "/" + str(paths.REDIS_PASSWORD) and "password" not in redis
    instance = files[str(REDIS.instance_conf)]
    assert "bind 10.99.0.1\n" in instance and "port 6379\n" in instance
    assert f"include /{REDIS.instance_auth_conf}\n" in instance and "port 0" not in instance
    cluster = _yaml(files[str(paths.CLUSTER_FILE)])
    assert cluster["hosts"]["hostb"] == {"address": "10.99.0.2",
                                         "workers": ["sync-1-hostb", "sync-2-hostb", "events-1-hostb"]}
    assert cluster["hosts"]["main"] == {"workers": ["sync-1", "typing-1"]}


def test_one_machine_renders_as_before(tmp_path):
    root = make_root(tmp_path)
    facts = read_host_facts(root)
    plan = make_plan(select(workers="sync,typing"), facts)
    files = _files(render(plan, facts, Settings()))
    assert str(paths.CLUSTER_FILE) not in files
    assert "worker_replication_secret_path" not in files[str(paths.SHARED_CONF)]
    assert "port 0\n" in files[str(REDIS.instance_conf)]
    assert "password_path" not in files[str(paths.REDIS_CONF_D)]


# --- the worker host's files, from cluster.yaml alone ---------------------------------


def test_worker_host_plans_from_cluster_yaml_and_agrees_with_main(main_side):
    root, facts, plan, settings = main_side
    data = _yaml(_files(render(plan, facts, settings))[str(paths.CLUSTER_FILE)])
    plan_b = plan_from_cluster(parse_cluster(data, "cluster.yaml"), "hostb")
    files_b = _files(render(plan_b, facts, Settings(topology=worker_host_topology("hostb"))))
    assert sorted(files_b) == sorted([
        str(paths.SHARED_CONF), str(paths.REDIS_CONF_D),
        *(f"etc/matrix-synapse/workers/{n}.yaml" for n in ("sync-1-hostb", "sync-2-hostb", "events-1-hostb")),
        *(f"etc/matrix-synapse/worker-logs/{n}.yaml" for n in ("sync-1-hostb", "sync-2-hostb", "events-1-hostb")),
        *(f"etc/systemd/system/matrix-synapse-worker@{n}.service.d/matrix-synapse-workers.conf"
          for n in ("sync-1-hostb", "sync-2-hostb", "events-1-hostb")),
    ])
    shared_a = _yaml(_files(render(plan, facts, settings))[str(paths.SHARED_CONF)])
    shared_b = _yaml(files_b[str(paths.SHARED_CONF)])
    assert "listeners" not in shared_b  # no main process here
    # Every process derives the same duties and writers; only addresses differ.
    for key in set(shared_a) - {"listeners", "instance_map"}:
        assert shared_b[key] == shared_a[key], key
    assert shared_b["instance_map"]["main"] == {"host": "10.99.0.1", "port": 9093}
    assert shared_b["instance_map"]["typing-1"] == {"host": "10.99.0.1", "port": replication_port("typing", 1)}
    assert set(shared_b["instance_map"]) == set(shared_a["instance_map"])
    sync = _yaml(files_b["etc/matrix-synapse/workers/sync-2-hostb.yaml"])
    assert sync["worker_name"] == "sync-2-hostb"
    assert sync["worker_listeners"] == [{"port": http_port("sync", 2), "bind_addresses": ["10.99.0.2"],
                                         "type": "http", "x_forwarded": True,
                                         "resources": [{"names": ["client"]}]}]
    redis = _yaml(files_b[str(paths.REDIS_CONF_D)])["redis"]
    assert redis == {"enabled": True, "host": "10.99.0.1", "port": 6379,
                     "password_path": "/" + str(paths.REDIS_PASSWORD)}


def test_worker_host_not_in_cluster_yaml_is_refused_naming_the_known_ones(main_side):
    root, facts, plan, settings = main_side
    cluster = parse_cluster(cluster_data(plan), "cluster.yaml")
    with pytest.raises(HostConfigError, match="'hostz' is not a worker host .*hostb, hostc"):
        plan_from_cluster(cluster, "hostz")


def test_a_tampered_cluster_yaml_is_refused(main_side):
    plan = main_side[2]
    data = cluster_data(plan)
    data["hosts"]["hostb"]["workers"].append("sync-1-hostc")  # another host's name
    with pytest.raises(HostConfigError, match="'sync-1-hostc' is not a worker name"):
        plan_from_cluster(parse_cluster(data, "cluster.yaml"), "hostb")
    with pytest.raises(HostConfigError, match="no valid 'replication'"):
        parse_cluster({"hosts": {}}, "cluster.yaml")


def test_worker_names_carry_their_host():
    parsed = parse_worker_name("federation-sender-2-hostc")
    assert (parsed.index, parsed.host) == (2, "hostc")
    parsed = parse_worker_name("sync-1")
    assert (parsed.index, parsed.host) == (1, None)
    assert parse_worker_name("sync-hostb") is None


# --- the command on both hosts -----------------------------------------------------


def test_command_renders_main_then_a_worker_host_from_the_copied_directory(tmp_path, capsys):
    root_a = make_root(tmp_path / "a")
    assert main(["render", "--root", str(root_a), "--workers", "sync", "--worker-hosts",
                 "hostb 10.99.0.2 sync,events", "--replication-address", "10.99.0.1"]) == 0
    capsys.readouterr()
    # Nothing said about the topology: it stays as deployed.
    assert main(["plan", "--root", str(root_a), "--json"]) == 0
    import json
    names = [(w["name"], w["host"], w["http_upstream"]) for w in json.loads(capsys.readouterr().out)["workers"]]
    assert ("sync-1-hostb", "hostb", f"10.99.0.2:{http_port('sync', 1)}") in names
    assert ("sync-1", "main", "unix:/run/matrix-synapse/sync-1.sock") in names

    root_b = make_root(tmp_path / "b")
    assert main(["render", "--root", str(root_b), "--host-role", "worker-host", "--host-name", "hostb"]) == 1
    assert "cluster.yaml does not exist" in capsys.readouterr().err
    shutil.copytree(root_a / paths.CLUSTER_DIR, root_b / paths.CLUSTER_DIR)
    assert main(["render", "--root", str(root_b), "--host-name", "hostb"]) == 0
    written = sorted(p.name for p in (root_b / paths.WORKERS_DIR).iterdir())
    assert written == ["events-1-hostb.yaml", "sync-1-hostb.yaml"]
    assert not (root_b / paths.NGINX_HTTP_CONF).exists()
    assert main(["plan", "--root", str(root_b), "--host-name", "hostc"]) == 1
    assert "'hostc' is not a worker host" in capsys.readouterr().err


def test_worker_hosts_need_the_dedicated_redis(tmp_path, capsys):
    from matrix_synapse_workers.apply import check_spanning_settings
    settings = Settings(topology=main_topology("hostb 10.99.0.2 sync", "10.99.0.1"))
    check_spanning_settings(settings)
    from matrix_synapse_workers.core.settings import parse_redis
    with pytest.raises(SelectionError, match="Redis is 'guide'"):
        check_spanning_settings(replace(settings, redis=parse_redis("guide")))


# --- secrets copied by the admin ---------------------------------------------------


@pytest.mark.parametrize("mode,fragment", [
    (0o644, "can be read by every user (mode 0644); run: chown root:matrix-synapse"),
    (0o600, "cannot be read by nobody"),
])
def test_copied_secret_with_an_unsafe_or_unusable_mode_is_refused(tmp_path, mode, fragment):
    secret = tmp_path / paths.REPLICATION_SECRET
    secret.parent.mkdir(parents=True)
    secret.write_text("s3cret\n")
    os.chmod(secret, mode)
    with pytest.raises(HostConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        secrets.read_copied(tmp_path, paths.REPLICATION_SECRET, user="nobody")


def test_copied_secret_is_read_when_safe_and_missing_one_names_the_directory(tmp_path):
    with pytest.raises(HostConfigError, match="copy the directory /etc/matrix-synapse/cluster"):
        secrets.read_copied(tmp_path, paths.REPLICATION_SECRET)
    secret = tmp_path / paths.REPLICATION_SECRET
    secret.parent.mkdir(parents=True)
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o640)
    owner = __import__("pwd").getpwuid(secret.stat().st_uid).pw_name
    assert secrets.read_copied(tmp_path, paths.REPLICATION_SECRET, user=owner) == "s3cret"


# --- probes, against real servers on loopback ------------------------------------------


@pytest.fixture
def redis_with_password_right(tmp_path):
    with redis_with_password(tmp_path, "right") as address:
        yield address


def test_redis_probe_tells_right_from_wrong_password(redis_with_password_right):
    assert netprobe.redis_auth(redis_with_password_right, "right").ok
    wrong = netprobe.redis_auth(redis_with_password_right, "wrong")
    assert not wrong.ok and "refuses the password" in wrong.detail


def test_probes_of_a_closed_port_say_unreachable():
    closed = Address("127.0.0.1", free_port())
    assert "unreachable" in netprobe.tcp(closed).detail
    assert "unreachable" in netprobe.replication_secret(closed, "x").detail


def test_local_address_check():
    assert netprobe.is_local_address("127.0.0.1")
    assert not netprobe.is_local_address("192.0.2.123")  # TEST-NET-1, never assigned here


def test_main_host_back_on_one_machine_drops_its_cluster_yaml(main_side):
    from matrix_synapse_workers.core.changes import OnDisk, compute_changes
    root, facts, plan, settings = main_side
    spanning = render(plan, facts, settings)
    on_disk = {f.path: OnDisk(f.content, f.mode) for f in spanning}
    alone = make_plan(select(workers="sync,typing"), facts)
    desired = render(alone, facts, Settings())
    changes = compute_changes(alone, desired, on_disk, removable=(paths.CLUSTER_FILE,))
    assert paths.CLUSTER_FILE in changes.remove
    assert changes.restart_main  # listeners, secret path and Redis password go
    # A worker host keeps its copy: nothing is removable there.
    assert paths.CLUSTER_FILE not in compute_changes(alone, desired, on_disk).remove



def test_nginx_keeps_no_idle_connections_to_worker_hosts(main_side):
    """A kept connection to a host whose link was cut hangs the next request (seen in the
    two-host booted test); a fresh connect fails within the connect timeout instead."""
    import re
    root, facts, plan, settings = main_side
    http = _files(render(plan, facts, settings))[str(paths.NGINX_HTTP_CONF)]
    blocks = dict(re.findall(r"upstream (\S+) \{(.*?)\n\}", http, re.S))
    remote = [b for b in blocks.values() if "10.99.0." in b]
    local = [b for b in blocks.values() if "10.99.0." not in b]
    assert remote and local
    assert all("keepalive" not in b.split("#")[0] for b in remote)
    assert all("keepalive 16;" in b for b in local)


# --- media workers on worker hosts: only with one shared media store ----------------

MEDIA_HOSTS = "hostb 10.99.0.2 sync,media"


def test_media_workers_on_a_worker_host_are_refused_saying_why_and_what_to_do():
    with pytest.raises(SelectionError) as caught:
        main_topology(MEDIA_HOSTS, "10.99.0.1")
    message = str(caught.value)
    for fragment in ("worker host 'hostb'", "media_store_path", "missing (404) on the others",
                     "shared media store", "matrix-synapse-workers/shared-media-store",
                     "--shared-media-store", "keep the media workers on the main host"):
        assert fragment in message, (fragment, message)


def test_media_workers_on_main_need_no_confirmation(tmp_path):
    topology = main_topology(HOSTS, "10.99.0.1")
    plan = make_plan(select(workers="media,sync"), read_host_facts(make_root(tmp_path)), topology)
    assert not plan.shared_media and "shared_media_store" not in cluster_data(plan)


def test_confirmed_shared_store_is_recorded_for_the_worker_host_and_read_back(tmp_path):
    topology = main_topology(MEDIA_HOSTS, "10.99.0.1", shared_media=True)
    plan = make_plan(select(workers="sync"), read_host_facts(make_root(tmp_path)), topology)
    data = cluster_data(plan)
    assert data["shared_media_store"] is True
    cluster = parse_cluster(data, "cluster.yaml")
    plan_b = plan_from_cluster(cluster, "hostb")
    assert [w.name for w in plan_b.local_workers] == ["sync-1-hostb", "media-1-hostb"]
    from matrix_synapse_workers.core.cluster import main_topology_of
    assert main_topology_of(cluster).shared_media
    # Without media on any worker host the confirmation records nothing.
    assert not main_topology(HOSTS, "10.99.0.1", shared_media=True).shared_media


def test_a_worker_host_refuses_media_from_a_cluster_yaml_without_the_confirmation(tmp_path):
    topology = main_topology(MEDIA_HOSTS, "10.99.0.1", shared_media=True)
    plan = make_plan(select(workers="sync"), read_host_facts(make_root(tmp_path)), topology)
    data = cluster_data(plan)
    del data["shared_media_store"]  # an older or hand-written file
    with pytest.raises(HostConfigError, match="media workers on worker host 'hostb'.*shared_media_store: true"):
        plan_from_cluster(parse_cluster(data, "cluster.yaml"), "hostb")
    # Another worker host without media is not concerned.
    data["hosts"]["hostc"] = {"address": "10.99.0.3", "workers": ["sync-1-hostc"]}
    assert plan_from_cluster(parse_cluster(data, "cluster.yaml"), "hostc").local_workers
    data["shared_media_store"] = "yes"
    with pytest.raises(HostConfigError, match="shared_media_store is 'yes', not true or false"):
        parse_cluster(data, "cluster.yaml")


def test_command_takes_the_shared_media_flag(tmp_path, capsys):
    root = make_root(tmp_path / "a")
    base = ["render", "--root", str(root), "--workers", "sync", "--worker-hosts", MEDIA_HOSTS,
            "--replication-address", "10.99.0.1"]
    assert main(base) == 1
    assert "--shared-media-store" in capsys.readouterr().err
    assert main([*base, "--shared-media-store"]) == 0
    assert _yaml((root / paths.CLUSTER_FILE).read_text())["shared_media_store"] is True
