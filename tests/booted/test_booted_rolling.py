"""Rolling restarts and Synapse upgrades on a booted system (issue 25).

One booted container walks through, in order (each test continues where the
previous one stopped): the older stand-in Synapse with two sync workers, a
client reader and an event persister behind nginx; a reconfigure that
restarts every worker (the admin changed log.yaml: each worker's log config
changes, main's files do not) while a client polls /sync and sends through
nginx; the stand-in upgraded to the next Synapse release (its postinst and our
trigger); a worker started while main is down (the start gate).
"""

from __future__ import annotations

import threading
from collections import Counter
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from booted_config import NGINX
from harness import Container, login, register_user
from support.standin import build_standin
from test_scenarios import (SOCKETS, assert_all_healthy, install_workers, main_pid, preseed, reconfigure,
                            serve_through_nginx, unit_of)

OLD_SYNAPSE, NEW_SYNAPSE = "1.163.1", "1.163.2"
WORKERS = ["client-1", "events-1", "sync-1", "sync-2"]
STATELESS = ["client-1", "sync-1", "sync-2"]
MAIN_UNIT = "matrix-synapse.service"
LOG_YAML = "/etc/matrix-synapse/log.yaml"


class Client:
    """A Matrix client through nginx: incremental /sync (long-polling 1 s) and a send, in turn."""

    def __init__(self, c: Container, token: str, room: str) -> None:
        self.c, self.room = c, room
        self.auth = {"Authorization": f"Bearer {token}"}
        self.since = ""
        self.txn = 0
        self.seen: list[tuple[str, Any]] = []
        self.when: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _one(self, what: str, method: str, path: str, body: Any = None) -> Any:
        try:
            r = harness.http(self.c, NGINX, method, path, body, self.auth, timeout=20)
        except harness.HarnessError as exc:
            self.seen.append((what, str(exc)[:200]))
            self.when.append(time.monotonic())
            return None
        self.seen.append((what, r.status))
        self.when.append(time.monotonic())
        return r.json() if r.status == 200 else None

    def step(self) -> None:
        since = f"&since={self.since}" if self.since else ""
        synced = self._one("sync", "GET", f"/_matrix/client/v3/sync?timeout=1000{since}")
        if synced is not None:
            self.since = synced["next_batch"]
        self.txn += 1
        self._one("send", "PUT", f"/_matrix/client/v3/rooms/{self.room}/send/m.room.message/r{self.txn}",
                  {"msgtype": "m.text", "body": f"rolling {self.txn}"})

    def __enter__(self) -> "Client":
        self.seen.clear()
        self.when.clear()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.step()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def summary(self) -> str:
        """Requests by answer, and how long the answers other than 200 went on."""
        counts = Counter(f"{what} {status}" for what, status in self.seen)
        odd = [t for t, (_, status) in zip(self.when, self.seen) if status != 200]
        span = f", not 200 for {odd[-1] - odd[0]:.1f} s" if odd else ""
        return f"{len(self.seen)} requests: {dict(sorted(counts.items()))}{span}"

    def failures(self, allowed: frozenset[int] = frozenset({200})) -> list[tuple[str, Any]]:
        return [s for s in self.seen if s[1] not in allowed]


