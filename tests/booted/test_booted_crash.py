"""Issue 16 on a booted system: a dpkg-reconfigure that adds and removes workers,
killed with SIGKILL after an action, then recovered as an admin would.

tests/chroot/test_crash_consistency.py proves the files, accounts and answers
in a chroot, where systemd does not run.  Here the kill points also include
each unit's stop, start and restart, systemd's daemon-reload and nginx's
reload, and what must converge also includes which units run.

One booted container (the stand-in Synapse on PostgreSQL, our dedicated Redis,
nginx with the admin's vhost including our snippet): the package installed
with BEFORE (sync-1, client-1, typing-1), a user registered.  The change is a
``dpkg-reconfigure`` (noninteractive, preseeded) to AFTER (sync:2, client,
events, federation_reader; typing goes): a worker stops and its files go,
three start, main and the kept workers restart, nginx reloads.

1. Forward uninterrupted, with ``MSW_ACTION_LOG``: its actions, and the
   reference state (files under WATCHED with mode and owner, the generator's
   links, groups, statoverrides, answers, ``is-active``/``is-enabled`` of every
   unit we manage, which worker units run); then back (AFTER to BEFORE, the
   same kind of change) uninterrupted: its actions, and its state, which must
   be the install's.
2. Then the two directions alternate, each killed after an action N
   (``MSW_KILL_AFTER_ACTION=N``: SIGKILL of its process group) and recovered
   by ``dpkg --configure -a`` and ``dpkg-reconfigure`` again (a killed
   dpkg-reconfigure leaves dpkg's status alone: running it again is the
   recovery, as docs/crash-safety.md says).  Each recovery must give its
   direction's reference state (and so is the start of the next kill), with no
   temporary file, no ``applying`` or ``services-owed``, every worker that runs
   answering /health, ``/_matrix/client/versions`` and a ``/sync`` with the
   user's token answering through nginx, the admin's files byte-identical.
   Alternating, rather than resetting with an uninterrupted run after each
   kill, gives twice the kill points in the same time.

While a change and its recovery run, a poller in the container asks
``/_matrix/client/versions`` through nginx every 0.2 s: the time Synapse did
not answer is printed for each uninterrupted change and for each killed and
recovered one.

``MSW_CRASH_POINTS``: unset, a sample of six (see :func:`kill_plan`); ``all``,
every action of each direction; a number, that many spread evenly over each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import harness
from booted_config import NGINX, REPO, VHOST, container_name
from harness import Container, http, register_user, wait_for_http
from test_scenarios import SOCKETS, install_workers, preseed, unit_of
from support import crashpoints
from support.crashpoints import differences, temporaries

sys.path.insert(0, str(REPO))
from bench import outage as outage_figures  # noqa: E402

PACKAGE = "matrix-synapse-workers"
BEFORE = preseed("custom", "sync, client, typing", "")
AFTER = preseed("custom", "sync, client, events, federation_reader", "sync:2")
BEFORE_WORKERS = ["client-1", "sync-1", "typing-1"]
AFTER_WORKERS = ["client-1", "events-1", "federation-reader-1", "sync-1", "sync-2"]
UNITS = ["matrix-synapse.service", "matrix-synapse.target", "nginx.service",
         "redis-server.service", "redis-server@matrix-synapse.service",
         *map(unit_of, sorted(set(BEFORE_WORKERS) | set(AFTER_WORKERS)))]
WATCHED = ("/etc/matrix-synapse", "/etc/nginx", "/etc/redis", "/etc/tmpfiles.d",
           "/etc/systemd/system", "/var/lib/matrix-synapse-workers",
           "/run/systemd/generator/matrix-synapse.target.wants")
ADMIN_FILES = ("/etc/redis/redis.conf", "/etc/matrix-synapse/homeserver.yaml",
               "/etc/nginx/sites-enabled/matrix-test")
RECONFIGURE = ["dpkg-reconfigure", "-fnoninteractive", PACKAGE]
ACTION_LOG = "/root/msw-actions"
POLL_LOG = "/root/msw-poll.log"
KILLED = (-9, 137)
# The actions a sample must include (the first of each), besides the first and the last.
SAMPLED = ("systemctl stop ", "systemctl daemon-reload", "systemctl restart matrix-synapse.service",
           "systemctl start ", "systemctl reload nginx.service")

SNAPSHOT = r'''
import grp, hashlib, json, os, pwd, stat, sys

def owner(st):
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"

found = {}
for top in sys.argv[1:]:
    if not os.path.lexists(top):
        continue
    entries = [top]
    for base, dirs, files in os.walk(top):
        entries += [os.path.join(base, name) for name in dirs + files]
    for path in entries:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            kind, content = "link", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, content = "dir", ""
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                kind, content = "file", hashlib.sha256(handle.read()).hexdigest()
        else:
            kind, content = "other", ""
        found[path] = [kind, oct(stat.S_IMODE(st.st_mode)), owner(st), content]
print(json.dumps(found))
'''

POLLER = r'''
import http.client, sys, time
log = open(sys.argv[1], "a", buffering=1)
while True:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=2)
        conn.request("GET", "/_matrix/client/versions")
        status = conn.getresponse().status
        conn.close()
    except Exception:
        status = 0
    log.write(f"{started:.3f} {status}\n")
    time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
'''


def state(c: Container) -> dict[str, object]:
    """What a recovery must give exactly as the uninterrupted run gave it."""
    found: dict[str, object] = dict(json.loads(c.run(
        ["python3", "-c", SNAPSHOT, *WATCHED]).stdout))
    for name in ("/etc/group", "/etc/gshadow", "/var/lib/dpkg/statoverride"):
        found[name] = c.read_file(name)
    found["answers"] = sorted(c.run(["debconf-show", PACKAGE]).stdout.splitlines())
    found["status"] = c.run(["dpkg-query", "-W", "-f", "${Status}", PACKAGE]).stdout
    units = c.run(["/bin/sh", "-c", 'for unit in "$@"; do echo "$unit $(systemctl is-active "$unit")" '
                   '"$(systemctl is-enabled "$unit" 2>&1)"; done', "sh", *UNITS], check=False).stdout
    for line in units.splitlines():
        unit, _, rest = line.partition(" ")
        found[unit] = rest
    found["worker units running"] = running_workers(c)
    found["failed units"] = c.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend",
                                   "matrix-synapse*", "redis*", "nginx*"]).stdout.split()
    return found


def running_workers(c: Container) -> list[str]:
    """Every worker unit systemd runs (a unit we no longer manage included)."""
    out = c.run(["systemctl", "list-units", "--plain", "--no-legend", "--state=active",
                 "matrix-synapse-worker@*"]).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def serving(c: Container, token: str, workers: list[str]) -> None:
    """Every process answers /health; a client's /versions and /sync through nginx."""
    for name in ["main", *workers]:
        wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=90)
    wait_for_http(c, NGINX, "/_matrix/client/versions", timeout=60)
    synced = http(c, NGINX, "GET", "/_matrix/client/v3/sync?timeout=0", None,
                  {"Authorization": f"Bearer {token}"})
    assert synced.status == 200, synced.text[:500]
    assert "next_batch" in synced.json(), synced.text[:500]


