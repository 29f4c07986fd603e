"""The units, the drop-in and the generator under a real, booted systemd.

What the unit design promises, tried in a booted bookworm container (the
harness of tests/booted) with the files from the built .deb:

- starting matrix-synapse.target starts main first, then every worker;
- restarting main (as matrix-synapse-py3's postinst does on upgrade) restarts
  the workers too; stopping main stops them;
- main dying, or failing to start, and being restarted by systemd does not
  leave the workers down (with Requires= a failed first start of main left
  them down for good: "Dependency failed");
- restart/reload/stop of the target reach main and every worker;
- the generator follows /etc/matrix-synapse/workers on daemon-reload and at boot.

Synapse itself is replaced by a small fake at /opt/venvs/matrix-synapse/bin/python
that does what systemd sees of Synapse (sd_notify READY from the main PID,
SIGHUP), so this runs in seconds; the booted tests run the real Synapse.
MSW_REQUIRE_BOOTED=1 (or CI) turns "cannot boot a container here" into a failure.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "booted"))
import harness  # noqa: E402  (tests/booted/harness.py)

UNIT_DIR = "/usr/lib/systemd/system"
GENERATOR = "/usr/lib/systemd/system-generators/matrix-synapse-workers-generator"
EVENTS = "/var/tmp/fake-synapse.events"
# When this file exists, the fake main removes it and fails: its next start works.
FAIL_ONCE = "/var/lib/matrix-synapse/fail-once"
WORKERS = ("sync-1", "client-1")
ALL_UNITS = ("matrix-synapse.service",) + tuple(f"matrix-synapse-worker@{w}.service" for w in WORKERS)

# Plays Synapse for systemd: notifies READY from the main PID, logs SIGHUP.
FAKE_SYNAPSE = """\
#!/usr/bin/python3
import os, signal, socket, sys, time
args = sys.argv[1:]
if "--generate-keys" in args:
    sys.exit(0)
name = "main"
for a in args:
    if a.startswith("--config-path=/etc/matrix-synapse/workers/"):
        name = a.rsplit("/", 1)[1][:-len(".yaml")]
def event(what):
    with open("%s", "a") as f:
        f.write("%%s %%s %%d %%.6f\\n" %% (what, name, os.getpid(), time.monotonic()))
signal.signal(signal.SIGHUP, lambda *_: event("hup"))
if name == "main" and os.path.exists("%s"):
    os.unlink("%s")  # like a main that finds PostgreSQL not up yet
    event("fail")
    sys.exit(1)
event("start")
time.sleep(0.5)  # a real Synapse takes a while before it is ready
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
event("ready")
while True:
    signal.pause()
""" % (EVENTS, FAIL_ONCE, FAIL_ONCE)

# Like matrix-synapse-py3's unit in what systemd sees (tests/standin has the same).
MAIN_UNIT = """\
[Unit]
Description=Synapse Matrix homeserver (stand-in for the tests of matrix-synapse-workers)

[Service]
Type=notify
NotifyAccess=main
User=matrix-synapse
WorkingDirectory=/var/lib/matrix-synapse
ExecStart=/opt/venvs/matrix-synapse/bin/python -m synapse.app.homeserver \
  --config-path=/etc/matrix-synapse/homeserver.yaml --config-path=/etc/matrix-synapse/conf.d/
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=3

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def container(unpacked: Path):
    try:
        root = harness.ensure_base_root()
    except harness.HarnessUnavailable as e:
        if os.environ.get("MSW_REQUIRE_BOOTED") or os.environ.get("CI"):
            pytest.fail(f"cannot boot a container: {e}")
        pytest.skip(f"cannot boot a container: {e}")
    with harness.Container(root, name="pkg-units") as c:
        for name in ("matrix-synapse-worker@.service", "matrix-synapse.target", "matrix-synapse.service.d"):
            c.copy_in(unpacked / UNIT_DIR.lstrip("/") / name, f"{UNIT_DIR}/{name}")
        c.copy_in(unpacked / GENERATOR.lstrip("/"), GENERATOR)
        c.write_file("/lib/systemd/system/matrix-synapse.service", MAIN_UNIT)
        c.write_file("/opt/venvs/matrix-synapse/bin/python", FAKE_SYNAPSE, mode=0o755)
        c.run("getent passwd matrix-synapse >/dev/null || adduser --system --group --quiet "
              "--home /var/lib/matrix-synapse matrix-synapse")
        c.run(f"mkdir -p /etc/matrix-synapse/conf.d /etc/matrix-synapse/workers && : > {EVENTS} && chmod 666 {EVENTS}")
        for w in WORKERS:
            c.write_file(f"/etc/matrix-synapse/workers/{w}.yaml", "worker_app: synapse.app.generic_worker\n")
        # The fake logs what systemd does to one shared file; the sandbox (proven with the
        # real Synapse in tests/booted/test_booted_sandbox.py) would keep it private.
        c.write_file("/usr/local/lib/systemd/system/matrix-synapse-worker@.service.d/fake-events.conf",
                     "[Service]\nPrivateTmp=no\nReadWritePaths=/var/tmp\n")
        c.run("systemctl daemon-reload")
        yield c


