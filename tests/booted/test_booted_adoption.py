"""A worker setup made by hand, taken over by the package (issue 22).

Two booted hosts built step by step as admins did by hand before this package:

* the worker guide's: redis.conf edited to a socket, matrix-synapse in group redis, group
  clubmatrix, the socket directory's statoverride, the replication listener and
  instance_map added to homeserver.yaml, conf.d/redis.yaml, the guide's units copied into
  /etc/systemd/system and enabled, clientworker1 and syncworker1 running.  Then the package
  is installed with the default answers: the hand-made workers give way to the package's
  (one client, one sync worker), on the same Redis, in one switch; a client's round trip
  goes through the package's nginx routes; status is healthy; the hand-made files are in
  /etc/matrix-synapse/workers.hand-made/ and homeserver.yaml and redis.conf are untouched.
* Synapse's own docs/systemd-with-workers: replication over TCP on 127.0.0.1:9093, Redis on
  its default port, a generic worker on TCP and a federation sender by its legacy
  worker_app.  A worker file the package cannot map is added first: the install refuses
  with every blocker, exits 0 and changes no file; once the admin removes it,
  dpkg-reconfigure takes the host over.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from harness import Container
from support import handmade
from test_booted_status import healthy, wait_status
from test_scenarios import (SOCKETS, assert_all_healthy, install_workers, round_trip_through_nginx,
                            workers_on_disk)
from harness import wait_for_http

ADOPTED = "/etc/matrix-synapse/workers.hand-made"
ADMIN_TREES = "/etc/matrix-synapse /etc/redis /etc/systemd/system"


def admin_files(c: Container) -> dict[str, str]:
    """sha256 of every regular file an admin may have made."""
    out = c.run(f"find {ADMIN_TREES} -type f -exec sha256sum {{}} +").stdout
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


def link(c: Container, path: str) -> str:
    return c.run(["readlink", path], check=False).stdout.strip()


def edit_homeserver(c: Container, listener: dict, additions: dict) -> None:
    config = yaml.safe_load(c.read_file("/etc/matrix-synapse/homeserver.yaml"))
    config["listeners"] = [*config.get("listeners", []), listener]
    config.update(additions)
    c.write_file("/etc/matrix-synapse/homeserver.yaml", yaml.safe_dump(config, sort_keys=False))


def start_hand_made(c: Container, workers: list[str]) -> None:
    """What the guides say to run once the files are in place."""
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "restart", "matrix-synapse.service"])
    c.run(["systemctl", "start", "matrix-synapse.target"])
    for name in workers:
        c.wait_until(["systemctl", "is-active", "--quiet", f"matrix-synapse-worker@{name}.service"],
                     timeout=90)


def build_guide_host(c: Container) -> None:
    conf = c.read_file("/etc/redis/redis.conf")
    kept = "".join(l + "\n" for l in conf.splitlines() if not l.startswith(("port ", "unixsocket")))
    c.write_file("/etc/redis/redis.conf", kept + handmade.GUIDE_REDIS_LINES)
    c.run("adduser matrix-synapse redis && systemctl restart redis-server.service")
    c.run("mkdir -p /run/matrix-synapse && dpkg-statoverride --add --update matrix-synapse "
          "matrix-synapse 0770 /run/matrix-synapse")
    c.run("addgroup --system clubmatrix && adduser matrix-synapse clubmatrix && adduser www-data clubmatrix")
    edit_homeserver(c, handmade.GUIDE_REPLICATION, handmade.guide_homeserver_additions())
    log = yaml.safe_load(c.read_file("/etc/matrix-synapse/log.yaml"))
    for name in ("clientworker1", "syncworker1"):
        mine = json.loads(json.dumps(log))
        for handler in (mine.get("handlers") or {}).values():
            if "filename" in handler:
                handler["filename"] = f"/var/log/matrix-synapse/{name}.log"
        c.write_file(f"/etc/matrix-synapse/logconf.d/{name}.yaml", yaml.safe_dump(mine))
    root = c.path
    handmade.guide_files(root)
    start_hand_made(c, ["clientworker1", "syncworker1"])
    for name in ("clientworker1", "syncworker1"):
        wait_for_http(c, f"{SOCKETS}/inbound_{name}.sock", "/health", timeout=90)


def redis_clients(c: Container, *where: str) -> int:
    out = c.run(["redis-cli", *where, "CLIENT", "LIST"]).stdout
    return len([l for l in out.splitlines() if "cmd=" in l and "cmd=client" not in l])


def test_the_guide_s_host_is_taken_over_by_the_install(synapse_root: Path, package_deb: Path) -> None:
    with Container(synapse_root, name="adoption-guide") as c:
        guide_host_taken_over(c, package_deb)


def guide_host_taken_over(c: Container, package_deb: Path) -> None:
    build_guide_host(c)
    homeserver = c.read_file("/etc/matrix-synapse/homeserver.yaml")
    redis_conf = c.read_file("/etc/redis/redis.conf")
    hand_made = {p: h for p, h in admin_files(c).items()
                 if "/workers/" in p or "logconf.d" in p or p.endswith(("worker@.service", ".target"))
                 or p.endswith("conf.d/redis.yaml")}

    done = install_workers(c, package_deb, "")
    said = done.stdout + done.stderr
    assert "hand-made worker clientworker1" in said and "taken over as client" in said, said
    assert "syncworker1" in said and "taken over as sync" in said, said
    assert f"moved aside to {ADOPTED}/" in said, said
    assert "(replication on /run/matrix-synapse/replication.sock) is replaced" in said, said

    assert workers_on_disk(c) == ["client-1", "sync-1"]
    # Nothing the admin wrote is lost: every hand-made file, byte for byte, under one directory.
    after = admin_files(c)
    for path, digest in hand_made.items():
        assert after.get(path) != digest, path  # gone, or ours (conf.d/redis.yaml)
        moved = [p for p in after if p.startswith(ADOPTED) and p.endswith(path)]
        assert len(moved) == 1 and after[moved[0]] == digest, (path, moved)
    # The package's target is enabled where the admin's copy was.
    assert link(c, "/etc/systemd/system/multi-user.target.wants/matrix-synapse.target").endswith(
        "lib/systemd/system/matrix-synapse.target")
    assert c.read_file("/etc/matrix-synapse/homeserver.yaml") == homeserver
    assert c.read_file("/etc/redis/redis.conf") == redis_conf
    for old in ("clientworker1", "syncworker1"):
        assert c.run(["systemctl", "is-active", f"matrix-synapse-worker@{old}.service"],
                     check=False).stdout.strip() != "active"
    assert_all_healthy(c, ["client-1", "sync-1"])
    # The package's template runs them (its sandbox), not a copy in /etc/systemd/system.
    fragment = c.run(["systemctl", "show", "-P", "FragmentPath", "matrix-synapse-worker@sync-1.service"]).stdout
    assert fragment.strip() in ("/lib/systemd/system/matrix-synapse-worker@.service",
                                "/usr/lib/systemd/system/matrix-synapse-worker@.service"), fragment
    # Every process on the admin's one Redis (two connections each), no instance of ours.
    assert c.run(["systemctl", "is-active", "redis-server@matrix-synapse.service"],
                 check=False).stdout.strip() != "active"
    wait_status(c, lambda code, data: redis_clients(c, "-s", "/run/redis/redis-server.sock") >= 6,
                "three processes subscribed to the guide's Redis")
    round_trip_through_nginx(c, "alice")
    wait_status(c, healthy, "a healthy status after the take-over")
    # A second configure changes nothing and restarts nothing.
    pid = c.run(["systemctl", "show", "-P", "MainPID", "matrix-synapse.service"]).stdout
    again = c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)
    assert "nothing changed" in again.stdout + again.stderr
    assert c.run(["systemctl", "show", "-P", "MainPID", "matrix-synapse.service"]).stdout == pid


def build_docs_host(c: Container) -> None:
    edit_homeserver(c, handmade.DOCS_REPLICATION, handmade.docs_homeserver_additions())
    handmade.docs_files(c.path)
    start_hand_made(c, list(handmade.docs_workers()))
    wait_for_http(c, "http://127.0.0.1:8083", "/health", timeout=90)


def test_the_synapse_docs_host_refused_while_unmappable_then_taken_over(synapse_root: Path,
                                                                      package_deb: Path) -> None:
    with Container(synapse_root, name="adoption-docs") as c:
        docs_host_refused_then_taken_over(c, package_deb)


def docs_host_refused_then_taken_over(c: Container, package_deb: Path) -> None:
    build_docs_host(c)
    c.write_file("/etc/matrix-synapse/workers/odd.yaml",
                 "worker_app: synapse.app.something_new\nworker_name: odd\n")
    before = admin_files(c)

    done = install_workers(c, package_deb, "")  # dpkg exits 0: installed, not configured
    said = done.stdout + done.stderr
    assert "workers are NOT configured: a hand-made worker setup is here" in said, said
    assert "'synapse.app.something_new' is not a worker this package knows" in said, said
    assert admin_files(c) == before
    assert c.run(["dpkg-query", "-W", "-f", "${Status}", "matrix-synapse-workers"]).stdout == \
        "install ok installed"
    wait_for_http(c, "http://127.0.0.1:8083", "/health", timeout=30)  # still the hand-made one

    c.run(["rm", "/etc/matrix-synapse/workers/odd.yaml"])
    done = c.run(["dpkg-reconfigure", "-fnoninteractive", "matrix-synapse-workers"], timeout=600)
    said = done.stdout + done.stderr
    assert "taken over as federation_sender" in said and "replication on port 9093" in said, said
    assert workers_on_disk(c) == ["client-1", "federation-sender-1"]
    assert_all_healthy(c, ["client-1", "federation-sender-1"])
    assert c.run("ss -ltnH 'sport = :8083'").stdout.strip() == ""
    shared = yaml.safe_load(c.read_file("/etc/matrix-synapse/conf.d/workers.yaml"))
    assert shared["federation_sender_instances"] == ["federation-sender-1"]
    assert all(l.get("port") != 9093 for l in shared["listeners"])
    redis = yaml.safe_load(c.read_file("/etc/matrix-synapse/conf.d/redis.yaml"))["redis"]
    assert (redis["host"], redis["port"]) == ("localhost", 6379)
    wait_status(c, lambda code, data: redis_clients(c, "-h", "127.0.0.1", "-p", "6379") >= 6,
                "three processes subscribed to the default Redis")
    round_trip_through_nginx(c, "bob")
    wait_status(c, healthy, "a healthy status after the take-over")
    answers = c.run("debconf-show matrix-synapse-workers").stdout
    assert "worker-types: client, federation_sender" in answers and "redis: existing" in answers
