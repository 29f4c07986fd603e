"""Two booted containers on a private network of their own, for the multi-host tests.

Each container runs with ``--private-network`` (only ``lo``), so the harness
joins two of them with a veth pair made on the host: one end is moved into
each container's network namespace, renamed ``LINK_NAME`` there, given an
address and brought up.  Nothing of it is visible on the host afterwards, and
when a container stops its namespace goes and takes the pair with it.  Only the
moment between creating the pair and moving its ends leaves anything on the
host; ``PrivateLink.close()`` removes that, and a later run sweeps what a
killed one left (names carry the owner's PID).

Also here: what an admin does around such a pair (PostgreSQL listening on the
private address, copying files between hosts with their owners and modes) and
a steady stream of requests that records what happened to each one.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import threading
import time
from typing import Callable, Sequence

import harness
from harness import Container, HarnessError

#: The interface name inside each container.
LINK_NAME = "msw0"
_HOST_NAME = re.compile(r"^msw(?P<pid>[0-9]+)x[0-9]+[ab]$")
_pair_counter = itertools.count(1)


def _ip_host(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return harness._run(["ip", *args], check=check, timeout=30)


def _ip_in(c: Container, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip` run in a container's network namespace (the host's binary: the root needs none)."""
    return harness._run(["nsenter", "-t", str(c.pid), "-n", "--", "ip", *args], check=check,
                        timeout=30)


def _host_links() -> list[str]:
    out = _ip_host("-o", "link", "show", check=False).stdout
    return [m.group(1).split("@")[0] for m in re.finditer(r"^\d+:\s+(\S+):", out, re.M)]


def sweep_stale_links() -> None:
    """Delete host-side pairs that a killed run left between creating and moving them."""
    for name in _host_links():
        m = _HOST_NAME.match(name)
        if m and int(m["pid"]) != os.getpid() and not harness._pid_alive(int(m["pid"])):
            _ip_host("link", "del", name, check=False)


class PrivateLink:
    """A veth pair between two booted containers: ``a`` gets ``address_a``, ``b`` ``address_b``.

    Use as a context manager (or call close()); the pair is also gone as soon
    as either container stops.  ``cut(side)`` and ``restore(side)`` take the
    interface of one side down and up, as a pulled cable or a dead switch port
    would look from that host.
    """

    def __init__(self, a: Container, b: Container, address_a: str, address_b: str,
                 prefix: int = 24) -> None:
        self.ends = {"a": a, "b": b}
        self.addresses = {"a": address_a, "b": address_b}
        self.prefix = prefix
        n = next(_pair_counter)
        self._host_names = {side: f"msw{os.getpid()}x{n}{side}" for side in "ab"}
        self._connected = False

    def __enter__(self) -> "PrivateLink":
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sweep_stale_links()
        ha, hb = self._host_names["a"], self._host_names["b"]
        _ip_host("link", "add", ha, "type", "veth", "peer", "name", hb)
        for side in "ab":
            c = self.ends[side]
            _ip_host("link", "set", self._host_names[side], "netns", str(c.pid))
            _ip_in(c, "link", "set", self._host_names[side], "name", LINK_NAME)
            _ip_in(c, "addr", "add", f"{self.addresses[side]}/{self.prefix}", "dev", LINK_NAME)
            _ip_in(c, "link", "set", LINK_NAME, "up")
        self._connected = True
        self.wait_reachable()

    def wait_reachable(self, timeout: float = 30.0) -> None:
        """Until both interfaces are up with a carrier (the address stays through a cut)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.state(side) for side in "ab"]
            if all(s.split()[1:2] == ["UP"] for s in states):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"the private link is not up within {timeout} s: {states}\n"
                                   f"{self.describe()}")
            time.sleep(0.2)

    def state(self, side: str) -> str:
        """`ip -br link` of that side's interface: name, UP/DOWN/LOWERLAYERDOWN, flags."""
        return _ip_in(self.ends[side], "-br", "link", "show", LINK_NAME).stdout.strip()

    def describe(self) -> str:
        out = []
        for side in "ab":
            c = self.ends[side]
            if c.booted:
                out.append(f"{side}: " + _ip_in(c, "-br", "addr", "show", check=False).stdout.strip())
        return "\n".join(out)

    def cut(self, side: str = "b") -> None:
        """Take that side's interface down (its address stays, as after a cable pull)."""
        _ip_in(self.ends[side], "link", "set", LINK_NAME, "down")

    def restore(self, side: str = "b") -> None:
        _ip_in(self.ends[side], "link", "set", LINK_NAME, "up")
        self.wait_reachable()

    def close(self) -> None:
        """Remove whatever of the pair is still on the host (nothing once connected)."""
        for name in self._host_names.values():
            if name in _host_links():
                _ip_host("link", "del", name, check=False)


# --------------------------------------------------------------------------
# What an admin does around the private network


def postgres_version_dir(c: Container) -> str:
    """/etc/postgresql/<newest>/main."""
    ver = c.run("ls /etc/postgresql | sort -V | tail -n 1").stdout.strip()
    if not ver:
        raise HarnessError("no PostgreSQL cluster in /etc/postgresql")
    return f"/etc/postgresql/{ver}/main"


