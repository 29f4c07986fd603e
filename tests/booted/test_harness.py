"""The harness itself, against the real thing: a booted bookworm container.

These do not need our package or the stand-in Synapse: they prove that what
the package tests stand on (boot, PostgreSQL, isolation, reboot, cleanup,
image-build mode, package installs, HTTP over sockets) works as promised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness
from harness import Container

HERE = Path(__file__).resolve().parent


def listening_tcp_ports(pid: int | str = "self") -> set[int]:
    """Ports in LISTEN state in the network namespace of pid (read from /proc)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def make_deb(tmp: Path, name: str, *, depends: str | None = None,
             postinst: str | None = None) -> Path:
    """A tiny binary package built with dpkg-deb on the host."""
    root = tmp / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
               f"Maintainer: harness test <harness-test@invalid>\n"
               f"Description: package made by the booted-test harness tests\n")
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN/control").write_text(control)
    if postinst:
        p = root / "DEBIAN/postinst"
        p.write_text(postinst)
        p.chmod(0o755)
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "marker").write_text(name + "\n")
    out = tmp / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


# A postinst that records how it found the system: image build or booted.
PROBE_POSTINST = """#!/bin/sh
set -e
mkdir -p /var/lib/msw-probe
{
  [ -x /usr/sbin/policy-rc.d ] && echo policy-rc.d || echo no-policy-rc.d
  [ -d /run/systemd/system ] && echo systemd || echo no-systemd
} > /var/lib/msw-probe/postinst
"""