def actions(c: Container) -> list[str]:
    lines = c.run(["cat", ACTION_LOG], check=False).stdout.splitlines()
    c.run(["rm", "-f", ACTION_LOG])
    return [line.partition(" ")[2] for line in lines]


@dataclass
class Outage:
    """How long /versions through nginx did not answer 200 while a change ran."""

    unanswered: float
    longest: float
    polls: int

    def __str__(self) -> str:
        return f"{self.unanswered:.1f} s unanswered (longest {self.longest:.1f} s, {self.polls} polls)"


class Poller:
    """/_matrix/client/versions through nginx every 0.2 s, from a unit in the container
    (outside the process group a kill takes down)."""

    def __init__(self, c: Container) -> None:
        self.c = c

    def __enter__(self) -> "Poller":
        self.c.run(["rm", "-f", POLL_LOG])
        self.c.run(["systemd-run", "--quiet", "--collect", "--unit=msw-poll", "python3", "-c",
                    POLLER, POLL_LOG])
        self.c.wait_until(["grep", "-q", " 200$", POLL_LOG], timeout=30, interval=0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.run(["systemctl", "stop", "msw-poll.service"], check=False)

    def outage(self) -> Outage:
        self.c.run(["systemctl", "stop", "msw-poll.service"], check=False)
        polls = [(float(t), int(s)) for t, s in
                 (line.split() for line in self.c.read_file(POLL_LOG).splitlines() if line.strip())]
        unanswered = longest = gap = 0.0
        for (at, status), (after, _) in zip(polls, [*polls[1:], (polls[-1][0] + 0.2, 200)]):
            if status == 200:
                gap = 0.0
                continue
            unanswered += after - at
            gap += after - at
            longest = max(longest, gap)
        return Outage(unanswered, longest, len(polls))


@dataclass
class Change:
    """One direction of the reconfigure, and what its uninterrupted run did and left."""

    name: str
    answers: str
    workers: list[str]
    actions: list[str]
    reference: dict[str, object]
    outage: Outage


@dataclass
class Deployment:
    c: Container
    token: str
    admin: dict[str, str]
    forward: Change  # BEFORE to AFTER: typing-1 goes, sync-2, events-1 and federation_reader-1 come
    back: Change  # AFTER to BEFORE


def reconfigure(c: Container, token: str, answers: str, workers: list[str]) -> tuple[list[str], Outage]:
    """The change uninterrupted, counted and timed."""
    c.exec(["debconf-set-selections"], input=answers)
    with Poller(c) as poller:
        done = c.run(RECONFIGURE, env={"MSW_ACTION_LOG": ACTION_LOG}, timeout=600)
        serving(c, token, workers)
        outage = poller.outage()
    assert f"{len(workers)} workers configured" in done.stdout + done.stderr, done.stderr
    return actions(c), outage


@pytest.fixture(scope="module")
def deployment(synapse_root: Path, package_deb: Path) -> Iterator[Deployment]:
    with Container(synapse_root, name=container_name("booted-crash")) as c:
        install_workers(c, package_deb, BEFORE)
        c.write_file("/etc/nginx/sites-enabled/matrix-test", VHOST)
        c.run(["nginx", "-t", "-q"])
        c.run(["systemctl", "reload-or-restart", "nginx.service"])
        token = register_user(c, f"{SOCKETS}/main.sock", "alice", "alice-password-1")["access_token"]
        serving(c, token, BEFORE_WORKERS)
        installed = state(c)
        admin = {name: c.run(["sha256sum", name]).stdout for name in ADMIN_FILES}
        changes = []
        for name, answers, workers in (("forward", AFTER, AFTER_WORKERS),
                                       ("back", BEFORE, BEFORE_WORKERS)):
            logged, outage = reconfigure(c, token, answers, workers)
            reference = state(c)
            assert reference["worker units running"] == list(map(unit_of, workers)), reference
            print(f"{name}, uninterrupted: {len(logged)} actions, {outage}")
            for number, action in enumerate(logged, 1):
                print(f"  {number} {action}")
            changes.append(Change(name, answers, workers, logged, reference, outage))
        changed = differences(installed, changes[1].reference)
        assert not changed, f"back to BEFORE, the state differs from the install's: {changed}"
        yield Deployment(c, token, admin, *changes)


def first(logged: list[str], prefix: str) -> int:
    return next(n for n, action in enumerate(logged, 1) if action.startswith(prefix))


def kill_plan(forward: list[str], back: list[str]) -> list[tuple[str, int | None]]:
    """Which direction is killed after which action, in order; the directions alternate,
    so each recovery is the start of the next (None: that direction runs uninterrupted).

    The suite's sample: forward after the removed worker's stop, main's restart and
    nginx's reload; back after its first action, the returning worker's start and its
    last action.  ``MSW_CRASH_POINTS=all``: every action of each direction."""
    wanted = os.environ.get("MSW_CRASH_POINTS", "")
    if wanted == "all":
        ahead, behind = list(range(1, len(forward) + 1)), list(range(1, len(back) + 1))
    elif wanted:  # a number: a sample of that many of each direction, rotating daily
        ahead, behind = crashpoints.sample(len(forward), int(wanted)), crashpoints.sample(len(back), int(wanted))
    else:
        ahead = [first(forward, "systemctl stop "),
                 first(forward, "systemctl restart matrix-synapse.service"),
                 first(forward, "systemctl reload nginx.service")]
        behind = [1, first(back, "systemctl start "), len(back)]
    plan: list[tuple[str, int | None]] = []
    for step in range(max(len(ahead), len(behind))):
        plan.append(("forward", ahead[step] if step < len(ahead) else None))
        plan.append(("back", behind[step] if step < len(behind) else None))
    return plan


def test_the_change_takes_the_unit_actions_a_booted_system_needs(deployment):
    logged = deployment.forward.actions
    for needed in ("systemctl stop matrix-synapse-worker@typing-1.service",
                   "systemctl daemon-reload", "systemctl restart matrix-synapse.service",
                   "systemctl reload nginx.service"):
        assert needed in logged, logged
    assert any(a.startswith("systemctl start ") and unit_of("sync-2") in a for a in logged), logged
    assert any(a.startswith("removed ") and "typing-1" in a for a in logged), logged
    assert any(a.startswith("systemctl start ") and unit_of("typing-1") in a
               for a in deployment.back.actions), deployment.back.actions


def killed_and_recovered(deployment: Deployment, change: Change, point: int) -> tuple[Outage, dict]:
    """``change`` killed after action ``point``, then recovered; what differs from its reference."""
    c = deployment.c
    c.exec(["debconf-set-selections"], input=change.answers)
    problems: dict[str, object] = {}
    with Poller(c) as poller:
        killed = c.run(RECONFIGURE, check=False, timeout=600,
                       env={"MSW_ACTION_LOG": ACTION_LOG, "MSW_KILL_AFTER_ACTION": str(point)})
        taken = actions(c)
        configured = c.run(["dpkg", "--configure", "-a"], check=False, timeout=600)
        recovered = c.run(RECONFIGURE, check=False, timeout=600)
        try:
            serving(c, deployment.token, change.workers)
        except (AssertionError, harness.HarnessError) as exc:
            problems["serving"] = str(exc)[-800:]
        outage = poller.outage()
    if killed.returncode not in KILLED:
        problems["killed run"] = (killed.returncode, killed.stderr[-1500:])
    if taken != change.actions[:point]:
        problems["actions of the killed run"] = taken[-3:]
    if configured.returncode != 0:
        problems["dpkg --configure -a"] = configured.stderr[-1500:]
    if recovered.returncode != 0:
        problems["dpkg-reconfigure"] = recovered.stderr[-1500:]
    got = state(c)
    problems.update(differences(change.reference, got))
    if temporaries(got):
        problems["temporary files"] = temporaries(got)
    for name in ("applying", "services-owed"):
        if c.exists(f"/var/lib/matrix-synapse-workers/{name}"):
            problems[name] = "left"
    for name, digest in deployment.admin.items():
        if c.run(["sha256sum", name]).stdout != digest:
            problems[name] = "changed"
    if problems:
        problems["main's journal"] = c.journal("matrix-synapse.service", lines=40)
        problems["main's log"] = c.run("grep -E -A8 'ERROR|CRITICAL' /var/log/matrix-synapse/homeserver.log "
                                       "| tail -60", check=False).stdout
    return outage, problems


def test_a_reconfigure_killed_after_any_action_converges_with_synapse_answering(deployment):
    c = deployment.c
    failures = []
    killed_outages = []
    for direction, point in kill_plan(deployment.forward.actions, deployment.back.actions):
        change = getattr(deployment, direction)
        started = time.monotonic()
        if point is None:
            reconfigure(c, deployment.token, change.answers, change.workers)
            continue
        action = change.actions[point - 1]
        outage, problems = killed_and_recovered(deployment, change, point)
        killed_outages.append(outage.unanswered)
        print(f"{direction} killed after {point} ({action}), recovered: {outage}; "
              f"{time.monotonic() - started:.0f} s")
        if outage.longest > 10:
            print(c.journal(lines=120))
        if problems:
            failures.append(f"{direction} killed after {point} ({action}): {problems}")
            # Once more: when that converges, the next kill starts from the reference.
            reconfigure(c, deployment.token, change.answers, change.workers)
            if differences(change.reference, state(c)):
                break
    for change in (deployment.forward, deployment.back):
        print(f"{change.name} uninterrupted: {change.outage}")
    # The figures docs/crash-safety.md states are held to by scripts/bench-outage, not here.
    measured = {"uninterrupted": [ch.outage.unanswered for ch in (deployment.forward, deployment.back)],
                "killed": killed_outages}
    print("\n".join(outage_figures.judge(measured)[1]))
    if os.environ.get("MSW_OUTAGE_OUT"):
        Path(os.environ["MSW_OUTAGE_OUT"]).write_text(json.dumps(measured) + "\n", encoding="utf-8")
    assert not failures, "\n".join(failures)