def events(c: harness.Container) -> list[tuple[str, str, int, float]]:
    rows = []
    for line in c.read_file(EVENTS).splitlines():
        what, name, pid, when = line.split()
        rows.append((what, name, int(pid), float(when)))
    return rows


def main_pids(c: harness.Container) -> dict[str, int]:
    """Unit -> MainPID; systemctl show prints one blank-line separated block per unit."""
    out = c.run(["systemctl", "show", "-p", "Id,MainPID", *ALL_UNITS]).stdout
    pids = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.partition("=")[::2] for line in block.splitlines())
        pids[fields["Id"]] = int(fields["MainPID"])
    return pids


def wait_all(c: harness.Container, state: str, units=ALL_UNITS, timeout: float = 30) -> None:
    check = " && ".join(f"[ \"$(systemctl is-active {u})\" = {state} ]" for u in units)
    c.wait_until(check, timeout=timeout)


def test_generator_wants_main_and_workers(container: harness.Container) -> None:
    c = container
    wants = c.run("ls /run/systemd/generator/matrix-synapse.target.wants").stdout.split()
    assert sorted(wants) == sorted(ALL_UNITS)
    deps = c.run("systemctl list-dependencies --plain --no-pager matrix-synapse.target").stdout
    for unit in ALL_UNITS:
        assert unit in deps


def test_target_starts_main_before_workers(container: harness.Container) -> None:
    c = container
    c.run("systemctl start matrix-synapse.target")
    wait_all(c, "active")
    rows = events(c)
    main_ready = max(t for what, name, _, t in rows if what == "ready" and name == "main")
    for w in WORKERS:
        started = [t for what, name, _, t in rows if what == "start" and name == w]
        assert started and min(started) > main_ready, f"{w} started before main was ready: {rows}"


def test_restarting_main_restarts_workers(container: harness.Container) -> None:
    """What an upgrade of matrix-synapse-py3 does: only main is restarted by its postinst."""
    c = container
    wait_all(c, "active")
    before = main_pids(c)
    c.run("systemctl restart matrix-synapse.service")
    wait_all(c, "active")
    after = main_pids(c)
    for unit in ALL_UNITS:
        assert after[unit] != before[unit], f"{unit} kept PID {before[unit]}"


def restarts(c: harness.Container) -> dict[str, str]:
    """Each unit's count of automatic restarts (after a failure), as systemd keeps it."""
    return {u: c.run(["systemctl", "show", "-P", "NRestarts", u]).stdout.strip() for u in ALL_UNITS}


def test_main_crash_does_not_leave_workers_down(container: harness.Container) -> None:
    c = container
    wait_all(c, "active")
    before = main_pids(c)
    restarted_before = restarts(c)
    crashed_at = max(t for *_, t in events(c))
    c.run(f"kill -9 {before['matrix-synapse.service']}")
    # Main comes back after RestartSec=3.
    c.wait_until(f"[ \"$(systemctl show -p MainPID --value matrix-synapse.service)\" != "
                 f"{before['matrix-synapse.service']} ] && systemctl is-active -q matrix-synapse.service",
                 timeout=30)
    # Then every worker's running process has said it is ready (not a fixed wait).
    deadline = time.monotonic() + 30
    while True:
        pids = main_pids(c)
        ready = {(name, pid) for what, name, pid, _ in events(c) if what == "ready"}
        if all((w, pids[f"matrix-synapse-worker@{w}.service"]) in ready for w in WORKERS):
            break
        assert time.monotonic() < deadline, events(c)
        time.sleep(0.2)
    wait_all(c, "active")
    # No worker failed on the way: none was restarted for a failure of its own, and each
    # started at most once since the crash (with main, PartOf=), after main was ready again.
    after = restarts(c)
    rows = [r for r in events(c) if r[3] > crashed_at]
    main_ready = min(t for what, name, _, t in rows if what == "ready" and name == "main")
    for w in WORKERS:
        unit = f"matrix-synapse-worker@{w}.service"
        assert after[unit] == restarted_before[unit], (unit, restarted_before[unit], after[unit])
        starts = [t for what, name, _, t in rows if what == "start" and name == w]
        assert len(starts) <= 1 and all(t > main_ready for t in starts), rows