def assert_gone(info: dict) -> None:
    """Nothing of a destroyed container is left: processes, mounts, directory."""
    deadline = time.monotonic() + 10
    for pid in (info["nspawn_pid"], info["init_pid"]):
        while harness._proc_start_time(pid) == info["starts"][str(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert harness._proc_start_time(pid) != info["starts"][str(pid)], f"pid {pid} still runs"
    assert harness.mounts_under(Path(info["dir"])) == []
    assert not Path(info["dir"]).exists()


def describe(c: Container) -> dict:
    assert c._nspawn is not None
    pids = [c._nspawn.pid, c.pid]
    return {"dir": str(c.dir), "nspawn_pid": pids[0], "init_pid": pids[1],
            "starts": {str(p): harness._proc_start_time(p) for p in pids}}


# --------------------------------------------------------------------------


def test_base_root_boots_to_running(container: Container) -> None:
    assert container.last_state == "running", container.last_failed_units
    assert container.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    for unit in ("postgresql@15-main.service", "redis-server.service", "nginx.service",
                 "dbus.service"):
        assert container.run(["systemctl", "is-active", unit], check=False).stdout.strip() == \
            "active", unit
    # The image is clean for boots: no policy-rc.d left from the build.
    assert not container.exists("/usr/sbin/policy-rc.d")
    assert "key: " + harness.root_cache_key() in container.read_file(str(harness.ROOT_STAMP))


def test_postgresql_is_set_up_for_synapse(container: Container) -> None:
    row = harness.psql(container, "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                                  "pg_get_userbyid(datdba) FROM pg_database "
                                  "WHERE datname = current_database()").stdout.strip()
    assert row == "UTF8|C|C|synapse"
    assert harness.psql(container, "SELECT current_user").stdout.strip() == "synapse"
    wrong = harness.psql(container, "SELECT 1", password="not-the-password", check=False)
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr
    # Debian's peer authentication still applies to everything else.
    assert harness.psql(container, "SELECT 1", user="postgres", password=None,
                        database="postgres").stdout.strip() == "1"
    hba = container.run("grep -v '^#' /etc/postgresql/15/main/pg_hba.conf | grep .").stdout
    assert hba.splitlines()[0].split() == ["local", "synapse", "synapse", "scram-sha-256"]


def test_private_network_binds_nothing_on_the_host(base_root: Path) -> None:
    before = listening_tcp_ports()
    with Container(base_root, name="private-network") as c:
        inside = listening_tcp_ports(c.pid)
        after = listening_tcp_ports()
        assert {80, 5432, 6379} <= inside, inside
        assert not (after - before) & inside
        assert os.readlink(f"/proc/{c.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        links = c.run(["ip", "-o", "link"]).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_state_survives_poweroff_and_boot(container: Container) -> None:
    container.write_file("/var/lib/msw-harness/marker", "before reboot\n")
    container.run(["systemctl", "disable", "--now", "nginx.service"])
    first_pid = container.pid
    assert container.poweroff() == 0
    assert not container.booted
    assert container.boot() == "running"
    assert container.pid != first_pid
    assert container.boots == 2
    assert container.read_file("/var/lib/msw-harness/marker") == "before reboot\n"
    assert container.run(["systemctl", "is-enabled", "nginx.service"],
                         check=False).stdout.strip() == "disabled"
    assert 80 not in listening_tcp_ports(container.pid)
    # /run is the container's own tmpfs: nothing of the first boot there.
    container.write_file("/run/msw-volatile", "x")
    container.reboot()
    assert not container.exists("/run/msw-volatile")


def test_cleanup_leaves_no_process_and_no_mount(base_root: Path) -> None:
    with Container(base_root, name="cleanup") as c:
        info = describe(c)
        assert harness.mounts_under(c.dir) == [str(c.path)]
    assert_gone(info)
    # Also when the test body fails.
    with pytest.raises(RuntimeError, match="boom"):
        with Container(base_root, name="cleanup-exc") as c:
            info = describe(c)
            raise RuntimeError("boom")
    assert_gone(info)


CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {here!r})
    import harness
    c = harness.Container(harness.Path({root!r}), name="signalled")
    c.__enter__()
    pids = [c._nspawn.pid, c.pid]
    print(json.dumps({{"dir": str(c.dir), "nspawn_pid": pids[0], "init_pid": pids[1],
                       "starts": {{str(p): harness._proc_start_time(p) for p in pids}}}}),
          flush=True)
    time.sleep(600)
""")


def _start_child(base_root: Path) -> tuple[subprocess.Popen, dict]:
    code = CHILD.format(here=str(HERE), root=str(base_root))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        pytest.fail(f"child did not boot a container: {child.stderr.read()}")
    return child, json.loads(line)


def test_sigterm_powers_off_and_cleans_up(base_root: Path) -> None:
    child, info = _start_child(base_root)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "KeyboardInterrupt" in err
    assert_gone(info)


def test_stale_container_of_a_killed_process_is_swept(base_root: Path) -> None:
    child, info = _start_child(base_root)
    child.kill()  # no chance to clean up: nspawn and the overlay stay behind
    child.communicate(timeout=30)
    assert Path(info["dir"]).exists()
    harness._sweep_stale_containers()
    assert_gone(info)


def test_chroot_mode_then_first_boot(unbooted: Container, tmp_path: Path) -> None:
    c = unbooted
    assert not c.booted
    r = c.chroot_run("/usr/sbin/policy-rc.d nginx start; echo $?")
    assert r.stdout.strip() == "101"
    assert c.chroot_run(["test", "-d", "/run/systemd/system"], check=False).returncode != 0
    # No network and no view of host processes inside.
    links = c.chroot_run(["ip", "-o", "link"]).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert set(c.chroot_run("ps -e -o comm=").stdout.split()) <= {"sh", "ps"}
    c.install_debs([make_deb(tmp_path, "msw-probe", depends="python3", postinst=PROBE_POSTINST)])
    assert c.read_file("/var/lib/msw-probe/postinst").split() == ["policy-rc.d", "no-systemd"]
    # The chroot's mounts lived in its own namespace: only the overlay is left.
    assert harness.mounts_under(c.dir) == [str(c.path)]
    assert not (c.path / "usr/sbin/policy-rc.d").exists()
    assert c.boot() == "running"
    assert c.run(["dpkg-query", "-W", "-f=${Status}", "msw-probe"]).stdout == \
        "install ok installed"
    with pytest.raises(harness.HarnessError):
        c.chroot_run(["true"])


def test_install_debs_booted_and_missing_dependencies(container: Container,
                                                       tmp_path: Path) -> None:
    container.install_debs([make_deb(tmp_path, "msw-probe", postinst=PROBE_POSTINST)])
    assert container.read_file("/var/lib/msw-probe/postinst").split() == \
        ["no-policy-rc.d", "systemd"]
    broken = make_deb(tmp_path, "msw-broken", depends="msw-no-such-package (>= 1)")
    with pytest.raises(harness.MissingDependencies) as e:
        container.install_debs([broken])
    assert any("msw-no-such-package" in m for m in e.value.missing)


def test_commands_get_a_clean_environment_and_time_out(container: Container,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSW_LEAK_PROBE", "leaked")
    env = dict(line.split("=", 1) for line in container.run("env").stdout.splitlines())
    assert "MSW_LEAK_PROBE" not in env
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == harness.SANE_PATH
    assert container.run("echo $X", env={"X": "given"}).stdout.strip() == "given"
    assert container.run(["id", "-un"], user="postgres").stdout.strip() == "postgres"
    assert container.run("cat", input="stdin works").stdout == "stdin works"
    with pytest.raises(harness.CommandFailed) as failed:
        container.run("echo to-stderr >&2; exit 3")
    assert failed.value.returncode == 3 and "to-stderr" in str(failed.value)
    started = time.monotonic()
    with pytest.raises(harness.CommandTimeout):
        container.run(["sleep", "117"], timeout=1)
    assert time.monotonic() - started < 15
    container.wait_until("! pgrep -x sleep", timeout=10)


def test_copy_in_and_files(container: Container, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("A")
    (tree / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "run.sh").chmod(0o755)
    container.copy_in(tree, "/opt/msw-tree")
    assert container.run(["/opt/msw-tree/run.sh"]).stdout == "ran\n"
    assert container.read_file("/opt/msw-tree/sub/a.txt") == "A"
    assert container.run(["stat", "-c", "%U:%G", "/opt/msw-tree/sub/a.txt"]).stdout.strip() == \
        "root:root"
    single = tmp_path / "x.conf"
    single.write_text("secret")
    # Into the container's /run (its own tmpfs, invisible from the host's side).
    container.copy_in(single, "/run/msw/y.conf", mode=0o600)
    assert container.run(["stat", "-c", "%a", "/run/msw/y.conf"]).stdout.strip() == "600"
    assert container.read_file("/run/msw/y.conf") == "secret"


NGINX_ECHO = """
server {
    listen unix:/run/msw-echo.sock;
    location / {
        default_type application/json;
        add_header X-Seen-Forwarded-For $http_x_forwarded_for always;
        return 201 '{"method": "$request_method", "uri": "$request_uri", "ct": "$content_type"}';
    }
}
"""


def test_http_over_unix_socket_and_tcp(container: Container) -> None:
    container.write_file("/etc/nginx/conf.d/msw-echo.conf", NGINX_ECHO)
    container.run(["systemctl", "reload", "nginx.service"])
    container.wait_until(["test", "-S", "/run/msw-echo.sock"], timeout=20)
    r = harness.http_unix(container, "/run/msw-echo.sock", "POST", "/a/b?x=[1]", {"k": "v"})
    assert r.status == 201
    assert r.headers["x-seen-forwarded-for"] == "127.0.0.1"
    assert r.json() == {"method": "POST", "uri": "/a/b?x=[1]", "ct": "application/json"}
    r = harness.http_unix(container, "/run/msw-echo.sock", "GET", "/", client_ip="10.1.2.3")
    assert r.headers["x-seen-forwarded-for"] == "10.1.2.3"
    r = harness.http(container, "http://127.0.0.1", "GET", "/")
    assert r.status == 200 and r.headers["server"].startswith("nginx")
    with pytest.raises(harness.HttpError):
        harness.http_unix(container, "/run/no-such.sock", "GET", "/")


def test_registration_mac_shape() -> None:
    mac = harness.registration_mac("secret", "nonce", "alice", "pw", admin=False)
    assert len(mac) == 40 and int(mac, 16) >= 0
    assert mac != harness.registration_mac("secret", "nonce", "alice", "pw", admin=True)


def test_apt_sources_parsing() -> None:
    deb822 = textwrap.dedent("""\
        Types: deb deb-src
        URIs: http://mirror.invalid/debian
        Suites: bookworm bookworm-updates
        Components: main contrib
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        # a comment
        Types: deb
        URIs: http://mirror.invalid/debian-security
        Suites: bookworm-security
        Components: main

        Types: deb
        Enabled: no
        URIs: http://off.invalid/debian
        Suites: bookworm
        """)
    got = harness.parse_deb822_sources(deb822)
    assert [(s.uri, s.suite) for s in got] == [
        ("http://mirror.invalid/debian", "bookworm"),
        ("http://mirror.invalid/debian", "bookworm-updates"),
        ("http://mirror.invalid/debian-security", "bookworm-security"),
    ]
    one = harness.parse_one_line_sources(
        "deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\n"
        "# deb http://x.invalid/debian bookworm main\ndeb-src http://m.invalid/debian bookworm main\n")
    assert one == [harness.AptSource("http://m.invalid/debian", "bookworm", ("main",))]


def test_suite_mirror_is_the_hosts_archive(tmp_path: Path) -> None:
    """Another suite comes from the mirror the host uses for its own release, never security."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(textwrap.dedent(f"""\
        Types: deb
        URIs: http://security.invalid/debian-security
        Suites: {harness.SUITE}-security

        Types: deb
        URIs: http://mirror.invalid/debian
        Suites: {harness.SUITE} {harness.SUITE}-updates
        """))
    assert harness.suite_mirror("sid", tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list").write_text("deb http://sid.invalid/debian sid main\n")
    assert harness.suite_mirror("sid", tmp_path) == "http://sid.invalid/debian"


def test_another_release_root_takes_the_hosts_archive_and_security_mirrors(tmp_path: Path) -> None:
    """A trixie root on a bookworm host: the host's archive and security URIs, trixie's suites."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(textwrap.dedent(f"""\
        Types: deb
        URIs: http://mirror.invalid/debian
        Suites: {harness.SUITE} {harness.SUITE}-updates
        Components: main

        Types: deb
        URIs: http://security.invalid/debian-security
        Suites: {harness.SUITE}-security
        Components: main
        """))
    assert harness._root_sources_list("trixie", tmp_path) == (
        "deb http://mirror.invalid/debian trixie main\n"
        "deb http://mirror.invalid/debian trixie-updates main\n"
        "deb http://security.invalid/debian-security trixie-security main\n")
    assert harness._root_sources_list(harness.SUITE, tmp_path).count(harness.SUITE) == 3
    assert harness.root_cache_key("trixie").startswith("trixie-")
    assert harness.root_cache_key("trixie")[7:] != harness.root_cache_key()[len(harness.SUITE) + 1:]


def _derive_setup(c: Container) -> None:
    c.write_file("/var/lib/msw-derived/made-by-setup", "yes\n")
    c.run(["rm", "/etc/issue.net"])  # a deletion must survive as a whiteout
    c.run(["systemctl", "disable", "--now", "nginx.service"])
    COUNTER.append(1)


COUNTER: list[int] = []


def test_derived_root_is_built_once_and_stacks_on_the_base(base_root: Path) -> None:
    nonce = f"{os.getpid()}-{time.time()}"  # a fresh key: this test builds for real
    derived = harness.ensure_derived_root("harness-test", base_root, _derive_setup, [nonce])
    try:
        assert len(COUNTER) == 1
        assert harness.ensure_derived_root("harness-test", base_root, _derive_setup,
                                           [nonce]) == derived
        assert len(COUNTER) == 1, "the second call must come from the cache"
        assert harness.root_layers(derived) == [derived / "layer", base_root]
        assert not (derived / "layer/usr/bin").exists(), "the layer holds only the changes"
        with Container(derived, name="derived") as c:
            assert c.last_state == "running", c.last_failed_units
            assert c.read_file("/var/lib/msw-derived/made-by-setup") == "yes\n"
            assert not c.exists("/etc/issue.net")
            assert c.run(["systemctl", "is-active", "nginx.service"],
                         check=False).stdout.strip() == "inactive"
            assert harness.psql(c, "SELECT 1").stdout.strip() == "1"
            c.write_file("/var/lib/msw-derived/scenario", "only here\n")
        # What a scenario changes stays out of the cached layers.
        assert not (derived / "layer/var/lib/msw-derived/scenario").exists()
        assert (base_root / "etc/issue.net").exists()
    finally:
        harness._safe_rmtree(derived)
        for suffix in (".last-used", ".lock"):
            Path(f"{derived}{suffix}").unlink(missing_ok=True)
