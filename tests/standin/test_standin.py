"""Tests of the matrix-synapse-py3 test stand-in (tests/standin/build-standin).

Run as root with Debian's Python:  /usr/bin/python3 -m pytest tests/standin

The package checks read the two .debs with python-debian. The install checks
run apt-get and dpkg in a debootstrapped bookworm chroot (no systemd), run the
installed Synapse there, upgrade, remove and purge it. The bootstrapped root is
cached under
$MSW_TEST_CACHE/standin/ (default /var/cache/matrix-synapse-workers-tests) and
every test gets its own overlay on top of it, so tests never see each other's
changes. Downloaded .debs are cached beside it.

Without root or a needed tool the chroot tests are skipped; with CI set in the
environment a skip is a failure instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from debian import deb822, debfile

# The chroot toolkit the chroot tests use too.  CHROOT_ENV: what maintainer scripts and
# apt in the chroot see (nothing of the host's environment leaks in); POLICY_RC_D refuses
# every start and notes what was asked, so the tests see what the scripts wanted to do.
from support import require
from support.chroot import (CHROOT_ENV, POLICY_RC_D, Chroot, chroot_run, debian_mirror,
                            debootstrap_minbase, locked, mounted, overlay, remove_tree, run,
                            unmount_below)

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build-standin"
OLD, NEW = "1.163.1", "1.163.2"
PACKAGE = "matrix-synapse-py3"
VENV = "/opt/venvs/matrix-synapse"
UNIT_PATH = "/lib/systemd/system/matrix-synapse.service"
CONFFILES = {
    "/etc/matrix-synapse/homeserver.yaml",
    "/etc/matrix-synapse/log.yaml",
}
SYNAPSE_USER = "matrix-synapse"
CACHE = Path(os.environ.get("MSW_TEST_CACHE", "/var/cache/matrix-synapse-workers-tests")) / "standin"
SUITE = "bookworm"
# Refresh the chroot's package lists when they are older than this.
APT_LISTS_MAX_AGE = 12 * 3600


def need(condition: bool, reason: str) -> None:
    require.need(condition, reason, "MSW_REQUIRE_STANDIN")


# --- the .debs ------------------------------------------------------------


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need(os.geteuid() == 0, "root (build-standin installs build dependencies and caches in /var/cache)")
    out = tmp_path_factory.mktemp("debs")
    built = {}
    for version in (OLD, NEW):
        path = Path(run(BUILD, version, out, stderr=None).stdout.strip())
        assert path.name == f"{PACKAGE}_{version}+standin_{host_arch()}.deb"
        built[version] = path
    return built


def test_build_standin_rejects_a_bad_version(tmp_path: Path) -> None:
    done = run(BUILD, "latest", tmp_path, check=False)
    assert done.returncode != 0
    assert "not a Synapse release version" in done.stdout
    assert list(tmp_path.iterdir()) == []


def host_arch() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


def relation_names(field: str) -> set[str]:
    return {alt["name"] for rel in deb822.PkgRelation.parse_relations(field) for alt in rel}


@pytest.mark.parametrize("version", [OLD, NEW])
def test_control_says_what_it_is(debs: dict[str, Path], version: str) -> None:
    deb = debfile.DebFile(str(debs[version]))
    control = deb.debcontrol()
    assert control["Package"] == PACKAGE
    assert control["Version"] == f"{version}+standin"
    assert control["Architecture"] == host_arch()
    # Unversioned, like the real package.
    assert control["Provides"] == "matrix-synapse"
    description = control["Description"]
    assert description.startswith("TEST STAND-IN for Matrix.org's matrix-synapse-py3")
    assert "not for production" in description.splitlines()[0]
    assert "not the Synapse package published by Matrix.org" in description
    assert f"Synapse {version} from PyPI" in description
    depends = relation_names(control["Depends"])
    # The venv's interpreter, psycopg2's libpq, and adduser for the postinst.
    assert {"python3.11", "libpq5", "adduser", "libc6", "debconf"} <= depends


@pytest.mark.parametrize("version", [OLD, NEW])
def test_control_files(debs: dict[str, Path], version: str) -> None:
    deb = debfile.DebFile(str(debs[version]))
    conffiles = deb.control.get_content("conffiles", encoding="utf-8").split()
    assert set(conffiles) == CONFFILES
    tar = deb.control.tgz()
    for script in ("config", "postinst", "prerm", "postrm"):
        member = tar.getmember(f"./{script}")
        assert member.mode & 0o111 == 0o111, script
        text = deb.control.get_content(script, encoding="utf-8")
        assert text.startswith("#!/bin/sh\n"), script
    # The real package's two questions, with its types and defaults.
    templates = list(deb822.Deb822.iter_paragraphs(deb.control.get_content("templates", encoding="utf-8")))
    assert [(t["Template"], t["Type"], t.get("Default")) for t in templates] == [
        ("matrix-synapse/server-name", "string", None),
        ("matrix-synapse/report-stats", "boolean", "false"),
    ]
    config = deb.control.get_content("config", encoding="utf-8")
    assert "db_input high matrix-synapse/server-name" in config
    assert "db_input high matrix-synapse/report-stats" in config
    postinst = deb.control.get_content("postinst", encoding="utf-8")
    assert "confmodule" in postinst
    # No signing key in the postinst: the unit's ExecStartPre makes it.
    assert "generate-keys" not in postinst and "signing" not in postinst.replace("signing key:", "")


class DebData:
    """The file list of a .deb's data, and the text of its small files under
    /etc, /lib, /usr and the venv's bin/, read in one pass with python-debian."""

    def __init__(self, path: Path):
        self.members: dict[str, tarfile.TarInfo] = {}
        self.texts: dict[str, str] = {}
        tar = debfile.DebFile(str(path)).data.tgz()
        for member in tar:
            name = member.name.removeprefix(".").rstrip("/")
            self.members[name] = member
            if member.isfile() and (
                name.startswith(("/etc/", "/lib/", "/usr/", f"{VENV}/bin/")) or name == f"{VENV}/pyvenv.cfg"
            ):
                self.texts[name] = tar.extractfile(member).read().decode()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def data(debs: dict[str, Path]) -> dict[str, DebData]:
    return {version: DebData(path) for version, path in debs.items()}