@pytest.fixture(scope="module")
def standins(booted_host: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("standin-rolling")
    return {v: build_standin(v, out / v) for v in (OLD_SYNAPSE, NEW_SYNAPSE)}


@pytest.fixture(scope="module")
def deployed(synapse_root: Path, package_deb: Path, standins: dict[str, Path]) -> Iterator[Client]:
    started = time.monotonic()
    with Container(synapse_root, name="rolling") as c:
        c.install_debs([standins[OLD_SYNAPSE]])  # the admin's starting point: the older release
        install_workers(c, package_deb, preseed("custom", "sync, client, events", "sync:2"))
        assert_all_healthy(c, WORKERS)
        serve_through_nginx(c)
        register_user(c, f"{SOCKETS}/main.sock", "roller", "roller-password-1")
        token = login(c, NGINX, "roller", "roller-password-1")["access_token"]
        room = harness.http(c, NGINX, "POST", "/_matrix/client/v3/createRoom", {"name": "rolling"},
                            {"Authorization": f"Bearer {token}"})
        assert room.status == 200, room.text
        client = Client(c, token, room.json()["room_id"])
        client.step()
        yield client
    print(f"\ntest_booted_rolling: module wall time {time.monotonic() - started:.0f} s")


def show(c: Container, unit: str, *props: str) -> dict[str, int]:
    out = c.run(["systemctl", "show", "-p", ",".join(props), unit]).stdout
    return {k: int(v) for k, v in (line.split("=", 1) for line in out.splitlines()) if v.isdigit()}


def test_reconfigure_restarts_stateless_workers_one_at_a_time_and_no_request_fails(deployed: Client) -> None:
    c = deployed.c
    pids = {u: main_pid(c, u) for u in [MAIN_UNIT, *map(unit_of, WORKERS)]}
    original = c.read_file(LOG_YAML)
    c.run(["python3", "-c", "import yaml; p = '%s'; d = yaml.safe_load(open(p)); "
           "d['root']['level'] = 'WARNING'; open(p, 'w').write(yaml.safe_dump(d))" % LOG_YAML])
    took = time.monotonic()
    with deployed:
        reconfigure(c, preseed("custom", "sync, client, events", "sync:2"))
        time.sleep(2)  # a few requests after the last restart too
    took = time.monotonic() - took
    c.write_file(LOG_YAML, original)  # the stand-in's conffile as shipped, for the upgrade below
    assert_all_healthy(c, WORKERS)
    after = {u: main_pid(c, u) for u in pids}
    assert after[MAIN_UNIT] == pids[MAIN_UNIT], "main's files did not change: it keeps running"
    assert all(after[unit_of(n)] != pids[unit_of(n)] for n in WORKERS), (pids, after)
    times = {n: show(c, unit_of(n), "ActiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")
             for n in WORKERS}
    rolled = sorted(STATELESS, key=lambda n: times[n]["ActiveExitTimestampMonotonic"])
    for before, then in zip(rolled, rolled[1:]):
        # The next one is stopped only once the one before is back.
        assert times[then]["ActiveExitTimestampMonotonic"] >= times[before]["ActiveEnterTimestampMonotonic"], times
    # The event persister (stateful) restarted first, on its own step.
    assert times["events-1"]["ActiveEnterTimestampMonotonic"] <= times[rolled[0]]["ActiveExitTimestampMonotonic"]
    print(f"\nreconfigure with rolling restarts: {took:.1f} s, "
          f"order {rolled}; {deployed.summary()}")
    assert len(deployed.seen) >= 10 and deployed.failures() == []


def test_synapse_upgrade_main_first_then_writers_and_no_restart_loop(deployed: Client, standins) -> None:
    c = deployed.c
    since = c.run(["date", "+%s"]).stdout.strip()
    took = time.monotonic()
    with deployed:
        c.install_debs([standins[NEW_SYNAPSE]])  # its postinst restarts main (and, PartOf=, the workers)
    took = time.monotonic() - took
    for name in ["main", *WORKERS]:
        harness.wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=90)
    versions = {n: harness.http_unix(c, f"{SOCKETS}/{n}.sock", "GET", "/health").headers.get("server")
                for n in ["main", *WORKERS]}
    assert set(versions.values()) == {f"Synapse/{NEW_SYNAPSE}"}, versions
    main = show(c, MAIN_UNIT, "ActiveEnterTimestampMonotonic", "NRestarts")
    units = {n: show(c, unit_of(n), "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                     "NRestarts") for n in WORKERS}
    for name, seen in units.items():
        assert seen["ExecMainStartTimestampMonotonic"] >= main["ActiveEnterTimestampMonotonic"], (name, seen, main)
        assert seen["NRestarts"] == 0, (name, seen)
        if name != "events-1":  # the writer first, right behind main
            assert seen["ExecMainStartTimestampMonotonic"] >= units["events-1"]["ActiveEnterTimestampMonotonic"]
        starts = c.run(f"journalctl -q -o cat -u {unit_of(name)} --since @{since} | grep -c '^Started'",
                       check=False).stdout.strip()
        assert starts == "1", f"{name} started {starts} times during the upgrade: the trigger restarted it again"
    assert main["NRestarts"] == 0
    writer_lag = (units["events-1"]["ActiveEnterTimestampMonotonic"] - main["ActiveEnterTimestampMonotonic"]) / 1e6
    print(f"\nupgrade {OLD_SYNAPSE} -> {NEW_SYNAPSE}: dpkg -i {took:.1f} s; event persister up {writer_lag:.1f} s "
          f"after main; {deployed.summary()}")
    # While main restarts, what it would answer gets nginx's Matrix 429 (clients retry it).
    assert deployed.failures(frozenset({200, 429})) == []


def test_a_worker_started_while_main_is_down_waits_for_it_instead_of_looping(deployed: Client) -> None:
    c = deployed.c
    c.run(["systemctl", "stop", MAIN_UNIT])  # PartOf=: the workers stop with it
    # Masked, main stays down although the worker Wants= it (as when it fails to start).
    c.run(["systemctl", "mask", "--runtime", MAIN_UNIT])
    c.run(["systemctl", "start", "--no-block", unit_of("sync-1")])
    time.sleep(6)  # two of Restart='s 3 s intervals
    state = c.run(["systemctl", "show", "-P", "ActiveState", unit_of("sync-1")]).stdout.strip()
    assert state == "activating", state
    assert show(c, unit_of("sync-1"), "NRestarts")["NRestarts"] == 0
    c.run(["systemctl", "unmask", "--runtime", MAIN_UNIT])
    c.run(["systemctl", "start", MAIN_UNIT])
    started = time.monotonic()
    harness.wait_for_http(c, f"{SOCKETS}/sync-1.sock", "/health", timeout=60)
    print(f"\nstart gate: sync-1 answered {time.monotonic() - started:.1f} s after main's start returned")
    assert show(c, unit_of("sync-1"), "NRestarts")["NRestarts"] == 0
    c.run(["systemctl", "start", "matrix-synapse.target"])
    assert_all_healthy(c, WORKERS)