def postgres_listen_privately(c: Container, address: str, client: str) -> None:
    """PostgreSQL on loopback and `address`; the synapse role may log in from `client`.

    As an admin would: a conf.d file for listen_addresses, a host line in
    pg_hba.conf (password, scram), a restart (listen_addresses needs one).
    """
    conf = postgres_version_dir(c)
    c.write_file(f"{conf}/conf.d/msw-test-private-network.conf",
                 f"# The private network to the worker hosts (matrix-synapse-workers tests).\n"
                 f"listen_addresses = 'localhost,{address}'\n")
    line = (f"host    {harness.DB_NAME}    {harness.DB_USER}    {client}/32    scram-sha-256")
    c.run(["sh", "-c", 'grep -qxF "$1" "$2" || printf "%s\\n" "$1" >> "$2"', "sh", line,
           f"{conf}/pg_hba.conf"])
    c.run(["systemctl", "restart", "postgresql.service"], timeout=120)
    c.wait_until(["pg_isready", "-q", "-h", address], timeout=60)


def remote_psql(c: Container, host: str, sql: str, *, check: bool = True,
                connect_timeout: int = 5) -> subprocess.CompletedProcess:
    """psql from c to `host` over TCP as the synapse role (password login)."""
    argv = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
            f"host={host} dbname={harness.DB_NAME} user={harness.DB_USER} "
            f"connect_timeout={connect_timeout}", "-c", sql]
    return c.run(argv, check=check, env={"PGPASSWORD": harness.DB_PASSWORD},
                 timeout=connect_timeout + 30)


def copy_files(src: Container, dst: Container, paths: Sequence[str]) -> None:
    """Copy files or directories from src to the same paths in dst, keeping modes and owners.

    tar from one to the other, owners by name, as `tar c | ssh host tar xp`
    (or rsync -a) does between two real machines.
    """
    rel = [p.lstrip("/") for p in paths]
    archive = src.run(["tar", "-C", "/", "-cf", "-", "--", *rel], text=False).stdout
    dst.run(["tar", "-C", "/", "-xpf", "-", "--same-owner"], input=archive)


def file_stat(c: Container, path: str) -> str:
    """'MODE USER GROUP' of a path in c (mode in octal, as stat %a prints it)."""
    return c.run(["stat", "-c", "%a %U %G", path]).stdout.strip()


def tree_fingerprint(c: Container, *dirs: str) -> str:
    """Every file under dirs with its mode, owners and content hash: to prove nothing changed."""
    script = ('for d in "$@"; do [ -e "$d" ] && find "$d" -printf "%p %y %m %u %g %l\\n"; done '
              '| sort; for d in "$@"; do [ -e "$d" ] && find "$d" -type f -exec md5sum {} +; '
              'done | sort')
    return c.run(["sh", "-c", script, "sh", *dirs]).stdout


# --------------------------------------------------------------------------
# A steady stream of requests


@dataclasses.dataclass
class Sample:
    start: float
    end: float
    ok: bool
    detail: str
    marker: str


class Stream:
    """Starts one(marker) -> (ok, detail) every `interval` seconds, each in its own thread.

    An open loop: a request that hangs does not hold back the next one, as
    with many independent clients.  Each call gets a unique marker (to find it
    in a log later) and is recorded with its start and end on time.monotonic().
    """

    def __init__(self, one: Callable[[str], tuple[bool, str]], prefix: str = "s",
                 interval: float = 0.5) -> None:
        self.one = one
        self.prefix = prefix
        self.interval = interval
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._workers: list[threading.Thread] = []
        self._count = itertools.count(1)

    def _call(self, marker: str) -> None:
        start = time.monotonic()
        try:
            ok, detail = self.one(marker)
        except Exception as e:  # a transport error is a failed request too
            ok, detail = False, f"{type(e).__name__}: {e}"[:500]
        with self._lock:
            self.samples.append(Sample(start, time.monotonic(), ok, detail, marker))

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            worker = threading.Thread(target=self._call, args=(f"{self.prefix}{next(self._count)}x",),
                                      daemon=True)
            worker.start()
            self._workers.append(worker)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "Stream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop starting requests and wait for those in flight."""
        self._stop.set()
        self._thread.join(timeout=timeout)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))

    def finished(self) -> list[Sample]:
        with self._lock:
            return sorted(self.samples, key=lambda s: s.start)

    def since(self, t: float) -> list[Sample]:
        return [s for s in self.finished() if s.start >= t]

    def wait_for(self, n: int, after: float, timeout: float = 60.0) -> list[Sample]:
        """Until n requests started after `after` have finished; those n."""
        deadline = time.monotonic() + timeout
        while len(self.since(after)) < n:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"the request stream finished {len(self.since(after))} "
                                     f"requests in {timeout} s, wanted {n}")
            time.sleep(0.1)
        return self.since(after)[:n]


def grep_markers(c: Container, markers: Sequence[str], files: Sequence[str]) -> set[str]:
    """Which of these markers occur in any of these files of c."""
    if not markers:
        return set()
    pattern = "\n".join(markers)
    r = c.run(["sh", "-c", 'grep -ohF -f /dev/stdin -- "$@" || true', "sh", *files],
              input=pattern + "\n")
    found = set(r.stdout.split())
    return {m for m in markers if m in found}