@pytest.mark.parametrize("version", [OLD, NEW])
def test_data_layout(data: dict[str, DebData], version: str) -> None:
    members, texts = data[version].members, data[version].texts
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    for path in CONFFILES | {
        UNIT_PATH,
        f"{VENV}/pyvenv.cfg",
        f"{VENV}/bin/python3.11",
        "/var/lib/matrix-synapse",
        "/var/log/matrix-synapse",
    }:
        assert path in members, path
    assert members[f"{VENV}/bin/python3.11"].linkname == os.path.realpath("/usr/bin/python3")
    assert members["/usr/bin/synctl"].linkname == f"../..{VENV}/bin/synctl"
    # Only the venv under /opt, nothing under /run.
    assert all(
        not p.startswith("/opt/") or p == "/opt/venvs" or p == VENV or p.startswith(f"{VENV}/")
        for p in members
    )
    assert not any(p.startswith(("/run/", "/var/run/")) for p in members)

    # Relocated: the scripts and pyvenv.cfg name the installed venv and
    # nothing of the build host.
    assert f"command = {os.path.realpath('/usr/bin/python3')} -m venv {VENV}\n" in texts[f"{VENV}/pyvenv.cfg"]
    assert texts[f"{VENV}/bin/synctl"].startswith(f"#!{VENV}/bin/python3.11\n")
    assert re.search(rf"^VIRTUAL_ENV=\"?{VENV}\"?$", texts[f"{VENV}/bin/activate"], re.M)
    for name, text in texts.items():
        if name.startswith(f"{VENV}/"):
            assert "/var/cache/" not in text and ".staging" not in text, name


TRIXIE_PYTHON = "/usr/bin/python3.13"