def test_main_failing_to_start_does_not_strand_workers(container: harness.Container) -> None:
    c = container
    c.run("systemctl stop matrix-synapse.target matrix-synapse.service")
    wait_all(c, "inactive")
    c.run(f"runuser -u matrix-synapse -- touch {FAIL_ONCE}")
    c.run("systemctl start matrix-synapse.target", check=False)
    # Main fails once, systemd restarts it after RestartSec=3, then all run.
    wait_all(c, "active", timeout=30)
    rows = events(c)
    fail = max(t for what, name, _, t in rows if what == "fail")
    ready = min(t for what, name, _, t in rows if what == "ready" and name == "main" and t > fail)
    # The workers started while main was down (Wants=), then were restarted
    # with main's automatic restart (PartOf=), after main was ready (After=).
    for w in WORKERS:
        assert any(what == "start" and name == w and t > ready for what, name, _, t in rows), \
            [r for r in rows if r[3] >= fail]


def test_worker_crash_restarts_only_that_worker(container: harness.Container) -> None:
    c = container
    wait_all(c, "active")
    before = main_pids(c)
    victim = f"matrix-synapse-worker@{WORKERS[0]}.service"
    c.run(f"kill -9 {before[victim]}")
    c.wait_until(f"[ \"$(systemctl show -p MainPID --value {victim})\" != {before[victim]} ] && "
                 f"systemctl is-active -q {victim}", timeout=30)
    after = main_pids(c)
    for unit in ALL_UNITS:
        if unit != victim:
            assert after[unit] == before[unit], f"{unit} was restarted by a worker's crash"


def test_target_reload_reaches_everyone(container: harness.Container) -> None:
    c = container
    wait_all(c, "active")
    pids = main_pids(c)
    c.run("systemctl reload matrix-synapse.target")
    names = {"main"} | set(WORKERS)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        hups = {name for what, name, pid, _ in events(c) if what == "hup" and pid in pids.values()}
        if hups == names:
            break
        time.sleep(0.3)
    assert hups == names
    assert main_pids(c) == pids, "a reload must not restart anything"


def test_target_restart_and_stop_reach_main(container: harness.Container) -> None:
    c = container
    wait_all(c, "active")
    before = main_pids(c)
    c.run("systemctl restart matrix-synapse.target")
    wait_all(c, "active")
    after = main_pids(c)
    assert all(after[u] != before[u] for u in ALL_UNITS), (before, after)
    c.run("systemctl stop matrix-synapse.target")
    wait_all(c, "inactive")


def test_stopping_main_stops_workers(container: harness.Container) -> None:
    c = container
    c.run("systemctl start matrix-synapse.target")
    wait_all(c, "active")
    c.run("systemctl stop matrix-synapse.service")
    wait_all(c, "inactive")


def test_generator_follows_worker_files(container: harness.Container) -> None:
    c = container
    c.run(f"rm /etc/matrix-synapse/workers/{WORKERS[1]}.yaml && systemctl daemon-reload")
    wants = c.run("ls /run/systemd/generator/matrix-synapse.target.wants").stdout.split()
    assert f"matrix-synapse-worker@{WORKERS[1]}.service" not in wants
    assert f"matrix-synapse-worker@{WORKERS[0]}.service" in wants
    c.run("rm /etc/matrix-synapse/workers/*.yaml && systemctl daemon-reload")
    assert not c.exists("/run/systemd/generator/matrix-synapse.target.wants")
    for w in WORKERS:
        c.write_file(f"/etc/matrix-synapse/workers/{w}.yaml", "worker_app: synapse.app.generic_worker\n")
    c.run("systemctl daemon-reload")


def test_everything_comes_up_at_boot(container: harness.Container) -> None:
    """Enabled target + worker files: after a reboot main and every worker run, nothing in /etc/systemd."""
    c = container
    c.run("systemctl enable matrix-synapse.service matrix-synapse.target")
    c.reboot()
    wait_all(c, "active", timeout=60)
    links = c.run("find /etc/systemd -name 'matrix-synapse-worker@*'").stdout
    assert links == ""
