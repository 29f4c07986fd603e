"""Synapse over two machines: a main host and a worker host, both booted, on a private network.

Host A (main host) runs PostgreSQL, Redis, main, a client worker and nginx;
host B (worker host) runs only a sync worker and the event persister.  The two
containers are joined by a veth pair of their own (twohost.PrivateLink), so
every byte between them crosses a real network interface that the test can
take down.  The admin's steps are done as README.Debian tells them: PostgreSQL on
A listens on the private address and lets B in, A's /etc/matrix-synapse/cluster/
plus homeserver.yaml, the signing key and the log config are copied to B (owners
and modes kept) with the database host pointed at A, and each host installs the
package with its own debconf answers.

What a request did is proved where it happened: a unique marker in the request
is looked up in the access logs of the processes on both hosts, and the event
persister's work in the `events` table (`instance_name`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from booted_config import (MAIN_HOST_ADDRESS as ADDR_A, NGINX, VHOST,
                           WORKER_HOST_ADDRESS as ADDR_B, WORKER_HOST_LABEL as LABEL)
from harness import Container, http, login, register_user
from twohost import (PrivateLink, Stream, copy_files, file_stat, grep_markers,
                     postgres_listen_privately, remote_psql, tree_fingerprint)

SOCKETS = "/run/matrix-synapse"
LOGS = "/var/log/matrix-synapse"
# A keeps a client worker (logins, room creation, sends) and nothing in the sync
# pool, so every /sync goes to the worker host while it is reachable.
LOCAL_WORKERS = "client"
WORKER_HOSTS = f"{LABEL} {ADDR_B} sync,events"
SYNC_B = f"sync-1-{LABEL}"
EVENTS_B = f"events-1-{LABEL}"
REMOTE = [EVENTS_B, SYNC_B]
CLUSTER_DIR = "/etc/matrix-synapse/cluster"
SECRET = f"{CLUSTER_DIR}/replication-secret"
# What the admin copies from the main host to a worker host.
ADMIN_COPIES = [CLUSTER_DIR, "/etc/matrix-synapse/homeserver.yaml",
                "/etc/matrix-synapse/homeserver.signing.key", "/etc/matrix-synapse/log.yaml"]
# How long the link stays cut: longer than Synapse's replication ping timeout
# (25 s), so the worker host's connections really drop and must come back.
CUT_SECONDS = 30.0
REQUEST_TIMEOUT = 30.0
# A request sent while the link is cut must be answered (by main) within this:
# nginx gives up connecting to a worker host after a few seconds.  One that
# waits for the link to come back has failed its client, whatever its status.
ANSWER_WITHIN = 10.0


def log_of(name: str) -> str:
    return f"{LOGS}/homeserver.log" if name == "main" else f"{LOGS}/{name}.log"


def unit_of(name: str) -> str:
    return f"matrix-synapse-worker@{name}.service"


def debconf(answers: dict[str, tuple[str, str]]) -> str:
    return "".join(f"matrix-synapse-workers matrix-synapse-workers/{q} {kind} {value}\n"
                   for q, (kind, value) in answers.items())


def main_host_answers() -> str:
    return debconf({"preset": ("select", "custom"), "worker-types": ("multiselect", LOCAL_WORKERS),
                    "worker-counts": ("string", ""), "worker-hosts": ("string", WORKER_HOSTS),
                    "replication-address": ("string", ADDR_A)})


def worker_host_answers() -> str:
    return debconf({"host-role": ("select", "worker-host"), "host-name": ("string", LABEL)})


def poll(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


@dataclasses.dataclass
class Pair:
    a: Container
    b: Container
    link: PrivateLink


@pytest.fixture(scope="module")
def pair(synapse_root: Path) -> Iterator[Pair]:
    """Two booted Synapse hosts on a private /24; A's PostgreSQL open to B, B's own services off."""
    with Container(synapse_root, name="multihost-a") as a, \
            Container(synapse_root, name="multihost-b") as b, \
            PrivateLink(a, b, ADDR_A, ADDR_B) as link:
        postgres_listen_privately(a, ADDR_A, ADDR_B)
        # A worker host runs no database and no Redis of its own, and its admin stops
        # Synapse's main process for good (README.Debian: two mains on one database must never run).
        b.run(["systemctl", "disable", "--now", "matrix-synapse.service", "postgresql.service",
               "redis-server.service"], timeout=120)
        yield Pair(a, b, link)


def test_the_private_network_reaches_the_main_hosts_database_and_can_be_cut(pair):
    a, b, link = pair.a, pair.b, pair.link
    # B's psql reaches A's PostgreSQL over the link, as the synapse role, from B's address.
    who = remote_psql(b, ADDR_A, "SELECT current_user, inet_client_addr()").stdout.strip()
    assert who == f"{harness.DB_USER}|{ADDR_B}"
    # B has no database of its own any more: the answer came from A.
    assert b.run(["pg_isready", "-q", "-h", "/var/run/postgresql"], check=False).returncode != 0
    # Anyone else on the network is refused by pg_hba (A connecting to itself over the link).
    refused = remote_psql(a, ADDR_A, "SELECT 1", check=False)
    assert refused.returncode != 0 and "pg_hba.conf" in refused.stderr, refused.stderr
    for side in ("b", "a"):
        link.cut(side)
        assert link.state(side).split()[1] == "DOWN"
        cut = remote_psql(b, ADDR_A, "SELECT 1", check=False, connect_timeout=3)
        assert cut.returncode != 0, cut.stdout
        link.restore(side)
        # A neighbour lookup that failed during the cut answers "No route to host" until the
        # kernel probes again (seconds): the link is back when a query gets through.
        poll(lambda: remote_psql(b, ADDR_A, "SELECT 1", check=False).stdout.strip() == "1", 30,
             f"A's database over the link after restoring side {side}", interval=1)


# --------------------------------------------------------------------------
# The package on both hosts


@dataclasses.dataclass
class Cluster(Pair):
    deb: Path


def synapse_status(c: Container) -> tuple[int, dict[str, Any]]:
    r = c.run(["matrix-synapse-workers", "status", "--json"], check=False, timeout=60)
    assert r.returncode in (0, 4, 5), (r.returncode, r.stdout, r.stderr)  # healthy, degraded, broken
    return r.returncode, json.loads(r.stdout)


def problems(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [ch for ch in data["checks"] if ch["status"] in ("warn", "fail")]


def wait_healthy(c: Container, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, data = synapse_status(c)
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"status not healthy within {timeout} s: exit {code}, "
                                 f"{json.dumps(problems(data), indent=1)}")
        time.sleep(2)


def health_over_tcp(c: Container, address: str, port: int) -> str:
    return c.run(["curl", "-sS", "--max-time", "5", f"http://{address}:{port}/health"],
                 check=False).stdout


@pytest.fixture(scope="module")
def cluster(pair: Pair, package_deb: Path) -> Cluster:
    from matrix_synapse_workers.core.topology import http_port
    a, b = pair.a, pair.b
    # MSW_PACKAGE_DEB: test a .deb built elsewhere instead of dist/'s.
    deb = Path(os.environ.get("MSW_PACKAGE_DEB") or package_deb)
    # Host A: the package as a main host with one worker host.
    a.install_debs([deb], preseed=main_host_answers())
    for name in ("main", "client-1"):
        harness.wait_for_http(a, f"{SOCKETS}/{name}.sock", "/health", timeout=90)
    a.write_file("/etc/nginx/sites-enabled/matrix-test", VHOST)
    a.run(["nginx", "-t", "-q"])
    a.run(["systemctl", "reload-or-restart", "nginx.service"])
    harness.wait_for_http(a, NGINX, "/_matrix/client/versions", timeout=60)
    for path in ("cluster.yaml", "replication-secret", "redis-password"):
        assert a.exists(f"{CLUSTER_DIR}/{path}"), path
    for secret in ("replication-secret", "redis-password"):
        assert file_stat(a, f"{CLUSTER_DIR}/{secret}") == "640 root matrix-synapse"

    # The admin copies the main host's files to the worker host and points the database at A.
    copy_files(a, b, ADMIN_COPIES)
    for path in ADMIN_COPIES:
        assert file_stat(b, path) == file_stat(a, path), path
    b.run(["sed", "-i", "-E", rf"s|^(\s+host:\s*)/var/run/postgresql\s*$|\1{ADDR_A}|",
           "/etc/matrix-synapse/homeserver.yaml"])
    db = b.run(["python3", "-c", "import yaml,json; print(json.dumps(yaml.safe_load("
                "open('/etc/matrix-synapse/homeserver.yaml'))['database']['args']))"]).stdout
    assert json.loads(db)["host"] == ADDR_A

    # Host B: the package as a worker host.
    installed = b.install_debs([deb], preseed=worker_host_answers())
    for name in REMOTE:
        try:
            b.wait_until(["systemctl", "is-active", "--quiet", unit_of(name)], timeout=120)
        except harness.CommandFailed:
            raise AssertionError(
                f"{unit_of(name)} is not active on the worker host\n--- dpkg -i ---\n"
                f"{installed.stdout[-3000:]}{installed.stderr[-3000:]}\n--- journal ---\n"
                f"{b.journal(unit_of(name), lines=80)}\n--- {log_of(name)} ---\n"
                f"{b.run(['tail', '-n', '60', log_of(name)], check=False).stdout}") from None
    for name in REMOTE:
        port = http_port(name.split("-")[0], 1)
        poll(lambda: health_over_tcp(a, ADDR_B, port) == "OK", 90,
             f"{name} answering /health on {ADDR_B}:{port} from the main host")
    return Cluster(a, b, pair.link, deb)


def test_the_worker_host_runs_only_its_workers_on_the_main_hosts_database(cluster):
    a, b = cluster.a, cluster.b
    # Main does not run on the worker host, and a start is refused by the drop-in's condition.
    assert b.run(["systemctl", "is-active", "matrix-synapse.service"], check=False).stdout.strip() != "active"
    b.run(["systemctl", "start", "matrix-synapse.service"], check=False, timeout=60)
    assert b.run(["systemctl", "is-active", "matrix-synapse.service"], check=False).stdout.strip() != "active"
    assert sorted(n[:-5] for n in b.run("ls /etc/matrix-synapse/workers").stdout.split()) == REMOTE
    # The worker host's processes hold connections to A's PostgreSQL and A's Redis.
    from_b = harness.psql(a, f"SELECT count(*) FROM pg_stat_activity WHERE client_addr = '{ADDR_B}'",
                          user="postgres", password=None).stdout.strip()
    assert int(from_b) >= 2, from_b
    established = b.run(["ss", "-Htn", "state", "established", "dst", f"{ADDR_A}:6379"]).stdout
    assert len(established.splitlines()) >= 2, established
    # Secrets kept their owners and modes on the way.
    for secret in ("replication-secret", "redis-password"):
        assert file_stat(b, f"{CLUSTER_DIR}/{secret}") == "640 root matrix-synapse"


#: Where a secret must not be found in a world-readable file (the whole of /usr is the packages').
SECRET_SEARCH = ["/etc", "/run", "/tmp", "/var/tmp", "/var/log", "/var/lib/matrix-synapse",
                 "/var/lib/matrix-synapse-workers", "/var/lib/redis"]


def test_secrets_are_in_no_world_readable_file_command_line_or_journal(cluster):
    """The replication secret and the Redis password, on both hosts, while everything runs."""
    for c in (cluster.a, cluster.b):
        secrets = {name: c.read_file(f"{CLUSTER_DIR}/{name}").strip()
                   for name in ("replication-secret", "redis-password")}
        assert all(len(value) >= 16 for value in secrets.values()), secrets.keys()
        readable = c.run(["find", *SECRET_SEARCH, "-xdev", "-type", "f", "-perm", "-o=r",
                          "-size", "-2M", "-print0"], check=False).stdout
        commands = c.run(["ps", "-eww", "-o", "args="]).stdout
        journal = c.run(["journalctl", "-b", "--no-pager", "-o", "cat"]).stdout
        for name, value in secrets.items():
            found = c.run(["sh", "-c", 'xargs -0r grep -lF -e "$1" -- || true', "sh", value],
                          input=readable).stdout.split()
            assert not found, f"{name} in world-readable files: {found}"
            assert value not in commands, f"{name} on a command line"
            assert value not in journal, f"{name} in the journal"


def new_user(c: Container, name: str) -> dict[str, str]:
    register_user(c, f"{SOCKETS}/main.sock", name, f"{name}-password-1")
    token = login(c, NGINX, name, f"{name}-password-1")["access_token"]
    return {"Authorization": f"Bearer {token}"}


def through_nginx(c: Container, method: str, path: str, auth: dict[str, str], body: Any = None,
                  marker: str | None = None) -> harness.HttpResponse:
    if marker:
        path += ("&" if "?" in path else "?") + f"msw_probe={marker}"
    return http(c, NGINX, method, path, body, auth, timeout=REQUEST_TIMEOUT)


def served_by(cluster: Cluster, marker: str) -> list[str]:
    """Which processes on either host logged the marker."""
    found = []
    for host, names in ((cluster.a, ["main", "client-1"]), (cluster.b, REMOTE)):
        for name in names:
            if grep_markers(host, [marker], [log_of(name)]):
                found.append(name)
    return found


def served_by_waiting(cluster: Cluster, marker: str) -> list[str]:
    return poll(lambda: served_by(cluster, marker), 15, f"a log line with {marker}")


def send(c: Container, room_id: str, auth: dict[str, str], body: str, txn: str) -> str:
    r = through_nginx(c, "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
                      auth, {"msgtype": "m.text", "body": body})
    assert r.status == 200, (r.status, r.text)
    return r.json()["event_id"]


def persisted_by(c: Container, event_id: str) -> str:
    return harness.psql(c, f"SELECT instance_name FROM events WHERE event_id = '{event_id}'").stdout.strip()


def timeline(sync: harness.HttpResponse, room_id: str) -> list[str]:
    events = sync.json()["rooms"]["join"][room_id]["timeline"]["events"]
    return [e.get("content", {}).get("body", "") for e in events]


def test_a_client_through_the_main_hosts_nginx_is_served_by_the_worker_host(cluster):
    a, b = cluster.a, cluster.b
    auth = new_user(a, "alice")
    room = through_nginx(a, "POST", "/_matrix/client/v3/createRoom", auth, {"name": "two hosts"},
                         marker="mh-create")
    assert room.status == 200, room.text
    assert served_by_waiting(cluster, "mh-create") == ["client-1"]
    room_id = room.json()["room_id"]
    before = b.run(["grep", "-c", "/_synapse/replication/send_events", log_of(EVENTS_B)],
                   check=False).stdout.strip() or "0"
    event_id = send(a, room_id, auth, "hello from A, stored by B", "t1")
    # The event persister on B wrote it (into A's database), on main's request over the link.
    assert persisted_by(a, event_id) == EVENTS_B
    # Synapse's generated log config buffers lines (flushed every 5 s or at a warning).
    poll(lambda: int(b.run(["grep", "-c", "/_synapse/replication/send_events", log_of(EVENTS_B)],
                           check=False).stdout.strip() or "0") > int(before),
         15, f"main's send_events request in {EVENTS_B}'s log")
    synced = through_nginx(a, "GET", "/_matrix/client/v3/sync?timeout=0", auth, marker="mh-sync")
    assert synced.status == 200, synced.text
    assert "hello from A, stored by B" in timeline(synced, room_id)
    assert served_by_waiting(cluster, "mh-sync") == [SYNC_B]


def test_cutting_the_link_falls_back_to_main_and_restoring_it_brings_the_worker_host_back(cluster):
    a, b, link = cluster.a, cluster.b, cluster.link
    auth = new_user(a, "bob")
    room_id = through_nginx(a, "POST", "/_matrix/client/v3/createRoom", auth, {}).json()["room_id"]

    def one_sync(marker: str) -> tuple[bool, str]:
        r = through_nginx(a, "GET", "/_matrix/client/v3/sync?timeout=0", auth, marker=marker)
        return r.status == 200, f"{r.status} {r.text[:200]}"

    def on_b(samples: list) -> set[str]:
        return grep_markers(b, [s.marker for s in samples], [log_of(SYNC_B)])

    with Stream(one_sync, prefix="mhcut") as stream:
        warm = stream.wait_for(5, after=time.monotonic())
        assert all(s.ok for s in warm), [s.detail for s in warm if not s.ok]
        poll(lambda: on_b(warm) == {s.marker for s in warm}, 15,
             f"the warm-up syncs in {SYNC_B}'s log (buffered, flushed every 5 s)")

        cut_started = time.monotonic()
        link.cut("b")
        cut_done = time.monotonic()
        # Each host's status reports the other side as gone.
        time.sleep(5)
        code_a, status_a = synapse_status(a)
        code_b, status_b = synapse_status(b)
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_done)))
        restore_started = time.monotonic()
        link.restore("b")
        restored = time.monotonic()

        def back_on_b() -> bool:
            return bool(on_b([s for s in stream.since(restored) if s.ok]))
        poll(back_on_b, 120, f"/sync served by {SYNC_B} again after the link came back",
             interval=2)
        back = time.monotonic()
        stream.wait_for(5, after=back)
    samples = stream.finished()

    in_flight = [s for s in samples if s.start < cut_done and s.end > cut_started]
    after_cut = [s for s in samples if s.start >= cut_done]
    failed = [(round(s.start - cut_done, 1), round(s.end - s.start, 1), s.detail[:200])
              for s in after_cut if not s.ok or s.end - s.start > ANSWER_WITHIN]
    during = [s for s in after_cut if s.start < restore_started]
    answered_during = [s for s in during if s.end <= restore_started]
    print(f"multihost: {len(samples)} requests, {len(during)} sent during the {CUT_SECONDS:.0f} s "
          f"cut ({len(answered_during)} answered before it ended, slowest "
          f"{max((s.end - s.start for s in during), default=0):.1f} s); in flight at the cut "
          f"(s, ok): {[(round(s.end - s.start, 1), s.ok) for s in in_flight]}; "
          f"back on {SYNC_B} {back - restored:.1f} s after the link came back")
    assert failed == [], failed
    assert code_a == 5 and {row["subject"] for row in problems(status_a)} >= set(REMOTE), status_a
    assert code_b == 5 and any(f"{ADDR_A}:9093" in row["subject"] + row["detail"]
                               for row in problems(status_b)), status_b
    assert len(during) >= CUT_SECONDS, f"only {len(during)} requests during the cut"
    # Main answered what was sent during the cut; B none of what was answered then.
    assert answered_during, "no request sent during the cut was answered before it ended"
    assert not on_b(answered_during)
    on_main = grep_markers(a, [s.marker for s in answered_during], [log_of("main")])
    assert on_main == {s.marker for s in answered_during}

    # The event persister is back too: a send works and B wrote it.
    event_id = send(a, room_id, auth, "after the cut", "t-after")
    assert persisted_by(a, event_id) == EVENTS_B
    # B's sync worker catches up on its own and serves it.  Not at once: Synapse finds a
    # dead Redis connection by a ping every 30 s (30 s reply timeout) and reconnects with
    # a growing back-off, so after a 30 s cut this has taken about 85 s.
    sent = time.monotonic()
    attempt = iter(range(1, 1000))

    def synced_on_b() -> bool:
        marker = f"mh-after{next(attempt)}x"
        r = through_nginx(a, "GET", "/_matrix/client/v3/sync?timeout=0", auth, marker=marker)
        return (r.status == 200 and "after the cut" in timeline(r, room_id)
                and served_by_waiting(cluster, marker) == [SYNC_B])
    poll(synced_on_b, 180, f"{SYNC_B} serving the event sent after the link came back",
         interval=2)
    print(f"multihost: {SYNC_B} served the event sent after the cut {time.monotonic() - sent:.1f} s "
          f"after it was sent")
    for host in (a, b):
        wait_healthy(host)


def secret_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [ch for ch in data["checks"]
            if "secret" in " ".join(str(ch.get(k, "")) for k in ("check", "subject", "detail")).lower()]


def test_a_wrong_replication_secret_on_the_worker_host_is_refused_and_reported(cluster):
    b = cluster.b
    code, healthy = synapse_status(b)
    assert code == 0, problems(healthy)
    rows = secret_rows(healthy)
    assert rows and all(r["status"] == "ok" for r in rows), healthy["checks"]
    good = b.read_file(SECRET)
    units = [unit_of(n) for n in REMOTE]
    watched = ("/etc/matrix-synapse", "/etc/systemd/system", "/var/lib/matrix-synapse-workers",
               "/etc/redis", "/etc/nginx")
    try:
        # In place: the file keeps its owner and mode, only the secret is wrong.
        b.run(["sh", "-c", 'printf "%s\\n" not-the-main-hosts-secret > "$1"', "sh", SECRET])
        assert file_stat(b, SECRET) == "640 root matrix-synapse"
        files_before = tree_fingerprint(b, *watched)
        pids_before = [b.run(["systemctl", "show", "-P", "MainPID", u]).stdout.strip() for u in units]

        r = b.run(["matrix-synapse-workers", "apply", "--host-role", "worker-host",
                   "--host-name", LABEL], check=False, timeout=300)
        assert r.returncode != 0, r.stdout + r.stderr
        assert SECRET in r.stderr, r.stderr
        assert tree_fingerprint(b, *watched) == files_before
        assert [b.run(["systemctl", "show", "-P", "MainPID", u]).stdout.strip()
                for u in units] == pids_before

        code, data = synapse_status(b)
        assert code != 0
        refused = [row for row in secret_rows(data) if row["status"] == "fail"]
        assert refused, data["checks"]
        assert any("replication" in (row["detail"] + row["check"]).lower() for row in refused)
    finally:
        b.write_file(SECRET, good, mode=0o640)
        b.run(["chown", "root:matrix-synapse", SECRET])
    code, data = synapse_status(b)
    assert all(row["status"] == "ok" for row in secret_rows(data)), data["checks"]