@pytest.fixture(scope="session")
def trixie_deb(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in built for trixie (in a trixie root, with its Python 3.13)."""
    out = tmp_path_factory.mktemp("trixie")
    path = Path(run(BUILD, NEW, out, "trixie", stderr=None, timeout=1800).stdout.strip())
    assert path.name == f"{PACKAGE}_{NEW}+standin_{host_arch()}.deb"
    return path


def test_trixie_package_is_the_same_package_on_trixies_python(
        trixie_deb: Path, debs: dict[str, Path], data: dict[str, DebData]) -> None:
    """What an admin meets (files, config, unit, scripts) is the bookworm package's; the venv
    is trixie's Python 3.13 and the dependencies are trixie's libraries."""
    deb = debfile.DebFile(str(trixie_deb))
    control = deb.debcontrol()
    depends = relation_names(control["Depends"])
    assert {"python3.13", "libpq5", "adduser", "libc6", "debconf"} <= depends
    assert "python3.11" not in depends
    bookworm_deb = debfile.DebFile(str(debs[NEW]))
    for script in ("config", "postinst", "prerm", "postrm", "templates", "conffiles"):
        assert deb.control.get_content(script) == bookworm_deb.control.get_content(script), script
    trixie, bookworm = DebData(trixie_deb), data[NEW]
    members, texts = trixie.members, trixie.texts
    assert members[f"{VENV}/bin/python3.13"].linkname == TRIXIE_PYTHON
    assert f"command = {TRIXIE_PYTHON} -m venv {VENV}\n" in texts[f"{VENV}/pyvenv.cfg"]
    assert texts[f"{VENV}/bin/synctl"].startswith(f"#!{VENV}/bin/python3.13\n")
    for path in [*CONFFILES, UNIT_PATH]:
        assert texts[path] == bookworm.texts[path], path
    outside_venv = {p for p in members if not p.startswith(f"{VENV}/")}
    assert outside_venv == {p for p in bookworm.members if not p.startswith(f"{VENV}/")}
    for name, text in texts.items():
        if name.startswith(f"{VENV}/"):
            assert "/var/cache/" not in text and ".staging" not in text and "/cache/" not in text, name


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_unit_like_the_real_one(data: dict[str, DebData]) -> None:
    unit = unit_settings(data[NEW].texts[UNIT_PATH])
    run_synapse = (
        f"{VENV}/bin/python -m synapse.app.homeserver"
        " --config-path=/etc/matrix-synapse/homeserver.yaml"
        " --config-path=/etc/matrix-synapse/conf.d/"
    )
    assert unit["Unit.Description"] == ["Synapse Matrix homeserver"]
    assert unit["Service.Type"] == ["notify"]
    assert "Service.NotifyAccess" not in unit  # systemd's default: main
    assert unit["Service.User"] == [SYNAPSE_USER]
    assert unit["Service.WorkingDirectory"] == ["/var/lib/matrix-synapse"]
    assert unit["Service.EnvironmentFile"] == ["-/etc/default/matrix-synapse"]
    assert unit["Service.ExecStartPre"] == [run_synapse + " --generate-keys"]
    assert unit["Service.ExecStart"] == [run_synapse]
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Service.Restart"] == ["always"]
    assert unit["Service.RestartSec"] == ["3"]
    assert unit["Service.SyslogIdentifier"] == ["matrix-synapse"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]
    # Nothing more than the real unit sets (no sandbox, no conditions).
    assert len(unit) == 12, sorted(unit)


def test_config_files_as_the_real_build_makes_them(data: dict[str, DebData]) -> None:
    """generate_config's output with debian/build_virtualenv's adjustments."""
    texts = data[NEW].texts
    assert "/etc/default/matrix-synapse" not in data[NEW].members  # no longer shipped
    text = texts["/etc/matrix-synapse/homeserver.yaml"]
    config = yaml.safe_load(text)
    assert "server_name" not in config and "report_stats" not in config
    assert re.search(r'(?m)^# server_name: "SERVERNAME"$', text)
    assert config["pid_file"] == "/var/run/matrix-synapse.pid"
    assert config["media_store_path"] == "/var/lib/matrix-synapse/media"
    assert config["signing_key_path"] == "/etc/matrix-synapse/homeserver.signing.key"
    assert config["log_config"] == "/etc/matrix-synapse/log.yaml"
    assert config["database"] == {"name": "sqlite3",
                                  "args": {"database": "/var/lib/matrix-synapse/homeserver.db"}}
    assert config["listeners"] == [{
        "port": 8008, "tls": False, "type": "http", "x_forwarded": True,
        "bind_addresses": ["::1", "127.0.0.1"],
        "resources": [{"names": ["client", "federation"], "compress": False}],
    }]
    assert config["trusted_key_servers"] == [{"server_name": "matrix.org"}]
    # Synapse's generate_log_config: the file behind a flushing buffer, no console.
    log = yaml.safe_load(texts["/etc/matrix-synapse/log.yaml"])
    assert log["handlers"]["file"]["filename"] == "/var/log/matrix-synapse/homeserver.log"
    # Rotated by Synapse's own handler: at midnight, 3 old files kept (what workers' files inherit).
    assert (log["handlers"]["file"]["class"], log["handlers"]["file"]["when"],
            log["handlers"]["file"]["backupCount"]) == ("logging.handlers.TimedRotatingFileHandler", "midnight", 3)
    assert log["handlers"]["buffer"]["class"] == "synapse.logging.handlers.PeriodicallyFlushingMemoryHandler"
    assert log["root"]["handlers"] == ["buffer"]


# --- the chroot (tests/support/chroot.py, the chroot tests' toolkit) ---------


def ensure_tools() -> None:
    need(os.geteuid() == 0, "root (chroot, mount, debootstrap)")
    if shutil.which("debootstrap") is None:
        run("apt-get", "install", "-y", "--no-install-recommends", "debootstrap", check=False)
    need(shutil.which("debootstrap") is not None, "debootstrap")
    need(shutil.which("unshare") is not None and shutil.which("ip") is not None, "unshare and ip")


@pytest.fixture(scope="session")
def bookworm_root() -> Path:
    """A minimal bookworm root, bootstrapped once and cached."""
    ensure_tools()
    mirror = debian_mirror(SUITE)
    key = hashlib.sha256(f"{SUITE} minbase {mirror} {POLICY_RC_D} unsafe-io".encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-minbase-{key}"
    stamp = CACHE / f"{SUITE}-minbase-{key}.apt-updated"
    with locked(CACHE / f"{SUITE}-minbase.lock"):
        if not root.exists():
            for old in CACHE.glob(f"{SUITE}-minbase-*"):
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()
            tmp = CACHE / f"{SUITE}-minbase.tmp"
            unmount_below(tmp)  # a failed debootstrap may leave its /proc
            shutil.rmtree(tmp, ignore_errors=True)
            debootstrap_minbase(tmp, SUITE, mirror)
            # A throwaway root: dpkg need not fsync every file it unpacks.
            (tmp / "etc/dpkg/dpkg.cfg.d/unsafe-io").write_text("force-unsafe-io\n")
            tmp.rename(root)
        if not stamp.exists() or time.time() - stamp.stat().st_mtime > APT_LISTS_MAX_AGE:
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            with mounted(root):
                chroot_run(root, "apt-get", "update")
            stamp.touch()
    return root


class Standin(Chroot):
    """A throwaway bookworm root (an overlay on the cached one), and what these tests ask of
    matrix-synapse-py3 there."""

    def preseed_synapse(self, *answers: str) -> None:
        """debconf-set-selections of the stand-in's questions ("QUESTION TYPE VALUE")."""
        self.run("debconf-set-selections", input="".join(f"{PACKAGE} {a}\n" for a in answers))

    def debconf(self, question: str) -> str:
        out = self.run("debconf-show", PACKAGE).stdout
        found = [line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.lstrip("* ").startswith(f"{question}:")]
        return found[0] if found else ""

    def python(self, code: str) -> str:
        return self.run(f"{VENV}/bin/python", "-c", code).stdout.strip()

    def passwd(self, name: str) -> list[str]:
        return self.run("getent", "passwd", name).stdout.strip().split(":")

    def user_group(self, path: str) -> tuple[str, str]:
        return self.owner(path)[:2]

    def version(self) -> str:
        return self.run("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE).stdout


@contextlib.contextmanager
def overlay_chroot(base: Path, work: Path) -> Iterator[Standin]:
    """An overlay on ``base`` whose apt downloads land in one cache shared by every test;
    its upper layer (a whole installed Synapse) is removed afterwards."""
    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    try:
        with overlay([base], work) as root:
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            target = root / "var/cache/apt/archives"
            run("mount", "--bind", archives, target)
            try:
                yield Standin(root.path)
            finally:
                if subprocess.run(["umount", str(target)]).returncode:
                    subprocess.run(["umount", "-l", str(target)])
    finally:
        # Not left to pytest's retained temporary directories.
        remove_tree(work / "upper")


@pytest.fixture
def chroot(bookworm_root: Path, tmp_path: Path) -> Iterator[Standin]:
    with overlay_chroot(bookworm_root, tmp_path / "chroot") as c:
        yield c


@pytest.fixture(scope="module")
def installed(bookworm_root: Path, debs: dict[str, Path], tmp_path_factory) -> Iterator[Standin]:
    """A chroot with the new stand-in freshly installed (no systemd running,
    no server name given: the host's name is the default)."""
    with overlay_chroot(bookworm_root, tmp_path_factory.mktemp("installed")) as c:
        c.preseed_synapse("matrix-synapse/server-name string standin.test")
        c.apt_install(debs[NEW])
        yield c


def test_install_runs_synapse_of_that_version(installed: Standin) -> None:
    assert installed.version() == f"install ok installed {NEW}+standin"
    # With the extras: psycopg2 (postgres), txredisapi and hiredis (redis).
    # The byte code names the installed paths, not the build's staging one.
    code = (
        "import marshal, synapse, psycopg2, txredisapi, hiredis\n"
        "print(synapse.__version__)\n"
        "print(marshal.loads(open(synapse.__cached__, 'rb').read()[16:]).co_filename)\n"
    )
    assert installed.python(code).splitlines() == [
        NEW, f"{VENV}/lib/python3.11/site-packages/synapse/__init__.py"
    ]
    assert installed.run("synctl", "--help", check=False).returncode == 0


def test_install_creates_system_user(installed: Standin) -> None:
    name, _, uid, gid, _, home, shell = installed.passwd(SYNAPSE_USER)
    assert int(uid) < 1000
    assert home == "/var/lib/matrix-synapse"
    assert shell == "/usr/sbin/nologin"
    group = installed.run("getent", "group", gid).stdout.split(":")[0]
    assert group == SYNAPSE_USER


def test_install_gives_synapse_its_directories(installed: Standin) -> None:
    overrides = installed.run("dpkg-statoverride", "--list").stdout.splitlines()
    for path in ("/etc/matrix-synapse", "/var/lib/matrix-synapse", "/var/log/matrix-synapse"):
        assert installed.user_group(path) == (SYNAPSE_USER, SYNAPSE_USER), path
        assert (installed / path).stat().st_mode & 0o7777 == 0o755, path
        assert f"{SYNAPSE_USER} {SYNAPSE_USER} 755 {path}" in overrides
    assert installed.user_group("/etc/matrix-synapse/homeserver.yaml") == ("root", "root")


def test_install_writes_the_preseeded_answers_to_conf_d(installed: Standin) -> None:
    conf_d = installed / "/etc/matrix-synapse/conf.d"
    assert sorted(p.name for p in conf_d.iterdir()) == ["report_stats.yaml", "server_name.yaml"]
    assert yaml.safe_load((conf_d / "server_name.yaml").read_text()) == {"server_name": "standin.test"}
    assert "server_name: standin.test\n" in (conf_d / "server_name.yaml").read_text()
    assert yaml.safe_load((conf_d / "report_stats.yaml").read_text()) == {"report_stats": False}
    assert installed.user_group("/etc/matrix-synapse/conf.d/server_name.yaml") == ("root", "root")


def test_install_makes_no_signing_key(installed: Standin) -> None:
    """The real postinst makes none: the unit's ExecStartPre does, at the first start."""
    assert not (installed / "/etc/matrix-synapse/homeserver.signing.key").exists()


def test_install_without_an_answer_leaves_server_name_empty(chroot: Standin, debs: dict[str, Path]) -> None:
    """Nothing preseeded, noninteractive: the real package writes "server_name: " (null)."""
    chroot.apt_install(debs[NEW])
    text = (chroot / "/etc/matrix-synapse/conf.d/server_name.yaml").read_text()
    assert re.search(r"(?m)^server_name: $", text), text
    assert yaml.safe_load(text) == {"server_name": None}
    assert yaml.safe_load((chroot / "/etc/matrix-synapse/conf.d/report_stats.yaml").read_text()) == {
        "report_stats": False}
    # Synapse refuses that configuration (the unit would restart it every 3 s).
    done = chroot.run("sh", "-c", f"cd /var/lib/matrix-synapse && runuser -u {SYNAPSE_USER} -- "
                      f"{VENV}/bin/python -m synapse.app.homeserver "
                      "--config-path=/etc/matrix-synapse/homeserver.yaml "
                      "--config-path=/etc/matrix-synapse/conf.d/", check=False)
    assert done.returncode != 0 and "Invalid server name 'None'" in done.stdout, done.stdout
    # An admin's own statoverride wins, and a second configure changes nothing.
    chroot.run("dpkg-statoverride", "--remove", "/var/log/matrix-synapse")
    chroot.run("dpkg-statoverride", "--update", "--add", "root", "root", "0750", "/var/log/matrix-synapse")
    # The files win over a later preseed (config reads them back into debconf
    # first): only an edit of the file, or answering the question, names the server.
    server_name = chroot / "/etc/matrix-synapse/conf.d/server_name.yaml"
    chroot.preseed_synapse("matrix-synapse/server-name string later.test")
    chroot.run("dpkg-reconfigure", "-fnoninteractive", PACKAGE)
    assert yaml.safe_load(server_name.read_text()) == {"server_name": None}
    server_name.write_text(server_name.read_text().replace("server_name: \n", "server_name: later.test\n"))
    chroot.run("dpkg-reconfigure", "-fnoninteractive", PACKAGE)
    assert yaml.safe_load(server_name.read_text()) == {"server_name": "later.test"}
    assert chroot.debconf("matrix-synapse/server-name") == "later.test"
    assert chroot.user_group("/var/log/matrix-synapse") == ("root", "root")


def test_install_enables_unit_but_starts_nothing_without_systemd(installed: Standin) -> None:
    wants = installed / "/etc/systemd/system/multi-user.target.wants/matrix-synapse.service"
    assert os.readlink(wants) == UNIT_PATH
    # No systemd: the postinst did not even ask policy-rc.d, and Synapse never
    # ran (it would have created its database).
    assert installed.policy_log() == []
    assert not (installed / "/var/lib/matrix-synapse/homeserver.db").exists()


def test_unit_commands_work(installed: Standin) -> None:
    """The unit's ExecStartPre validates the config; its ExecStart serves /health."""
    unit = unit_settings((installed / UNIT_PATH).read_text())
    workdir = unit["Service.WorkingDirectory"][0]
    user = unit["Service.User"][0]
    [pre] = unit["Service.ExecStartPre"]
    installed.run("sh", "-c", f'cd {workdir} && exec runuser -u {user} -- {pre}')
    # That is where the signing key comes from: Synapse's format, the user's own.
    key = installed / "/etc/matrix-synapse/homeserver.signing.key"
    assert re.fullmatch(r"ed25519 a_\w+ [A-Za-z0-9+/]+=*\n?", key.read_text())
    assert installed.user_group("/etc/matrix-synapse/homeserver.signing.key") == (SYNAPSE_USER, SYNAPSE_USER)
    assert key.stat().st_mode & 0o022 == 0, oct(key.stat().st_mode)  # the rest: the umask

    [start] = unit["Service.ExecStart"]
    # Synapse in its own network namespace, so port 8008 is never the host's.
    probe = f"""
set -e
ip link set lo up
chroot {installed.path} env -i {" ".join(f"{k}={v}" for k, v in CHROOT_ENV.items())} \\
    sh -c 'cd {workdir} && exec runuser -u {user} -- {start}' >/dev/null 2>&1 &
pid=$!
for i in $(seq 1 120); do
    if out=$(chroot {installed.path} {VENV}/bin/python -c '
import urllib.request
with urllib.request.urlopen("http://127.0.0.1:8008/health", timeout=2) as r:
    print(r.read().decode(), r.headers["Server"])' 2>/dev/null); then
        echo "health: $out"
        kill $pid; wait $pid 2>/dev/null || true
        exit 0
    fi
    kill -0 $pid 2>/dev/null || {{ echo "Synapse exited"; exit 1; }}
    sleep 0.5
done
kill $pid; wait $pid 2>/dev/null || true
echo "no answer on /health"
exit 1
"""
    out = run("unshare", "--net", "--fork", "--kill-child", "sh", "-c", probe).stdout
    assert f"health: OK Synapse/{NEW}\n" in out
    # The buffered log handler writes this at the latest on exit.
    log = (installed / "/var/log/matrix-synapse/homeserver.log").read_text()
    assert "Synapse now listening on TCP port 8008" in log
    assert installed.user_group("/var/lib/matrix-synapse/homeserver.db") == (SYNAPSE_USER, SYNAPSE_USER)


def test_upgrade_keeps_admin_config_then_purge_leaves_what_the_real_one_leaves(chroot: Standin, debs: dict[str, Path]) -> None:
    chroot.preseed_synapse("matrix-synapse/server-name string first.test")
    chroot.apt_install(debs[OLD])
    assert chroot.python("import synapse; print(synapse.__version__)") == OLD
    conf_d = chroot / "/etc/matrix-synapse/conf.d"
    assert yaml.safe_load((conf_d / "server_name.yaml").read_text()) == {"server_name": "first.test"}

    homeserver = chroot / "/etc/matrix-synapse/homeserver.yaml"
    edited = homeserver.read_text().replace("port: 8008", "port: 8448") + "\n# edited by the admin\n"
    homeserver.write_text(edited)
    # The value in the file read last wins and is written back to every file
    # that sets the key, as the real package's debconf handling does.
    admin = conf_d / "zz-admin.yaml"
    admin.write_text("report_stats: true\n")
    # Pretend systemd runs: the postinst then asks deb-systemd-invoke (and
    # so policy-rc.d, which logs and refuses) to restart Synapse.
    (chroot / "/run/systemd/system").mkdir(parents=True)

    # A new answer loses against the files: the config script reads them back first.
    chroot.preseed_synapse("matrix-synapse/server-name string second.test")
    chroot.apt_install(debs[NEW])

    assert chroot.version() == f"install ok installed {NEW}+standin"
    assert chroot.python("import synapse; print(synapse.__version__)") == NEW
    assert homeserver.read_text() == edited
    assert not list((chroot / "/etc/matrix-synapse").glob("*.dpkg-*"))
    assert yaml.safe_load((conf_d / "server_name.yaml").read_text()) == {"server_name": "first.test"}
    assert yaml.safe_load((conf_d / "report_stats.yaml").read_text()) == {"report_stats": True}
    assert admin.read_text() == "report_stats: true\n"
    assert chroot.debconf("matrix-synapse/server-name") == "first.test"
    assert chroot.policy_log() == ["matrix-synapse.service restart"]

    # Remove: the program goes, the configuration stays, the unit is masked
    # (Synapse would be stopped first).
    chroot.run("dpkg", "--remove", PACKAGE)
    assert chroot.policy_log()[1:] == ["matrix-synapse.service stop"]
    assert not (chroot / "/opt/venvs").exists()
    assert homeserver.read_text() == edited
    assert os.readlink(chroot / "/etc/systemd/system/matrix-synapse.service") == "/dev/null"

    chroot.run("dpkg", "--purge", PACKAGE)
    # Like the real package: the conffiles go, what the postinst wrote and the
    # admin added stays, and so do the statoverrides and the user; the unit's
    # enable state and the debconf answers are forgotten.
    leftover = sorted(str(p.relative_to(chroot.path)) for p in (chroot / "/etc/matrix-synapse").rglob("*"))
    assert leftover == ["etc/matrix-synapse/conf.d", "etc/matrix-synapse/conf.d/report_stats.yaml",
                        "etc/matrix-synapse/conf.d/server_name.yaml", "etc/matrix-synapse/conf.d/zz-admin.yaml"]
    for path in ("/etc/systemd/system/matrix-synapse.service",
                 "/etc/systemd/system/multi-user.target.wants/matrix-synapse.service"):
        assert not os.path.lexists(chroot / path), path
    assert len(chroot.run("dpkg-statoverride", "--list").stdout.splitlines()) == 3
    assert "matrix-synapse/server-name" not in chroot.run("debconf-show", PACKAGE, check=False).stdout
    assert chroot.passwd(SYNAPSE_USER)[0] == SYNAPSE_USER
