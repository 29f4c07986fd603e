"""Boot a real Debian system in a container and drive it, for the booted tests.

The package under test talks to systemd, dpkg, PostgreSQL, Redis and nginx, so
the booted tests run it on a real bookworm system: a root directory made by
debootstrap, booted by ``systemd-nspawn --boot`` and driven through ``nsenter``.
This module is the only place that knows how; the tests say what happens.

Typical use::

    root = ensure_base_root()            # built once, then cached
    with Container(root, name="upgrade") as c:
        c.install_debs([standin_deb])
        synapse_setup(c, "example.test")
        c.poweroff()
        c.boot()                         # same root: installed state survives
        print(c.run(["systemctl", "is-active", "matrix-synapse"]).stdout)

Nothing here names a host: the Debian mirror is read from the machine's own apt
sources at run time.  Everything the harness starts it also stops: containers
are powered off (or killed) and their mounts removed on normal exit, on
exceptions, on KeyboardInterrupt and on SIGTERM; directories left by a process
that was killed outright are swept up by the next run.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import functools
import hashlib
import hmac
import inspect
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Sequence

SUITE = "bookworm"
# Runtime dependencies of our package and of the stand-in Synapse package,
# plus what a booted system needs.  Installed without Recommends.
ROOT_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "postgresql",
    "nginx",
    "curl",
    "redis-server",
    "ca-certificates",
    "python3",
    "python3-yaml",
    "python3-jinja2",
    "python3-debian",
    "python3-debconf",
    "python3-redis",
    "adduser",
    "iproute2",
    "procps",
    "libpq5",
)

CACHE_DIR = Path(os.environ.get("MSW_TEST_CACHE", "/var/cache/matrix-synapse-workers-tests"))
ROOTS_DIR = CACHE_DIR / "roots"
WORK_DIR = Path(os.environ.get("MSW_TEST_WORKDIR", "/var/tmp/matrix-synapse-workers-tests"))
# Roots of other cache keys that nobody used for this long are deleted.
ROOT_MAX_IDLE_SECONDS = 7 * 24 * 3600

# PostgreSQL as an admin would set it up for Synapse.  Test-only credentials.
DB_NAME = "synapse"
DB_USER = "synapse"
DB_PASSWORD = "synapse-test-password"
PG_SOCKET_DIR = "/var/run/postgresql"
TEST_SHARED_SECRET = "msw-test-registration-shared-secret"

SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLICY_RC_D = PurePosixPath("/usr/sbin/policy-rc.d")
POLICY_RC_D_TEXT = (
    "#!/bin/sh\n"
    "# Written by the matrix-synapse-workers test harness: no service starts\n"
    "# while packages are installed outside a booted system.\n"
    "exit 101\n"
)
ROOT_STAMP = PurePosixPath("/etc/matrix-synapse-workers-test-root")
CONTAINER_DEB_DIR = PurePosixPath("/var/cache/msw-test-debs")

BOOT_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 90.0
RUN_TIMEOUT = 300.0


# --------------------------------------------------------------------------
# Errors


class HarnessError(Exception):
    """Base class of every error this module raises on purpose."""


class HarnessUnavailable(HarnessError):
    """This machine cannot boot containers at all (not root, tools missing).

    Tests turn it into a skip, or into a failure when MSW_REQUIRE_BOOTED=1.
    """


class SuiteUnavailable(HarnessError):
    """Another Debian suite (sid) cannot be installed from the mirror right now.

    Sid moves: debootstrap or one of its packages can fail for a while for
    reasons that are not ours.  The only failure a test may turn into a skip
    even when MSW_REQUIRE_BOOTED=1; the message names what failed.
    """


class CommandFailed(HarnessError, subprocess.CalledProcessError):
    """A command exited non-zero; the message carries its output."""

    def __str__(self) -> str:
        return (
            f"command {shlex.join(map(str, self.cmd))} exited {self.returncode}\n"
            f"--- stdout ---\n{_tail(self.stdout)}\n--- stderr ---\n{_tail(self.stderr)}"
        )


class CommandTimeout(HarnessError, subprocess.TimeoutExpired):
    """A command ran longer than its timeout and was killed."""

    def __str__(self) -> str:
        return (
            f"command {shlex.join(map(str, self.cmd))} killed after {self.timeout} s\n"
            f"--- stdout ---\n{_tail(self.output)}\n--- stderr ---\n{_tail(self.stderr)}"
        )


class BootFailed(HarnessError):
    """The container did not come up; the message carries nspawn's log."""


class MissingDependencies(HarnessError):
    """dpkg refused to configure packages because dependencies are not in the root."""

    def __init__(self, missing: list[str], output: str) -> None:
        super().__init__(
            "packages have dependencies the test root does not provide "
            f"(add them to harness.ROOT_PACKAGES): {', '.join(missing) or '?'}\n{_tail(output)}"
        )
        self.missing = missing
        self.output = output


class HttpError(HarnessError):
    """An HTTP request inside the container could not be made, or got an unexpected status."""


def _tail(text: str | bytes | None, limit: int = 4000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


# --------------------------------------------------------------------------
# Running commands on the host


def _host_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: nothing of the caller's leaks into tools or containers."""
    env = {"PATH": SANE_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
    if extra:
        env.update(extra)
    return env


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = RUN_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run argv in its own process group; on timeout or interrupt kill the whole group.

    subprocess.run kills only the direct child, which leaves nsenter's or
    unshare's children behind.
    """
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else _host_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild in another group holds the pipes
            out, err = b"", b""
        raise CommandTimeout(list(argv), timeout or 0, out, err) from None
    except BaseException:
        _killpg(proc.pid)
        proc.wait()
        raise
    if text:
        out_v: str | bytes = out.decode(errors="replace")
        err_v: str | bytes = err.decode(errors="replace")
    else:
        out_v, err_v = out, err
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, list(argv), out_v, err_v)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out_v, err_v)


def _as_argv(cmd: str | Sequence[str]) -> list[str]:
    """A string is a shell command line; a sequence is an argv."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    return [str(c) for c in cmd]


def _guest_env_argv(env: Mapping[str, str] | None) -> list[str]:
    """`env -i` prefix so a command inside a root gets a sane, known environment."""
    base = {
        "PATH": SANE_PATH,
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "TERM": "dumb",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    if env:
        base.update(env)
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in base.items())]


# --------------------------------------------------------------------------
# Mounts and safe removal


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_under(path: Path) -> list[str]:
    """Mount points (as this process sees them) at or below path, deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape_mount(line.split()[4])
            if mp == base or mp.startswith(base.rstrip("/") + "/"):
                found.append(mp)
    return sorted(set(found), key=len, reverse=True)


def _umount_all_under(path: Path) -> None:
    for mp in mounts_under(path):
        if _run(["umount", mp], check=False, timeout=60).returncode != 0:
            _run(["umount", "--lazy", mp], check=False, timeout=60)


def _safe_rmtree(path: Path) -> None:
    """rm -rf that never follows a bind mount of the host's /dev or /proc into the host."""
    if not os.path.lexists(path):
        return
    _umount_all_under(path)
    left = mounts_under(path)
    if left:
        raise HarnessError(f"refusing to delete {path}: still mounted: {left}")
    _run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=600)


# --------------------------------------------------------------------------
# Host checks


def _is_root() -> bool:
    return os.geteuid() == 0


def check_host() -> None:
    """Make sure this machine can build and boot roots; install the tools if missing.

    Raises HarnessUnavailable when it cannot: the caller decides whether that
    is a skip or (MSW_REQUIRE_BOOTED=1) a failure.
    """
    if sys.platform != "linux":
        raise HarnessUnavailable("booted tests need Linux")
    if not _is_root():
        raise HarnessUnavailable("booted tests need root (debootstrap, mounts, systemd-nspawn)")
    needed = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap"}
    missing = [pkg for tool, pkg in needed.items() if not _which(tool)]
    if missing:
        if not _which("apt-get"):
            raise HarnessUnavailable(f"missing {', '.join(missing)} and no apt-get to install them")
        env = _host_env({"DEBIAN_FRONTEND": "noninteractive"})
        inst = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        r = _run(inst, check=False, env=env, timeout=600)
        if r.returncode != 0:
            _run(["apt-get", "update"], check=False, env=env, timeout=600)
            r = _run(inst, check=False, env=env, timeout=600)
        if r.returncode != 0 or any(not _which(t) for t in needed):
            raise HarnessUnavailable(
                f"cannot install {', '.join(missing)}: {_tail(r.stderr, 800)}"
            )
    for tool in ("nsenter", "unshare", "mount", "umount", "chroot"):
        if not _which(tool):
            raise HarnessUnavailable(f"{tool} is not installed")


def _which(tool: str) -> str | None:
    for d in SANE_PATH.split(":"):
        p = os.path.join(d, tool)
        if os.access(p, os.X_OK):
            return p
    return None


# --------------------------------------------------------------------------
# The host's apt sources (the mirror is never written into the repository)


@dataclasses.dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Entries of a deb822 .sources file (Types: deb only, Enabled: no skipped)."""
    out: list[AptSource] = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        comps = tuple(fields.get("components", "main").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append(AptSource(uri, suite, comps))
    return out


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Entries of a one-line sources.list (`deb [opts] URI SUITE COMPONENTS...`)."""
    out: list[AptSource] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        parts = line.split()
        if len(parts) >= 2:
            out.append(AptSource(parts[0], parts[1], tuple(parts[2:]) or ("main",)))
    return out


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    sources: list[AptSource] = []
    one_line = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for p in one_line:
        if p.is_file():
            sources += parse_one_line_sources(p.read_text())
    for p in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        sources += parse_deb822_sources(p.read_text())
    return sources


def host_mirror(suite: str = SUITE, etc_apt: Path = Path("/etc/apt")) -> str:
    """The URI the host itself uses for `suite` (the main archive, not security)."""
    for s in host_apt_sources(etc_apt):
        if s.suite == suite and s.uri.startswith(("http://", "https://", "file:/")):
            return s.uri
    raise HarnessUnavailable(f"no apt source for {suite} on this machine to take a mirror from")


def _root_sources_list(suite: str = SUITE, etc_apt: Path = Path("/etc/apt")) -> str:
    """sources.list for the root: the host's entries for suite, -updates and -security, main only.

    For a release the host has no entry for (trixie on a bookworm host), the
    host's own entries for its release, -updates and -security, with the
    suite names changed: the same archive and security mirrors serve both.
    """
    sources = host_apt_sources(etc_apt)
    have = {s.suite for s in sources}
    source_suite = suite if suite in have else SUITE
    wanted = {source_suite: suite, f"{source_suite}-updates": f"{suite}-updates",
              f"{source_suite}-security": f"{suite}-security"}
    lines = []
    seen = set()
    for s in sources:
        if s.suite in wanted and "main" in s.components and (s.uri, s.suite) not in seen:
            seen.add((s.uri, s.suite))
            lines.append(f"deb {s.uri} {wanted[s.suite]} main")
    if not lines:
        lines.append(f"deb {suite_mirror(suite, etc_apt)} {suite} main")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Commands inside an unbooted root (chroot)

_CHROOT_SETUP = r"""
set -e
R="$1"; shift
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/run/lock"
exec chroot "$R" "$@"
"""


def _chroot_exec(
    root: Path,
    cmd: str | Sequence[str],
    *,
    network: bool = False,
    input: str | bytes | None = None,
    timeout: float | None = RUN_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run cmd chrooted into root, in private mount and PID namespaces.

    The namespaces are the point: /proc, /sys, /dev and /run are mounted only
    inside them, so the mounts vanish with the last process whatever happens
    (even SIGKILL), and any daemon a maintainer script starts dies with the
    command instead of outliving it.  Without network=True the command also
    gets an empty network namespace, so nothing it starts binds host ports.
    """
    ns = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
    if not network:
        ns.append("--net")
    argv = [*ns, "--", "/bin/sh", "-c", _CHROOT_SETUP, "sh", str(root),
            *_guest_env_argv(env), *_as_argv(cmd)]
    return _run(argv, input=input, timeout=timeout, check=check, text=text)


# --------------------------------------------------------------------------
# The base root


def _postgres_setup_script() -> str:
    """Shell run in the chroot: a synapse role and database as an admin makes them."""
    pw = DB_PASSWORD.replace("'", "''")
    return f"""
set -eu
ver=$(ls /etc/postgresql | sort -V | tail -n 1)
conf=/etc/postgresql/$ver/main
pg_ctlcluster -o "-c listen_addresses=''" "$ver" main start
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<'EOF'
CREATE ROLE {DB_USER} LOGIN PASSWORD '{pw}';
CREATE DATABASE {DB_NAME} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'
    TEMPLATE template0 OWNER {DB_USER};
EOF
pg_ctlcluster "$ver" main stop
# Password login for the synapse role on the socket, ahead of Debian's peer lines.
awk -v line='local   {DB_NAME}         {DB_USER}                                 scram-sha-256' '
    !done && /^[[:space:]]*(local|host)/ {{ print line; done = 1 }}
    {{ print }}' "$conf/pg_hba.conf" > "$conf/pg_hba.conf.new"
chown --reference="$conf/pg_hba.conf" "$conf/pg_hba.conf.new"
chmod --reference="$conf/pg_hba.conf" "$conf/pg_hba.conf.new"
mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
"""


def _build_root(dest: Path, log: Path, suite: str = SUITE, extra: Sequence[str] = ()) -> None:
    """debootstrap minbase of suite + ROOT_PACKAGES + extra + PostgreSQL set up, into dest."""

    def step(argv: Sequence[str] | None = None, **kw: Any) -> None:
        started = time.monotonic()
        if argv is not None:
            label = shlex.join(argv)
            r = _run(argv, check=False, timeout=1200)
        else:
            label = "chroot: " + " ".join(_as_argv(kw["cmd"]))[:200]
            r = _chroot_exec(dest, check=False, timeout=1200, **kw)
        with log.open("a") as f:
            f.write(f"\n=== {label} -> {r.returncode} "
                    f"({time.monotonic() - started:.1f} s)\n{r.stdout}{r.stderr}")
        if r.returncode != 0:
            raise HarnessError(f"building the test root failed, see {log}:\n{_tail(r.stdout + r.stderr)}")

    mirror = suite_mirror(suite)
    # debootstrap mounts /proc and /sys in the target: keep those in a private namespace.
    step(["unshare", "--mount", "--propagation", "private", "--",
          "debootstrap", "--variant=minbase", suite, str(dest), mirror])
    (dest / "etc/apt/sources.list").write_text(_root_sources_list(suite))
    policy = dest / str(POLICY_RC_D).lstrip("/")
    policy.write_text(POLICY_RC_D_TEXT)
    policy.chmod(0o755)
    # No fsync per unpacked file while building (a throwaway tree until renamed).
    unsafe_io = dest / "etc/dpkg/dpkg.cfg.d/msw-test-build-unsafe-io"
    unsafe_io.write_text("force-unsafe-io\n")
    step(cmd=["apt-get", "update"], network=True)
    step(cmd=["apt-get", "-y", "dist-upgrade"], network=True)
    step(cmd=["apt-get", "install", "-y", "--no-install-recommends", *ROOT_PACKAGES, *extra],
         network=True)
    step(cmd=["apt-get", "clean"])
    step(cmd=["/bin/sh", "-c", _postgres_setup_script()])
    (dest / "etc/hostname").write_text("msw-test\n")
    unsafe_io.unlink()
    policy.unlink()
    _run(["sync", "-f", str(dest)])
    (dest / str(ROOT_STAMP).lstrip("/")).write_text(
        f"test root built by matrix-synapse-workers tests/booted/harness.py\n"
        f"key: {root_cache_key(suite, extra)}\nsuite: {suite}\n"
        f"packages: {' '.join((*ROOT_PACKAGES, *extra))}\n"
    )


_BUILD_CODE = (_build_root, _postgres_setup_script, _chroot_exec, _root_sources_list, _guest_env_argv,
               host_apt_sources)


def root_cache_key(suite: str = SUITE, extra: Sequence[str] = ()) -> str:
    """Hash of what goes into the base root: suite, packages, and the code that builds it."""
    h = hashlib.sha256()
    for part in (suite, "\n".join((*ROOT_PACKAGES, *extra)), POLICY_RC_D_TEXT, _CHROOT_SETUP,
                 DB_NAME, DB_USER, DB_PASSWORD):
        h.update(part.encode() + b"\0")
    for fn in (*_BUILD_CODE, suite_mirror):
        h.update(inspect.getsource(fn).encode() + b"\0")
    return f"{suite}-{h.hexdigest()[:16]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _used_as_lower(root: Path) -> bool:
    """Whether an overlay mount (of any process in this mount namespace) stacks on root."""
    target = os.path.realpath(root)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            m = re.search(r"lowerdir=([^,\s]+)", line)
            if m and any(_unescape_mount(d) == target or _unescape_mount(d).startswith(target + "/")
                         for d in m.group(1).split(":")):
                return True
    return False


def root_layers(root: Path) -> list[Path]:
    """The directories that make up root, top first.

    A base root is one full tree.  A derived root (ensure_derived_root) is a
    directory holding `layer/` (what its setup changed, in overlayfs upper-dir
    form, whiteouts included) and a `parent` file naming the root below it.
    """
    root = Path(root)
    layer = root / "layer"
    if not layer.is_dir():
        return [root]
    parent_file = root / "parent"
    if not parent_file.is_file():
        return [layer]
    return [layer, *root_layers(Path(parent_file.read_text().strip()))]


def _prune_roots(keep: str) -> None:
    """Delete cached roots that nobody used for a week, that nothing has mounted
    and that no kept derived root stacks on; and derived roots whose parent is gone."""
    now = time.time()
    keys = {p.name[: -len(".last-used")] for p in ROOTS_DIR.glob("*.last-used")}
    stale = set()
    for key in keys:
        stamp = ROOTS_DIR / f"{key}.last-used"
        if key != keep and now - stamp.stat().st_mtime >= ROOT_MAX_IDLE_SECONDS:
            stale.add(key)
    for key in keys:
        parent = ROOTS_DIR / key / "parent"
        if parent.is_file() and not Path(parent.read_text().strip()).is_dir():
            stale.add(key)
    needed = set()  # every root a kept root stacks on
    for key in keys - stale:
        try:
            layers = root_layers(ROOTS_DIR / key)
        except OSError:
            continue
        needed |= {(p.parent if p.name == "layer" else p).name for p in layers}
    for key in sorted(stale - needed):
        root = ROOTS_DIR / key
        if _used_as_lower(root):
            continue
        _safe_rmtree(root)
        (ROOTS_DIR / f"{key}.last-used").unlink(missing_ok=True)


def _ensure_built(key: str, build: Callable[[Path, Path], None], log: Path | None = None) -> Path:
    """ROOTS_DIR/key, made by build(tmp, log) under a lock if it is not there yet.

    It is built under a temporary name and renamed into place, so only a
    finished build counts as a cache.
    """
    check_host()
    ROOTS_DIR.mkdir(parents=True, exist_ok=True)
    root = ROOTS_DIR / key
    with open(ROOTS_DIR / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            for stale in ROOTS_DIR.glob(f".build-{key}-*"):
                _safe_rmtree(stale)
            tmp = ROOTS_DIR / f".build-{key}-{os.getpid()}"
            log = log or ROOTS_DIR / f"{key}.build.log"
            log.write_text(f"building {key} into {tmp}\n")
            try:
                build(tmp, log)
                os.rename(tmp, root)
            except BaseException:
                _safe_rmtree(tmp)
                raise
        (ROOTS_DIR / f"{key}.last-used").touch()
        _prune_roots(key)
    return root


def ensure_base_root(log: Path | None = None, suite: str = SUITE, extra: Sequence[str] = ()) -> Path:
    """Return the cached root of suite (bookworm, or trixie: the same packages and
    PostgreSQL set-up) with the extra packages too (e.g. valkey-server), building it
    first if needed (2-3 minutes cold).

    The cache directory is named by root_cache_key(suite).  A lock file serializes
    concurrent callers.  The returned root is read-only by convention:
    containers put an overlay (or a copy) on top.
    """
    return _ensure_built(root_cache_key(suite, extra),
                         functools.partial(_build_root, suite=suite, extra=tuple(extra)), log)


# --------------------------------------------------------------------------
# A root of another Debian suite (sid), for the real packages only it has

# sid's Release file is valid for a week; a mirror that serves a snapshot of
# the archive serves an expired one.  The root takes the archive as served.
SUITE_APT_CONF = 'Acquire::Check-Valid-Until "false";\n'
# systemd 258 and later refuse to boot on a cgroup v1 host; the containers of
# such a root get a cgroup v2 hierarchy of their own (Container(unified_cgroup=True)).
SUITE_BASE_PACKAGES: tuple[str, ...] = ("systemd", "systemd-sysv", "dbus")
UNIFIED_CGROUP_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}


def suite_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> str:
    """The host's URI for suite, else the URI of the Debian archive the host itself uses
    (the same mirror serves the other suites)."""
    try:
        return host_mirror(suite, etc_apt)
    except HarnessUnavailable:
        return host_mirror(SUITE, etc_apt)


def _build_suite_root(dest: Path, log: Path, suite: str, packages: Sequence[str],
                      preseed: str = "") -> None:
    """debootstrap minbase of suite + SUITE_BASE_PACKAGES + packages, into dest;
    preseed is debconf-set-selections input given before the packages install.

    debootstrap and the package installation failing raise SuiteUnavailable
    (the suite cannot be installed today); anything else is a HarnessError.
    """

    def step(what: str, argv: Sequence[str] | None = None, **kw: Any) -> None:
        started = time.monotonic()
        if argv is not None:
            r = _run(argv, check=False, timeout=1200)
        else:
            r = _chroot_exec(dest, check=False, timeout=1200, network=True,
                             env={"DEBIAN_FRONTEND": "noninteractive"}, **kw)
        with log.open("a") as f:
            f.write(f"\n=== {what} -> {r.returncode} "
                    f"({time.monotonic() - started:.1f} s)\n{r.stdout}{r.stderr}")
        if r.returncode != 0:
            raise SuiteUnavailable(f"{what} failed (exit {r.returncode}), see {log}:\n"
                                   f"{_tail(r.stdout + r.stderr, 1500)}")

    mirror = suite_mirror(suite)
    step(f"debootstrap {suite}", ["unshare", "--mount", "--propagation", "private", "--",
                                  "debootstrap", "--variant=minbase", suite, str(dest), mirror])
    (dest / "etc/apt/sources.list").write_text(f"deb {mirror} {suite} main\n")
    (dest / "etc/apt/apt.conf.d/99msw-test-suite").write_text(SUITE_APT_CONF)
    policy = dest / str(POLICY_RC_D).lstrip("/")
    policy.write_text(POLICY_RC_D_TEXT)
    policy.chmod(0o755)
    # No fsync per unpacked file while building (a throwaway tree until renamed).
    unsafe_io = dest / "etc/dpkg/dpkg.cfg.d/msw-test-build-unsafe-io"
    unsafe_io.write_text("force-unsafe-io\n")
    step(f"apt-get update ({suite})", cmd=["apt-get", "update"])
    if preseed:
        _chroot_exec(dest, ["debconf-set-selections"], input=preseed)
    step(f"installing {' '.join(packages)} from {suite}",
         cmd=["apt-get", "install", "-y", "--no-install-recommends", *SUITE_BASE_PACKAGES, *packages])
    step("apt-get clean", cmd=["apt-get", "clean"])
    (dest / "etc/hostname").write_text("msw-test\n")
    unsafe_io.unlink()
    policy.unlink()
    _run(["sync", "-f", str(dest)])
    (dest / str(ROOT_STAMP).lstrip("/")).write_text(
        f"test root built by matrix-synapse-workers tests/booted/harness.py\n"
        f"suite: {suite}\npackages: {' '.join((*SUITE_BASE_PACKAGES, *packages))}\n")


def ensure_suite_root(suite: str, packages: Sequence[str], preseed: str = "",
                      log: Path | None = None) -> Path:
    """The cached root of suite with packages installed (the real ones, from the archive).

    Keyed on the suite, the packages and the build code, and like every root
    kept while it is used, so a suite that moves is fetched once a week at most.
    Raises SuiteUnavailable when the suite or a package cannot be installed.
    """
    h = hashlib.sha256()
    for part in (suite, "\n".join(packages), preseed, "\n".join(SUITE_BASE_PACKAGES), SUITE_APT_CONF,
                 POLICY_RC_D_TEXT, _CHROOT_SETUP, inspect.getsource(_build_suite_root),
                 inspect.getsource(_chroot_exec), inspect.getsource(_guest_env_argv)):
        h.update(part.encode() + b"\0")
    key = f"{suite}-{h.hexdigest()[:16]}"
    build = functools.partial(_build_suite_root, suite=suite, packages=packages, preseed=preseed)
    return _ensure_built(key, build, log)


def _hash_input(h: "hashlib._Hash", item: str | bytes | os.PathLike[str]) -> None:
    if isinstance(item, bytes):
        h.update(b"b" + item + b"\0")
    elif isinstance(item, os.PathLike):
        with open(item, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    else:
        h.update(b"s" + str(item).encode() + b"\0")


def _hash_callable(h: "hashlib._Hash", fn: Callable[..., Any]) -> None:
    """Hash a function's source; for functools.partial also its arguments
    (paths by content, so a temporary path to the same file gives the same key)."""
    if isinstance(fn, functools.partial):
        _hash_callable(h, fn.func)
        for arg in [*fn.args, *(v for _, v in sorted(fn.keywords.items()))]:
            _hash_input(h, arg if isinstance(arg, (bytes, os.PathLike)) else repr(arg))
        _hash_input(h, repr(sorted(fn.keywords)))
        return
    try:
        _hash_input(h, inspect.getsource(fn))
    except (OSError, TypeError):
        _hash_input(h, getattr(fn, "__qualname__", repr(fn)))


def ensure_derived_root(name: str, parent: Path, setup: Callable[["Container"], None],
                        inputs: Iterable[str | bytes | os.PathLike[str]] = ()) -> Path:
    """A root made from parent by booting it and running setup(container); cached.

    For state that many scenarios share and that is slow to make (e.g. the
    stand-in Synapse installed and switched to PostgreSQL: about a minute),
    so each scenario boots it in seconds instead.  setup() runs in a booted
    container; the container is then powered off cleanly and what it changed
    is kept as an overlay layer above parent.

    The cache key is parent's key, name, setup's source code and inputs:
    paths are hashed by content (pass the .deb files setup installs), str and
    bytes as they are.  setup may be a functools.partial: its arguments count
    too (paths by content).  Anything else setup depends on (helpers it calls,
    constants) must be in inputs.
    """
    h = hashlib.sha256()
    for part in (Path(parent).name, name):
        _hash_input(h, part)
    _hash_callable(h, setup)
    for item in inputs:
        _hash_input(h, item)
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "derived"
    key = f"{slug}-{h.hexdigest()[:16]}"
    ROOTS_DIR.mkdir(parents=True, exist_ok=True)
    root = ROOTS_DIR / key
    with open(ROOTS_DIR / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            for stale in ROOTS_DIR.glob(f".build-{key}-*"):
                _safe_rmtree(stale)
            tmp = ROOTS_DIR / f".build-{key}-{os.getpid()}"
            tmp.mkdir()
            try:
                with Container(parent, name=f"derive-{slug}") as c:
                    setup(c)
                    if c.poweroff() != 0:
                        raise HarnessError(f"{c.name} did not power off cleanly after setup")
                    c._take_layer(tmp / "layer")
                (tmp / "parent").write_text(f"{Path(parent).resolve()}\n")
                os.rename(tmp, root)
            except BaseException:
                _safe_rmtree(tmp)
                raise
        (ROOTS_DIR / f"{key}.last-used").touch()
        parent_stamp = ROOTS_DIR / f"{Path(parent).name}.last-used"
        if parent_stamp.exists():
            parent_stamp.touch()
    return root


# --------------------------------------------------------------------------
# Containers

_LIVE: set["Container"] = set()
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False


def _cleanup_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for c in live:
        try:
            c.destroy(timeout=20)
        except Exception as e:  # keep cleaning the others
            print(f"harness: cleanup of {c.name} failed: {e}", file=sys.stderr)


def _install_cleanup_handlers() -> None:
    """atexit and SIGTERM both tear down every live container.

    SIGTERM then becomes KeyboardInterrupt, so pytest stops the session and
    runs its teardowns instead of starting the next test.
    """
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cleanup at a time
        try:
            _cleanup_all()
        finally:
            signal.signal(signal.SIGTERM, on_sigterm)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)


def _proc_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def _sweep_stale_containers() -> None:
    """Remove what a harness process killed outright (SIGKILL) left: nspawn, mounts, dirs."""
    if not WORK_DIR.is_dir():
        return
    for d in WORK_DIR.iterdir():
        # Only directories named by _machine_name(): others may share WORK_DIR.
        m = _CONTAINER_DIR_RE.match(d.name)
        if not m or not d.is_dir():
            continue
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            owner = {}
        pid, start = owner.get("owner_pid"), owner.get("owner_start")
        if pid and _proc_start_time(pid) == start:
            continue  # its owner still runs
        if not owner and _pid_alive(int(m.group(1))):
            continue  # being set up right now
        nspawn = owner.get("nspawn_pid")
        if nspawn and _proc_start_time(nspawn) == owner.get("nspawn_start"):
            for child in _children(nspawn):
                _kill(child)
            _kill(nspawn)
            for _ in range(100):
                if _proc_start_time(nspawn) != owner.get("nspawn_start"):
                    break
                time.sleep(0.1)
        try:
            _safe_rmtree(d)
        except HarnessError as e:
            print(f"harness: cannot sweep {d}: {e}", file=sys.stderr)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_name_counter = 0
_CONTAINER_DIR_RE = re.compile(r"^msw-[a-z0-9-]*?-(\d+)-(\d+)$")


def _machine_name(name: str) -> str:
    global _name_counter
    _name_counter += 1
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:30] or "c"
    return f"msw-{clean}-{os.getpid()}-{_name_counter}"


class Container:
    """A throwaway, bootable copy of a root, for one scenario.

    The copy is an overlay mount (the cached root as lower layer, a fresh
    upper layer per container) or, with mode="copy", a full `cp -a`.  Either
    way it belongs to this object and outlives power cycles: poweroff() and
    boot() again is a reboot of the same system, with everything installed
    or configured before it.  Unlike nspawn's --volatile=overlay, /etc
    changes survive that reboot.

    Use as a context manager.  With boot=False the root is prepared but not
    booted: chroot_run() and install_debs() then act like an image builder
    (policy-rc.d in place, no systemd), and boot() can follow.
    unified_cgroup=True boots it with a cgroup v2 hierarchy of its own, which
    systemd 258 and later (sid) need on a cgroup v1 host.
    """

    def __init__(
        self,
        root: Path,
        name: str = "c",
        *,
        boot: bool = True,
        mode: str = "overlay",
        boot_timeout: float = BOOT_TIMEOUT,
        require_running: bool = False,
        unified_cgroup: bool = False,
    ) -> None:
        if mode not in ("overlay", "copy"):
            raise ValueError(f"mode must be 'overlay' or 'copy', not {mode!r}")
        self.lower = Path(root)
        self.layers = root_layers(self.lower)
        self.name = _machine_name(name)
        self.mode = mode
        self.dir = WORK_DIR / self.name
        self.path = self.dir / "root"  # the container's / as seen from the host
        self.boot_timeout = boot_timeout
        self.require_running = require_running
        self.unified_cgroup = unified_cgroup
        self._autoboot = boot
        self._nspawn: subprocess.Popen | None = None
        self._pid: int | None = None
        self._prepared = False
        self._destroyed = False
        self._destroyed_layer = False
        self.boots = 0
        self.last_state: str | None = None
        self.last_failed_units: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Container":
        try:
            self.prepare()
            if self._autoboot:
                self.boot()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()

    def __hash__(self) -> int:
        return id(self)

    def prepare(self) -> None:
        """Create the container's own root (overlay mount or copy)."""
        if self._prepared:
            return
        _install_cleanup_handlers()
        _sweep_stale_containers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.dir.mkdir(parents=True)
        self._write_owner()
        lowers = ":".join(str(p) for p in self.layers)
        if self.mode == "overlay":
            for sub in ("upper", "work", "root"):
                (self.dir / sub).mkdir()
            opts = f"lowerdir={lowers},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}"
            r = _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.path)], check=False)
            if r.returncode != 0:  # e.g. the cache is on a file system overlay refuses
                self.mode = "copy"
                for sub in ("upper", "work", "root"):
                    (self.dir / sub).rmdir()
        if self.mode == "copy":
            if len(self.layers) == 1:
                _run(["cp", "-a", "--reflink=auto", str(self.layers[0]), str(self.path)],
                     timeout=900)
            else:  # flatten the layers through a read-only overlay
                flat = self.dir / "flat"
                flat.mkdir()
                _run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowers}", str(flat)])
                try:
                    _run(["cp", "-a", "--reflink=auto", str(flat), str(self.path)], timeout=900)
                finally:
                    _umount_all_under(flat)
                    flat.rmdir()
        self._prepared = True

    def _take_layer(self, dest: Path) -> None:
        """Move what this container changed (or, in copy mode, its whole tree) to dest.

        Only for a powered-off container; it cannot be booted again afterwards.
        """
        if self.booted:
            raise HarnessError("power off before taking the layer")
        _umount_all_under(self.path)
        src = self.dir / "upper" if self.mode == "overlay" else self.path
        try:
            os.rename(src, dest)
        except OSError:  # another file system: cp -a keeps whiteouts and xattrs
            _run(["cp", "-a", str(src), str(dest)], timeout=900)
        self._destroyed_layer = True

    def _write_owner(self) -> None:
        owner = {"owner_pid": os.getpid(), "owner_start": _proc_start_time(os.getpid())}
        if self._nspawn is not None and self._nspawn.poll() is None:
            owner["nspawn_pid"] = self._nspawn.pid
            owner["nspawn_start"] = _proc_start_time(self._nspawn.pid)
        tmp = self.dir / "owner.json.tmp"
        tmp.write_text(json.dumps(owner))
        os.replace(tmp, self.dir / "owner.json")

    @property
    def booted(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    @property
    def pid(self) -> int:
        """Host PID of the container's PID 1 (its systemd)."""
        if not self.booted or self._pid is None:
            raise HarnessError(f"{self.name} is not booted")
        return self._pid

    @property
    def log_path(self) -> Path:
        return self.dir / f"nspawn-{self.boots}.log"

    def boot(self, timeout: float | None = None) -> str:
        """Boot the root and wait until systemd says running or degraded; return that state.

        Degraded is reported (failed units in self.last_failed_units and on
        stderr) but accepted unless require_running=True was given.
        """
        self.prepare()
        if self.booted:
            raise HarnessError(f"{self.name} is already booted")
        if self._destroyed_layer:
            raise HarnessError(f"{self.name} gave its layer away")
        timeout = timeout or self.boot_timeout
        self.boots += 1
        policy = self.path / str(POLICY_RC_D).lstrip("/")
        if policy.exists() and policy.read_text() == POLICY_RC_D_TEXT:
            policy.unlink()  # ours, left by an interrupted chroot_run
        argv = [
            "systemd-nspawn", "-D", str(self.path), "--boot", "--register=no", "--keep-unit",
            "--console=passive", "--private-network", f"--machine={self.name}",
        ]
        with open(self.log_path, "wb") as logf:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=_host_env(UNIFIED_CGROUP_ENV if self.unified_cgroup else None),
                start_new_session=True,
            )
        self._pid = None
        self._write_owner()
        deadline = time.monotonic() + timeout
        try:
            self._pid = self._find_init(deadline)
            state = self._wait_running(deadline)
        except BaseException:
            self._kill_now()
            raise
        self.last_state = state
        self.last_failed_units = []
        if state == "degraded":
            self.last_failed_units = self.failed_units()
            print(f"harness: {self.name} booted degraded; failed units: "
                  f"{', '.join(self.last_failed_units)}", file=sys.stderr)
            if self.require_running:
                detail = self.run(["systemctl", "status", "--no-pager", "--failed"], check=False)
                self._kill_now()
                raise BootFailed(f"{self.name} booted degraded: {self.last_failed_units}\n"
                                 f"{_tail(detail.stdout)}")
        return state

    def _nspawn_log(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def _find_init(self, deadline: float) -> int:
        """The container's PID 1 is the child of nspawn in another PID namespace."""
        assert self._nspawn is not None
        my_ns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise BootFailed(f"systemd-nspawn exited {self._nspawn.returncode} while booting "
                                 f"{self.name}:\n{self._nspawn_log()}")
            for child in _children(self._nspawn.pid):
                try:
                    if os.readlink(f"/proc/{child}/ns/pid") != my_ns:
                        return child
                except OSError:
                    pass
            time.sleep(0.05)
        raise BootFailed(f"no container init under nspawn for {self.name}:\n{self._nspawn_log()}")

    def _wait_running(self, deadline: float) -> str:
        state = ""
        while time.monotonic() < deadline:
            if self._nspawn is None or self._nspawn.poll() is not None:
                raise BootFailed(f"container {self.name} exited while booting:\n{self._nspawn_log()}")
            left = max(1.0, deadline - time.monotonic())
            try:
                r = self._nsenter(["systemctl", "is-system-running", "--wait"],
                                  check=False, timeout=left)
            except CommandTimeout:
                break
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if state in ("stopping", "offline") or "Failed to connect" in r.stderr or not state:
                time.sleep(0.2)
                continue
            time.sleep(0.2)
        diag = ""
        if self.booted:
            jobs = self._nsenter(["systemctl", "list-jobs", "--no-pager"], check=False, timeout=10)
            diag = jobs.stdout
        raise BootFailed(f"{self.name} did not reach running within the timeout "
                         f"(last state {state!r}):\n{diag}\n{self._nspawn_log()}")

    def failed_units(self) -> list[str]:
        r = self.run(["systemctl", "list-units", "--failed", "--no-legend", "--plain", "--no-pager"],
                     check=False)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    def poweroff(self, timeout: float = POWEROFF_TIMEOUT) -> int | None:
        """Shut the container down cleanly; kill it if it takes longer than timeout.

        Returns nspawn's exit code (0 for a clean poweroff), None if not booted.
        """
        if self._nspawn is None:
            return None
        if self._nspawn.poll() is None and self._pid is not None:
            try:
                self._nsenter(["systemctl", "poweroff"], check=False, timeout=30)
            except CommandTimeout:
                pass
            try:
                self._nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"harness: {self.name} did not power off in {timeout} s, killing it",
                      file=sys.stderr)
        return self._kill_now()

    def _kill_now(self) -> int | None:
        """Make sure nspawn and everything in the container are gone."""
        proc = self._nspawn
        if proc is None:
            return None
        if proc.poll() is None:
            # Killing the container's PID 1 takes its whole PID namespace with it.
            if self._pid is not None and self._pid in _children(proc.pid):
                _kill(self._pid)
            else:
                for child in _children(proc.pid):
                    _kill(child)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.wait(timeout=15)
        self._pid = None
        self._write_owner_safe()
        return proc.returncode

    def _write_owner_safe(self) -> None:
        try:
            self._write_owner()
        except OSError:
            pass

    def reboot(self, timeout: float | None = None) -> str:
        """Power off and boot the same root again."""
        self.poweroff()
        return self.boot(timeout)

    def destroy(self, timeout: float = POWEROFF_TIMEOUT) -> None:
        """Power off, unmount and delete the container.  Safe to call more than once."""
        if self._destroyed:
            return
        try:
            if self.booted:
                self.poweroff(timeout=timeout)
            self._kill_now()
        finally:
            if self.dir.exists():
                _safe_rmtree(self.dir)
            self._destroyed = True
            with _LIVE_LOCK:
                _LIVE.discard(self)

    # -- commands ----------------------------------------------------------

    def _nsenter(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 **kw: Any) -> subprocess.CompletedProcess:
        if self._pid is None:
            raise HarnessError(f"{self.name} is not booted")
        if self._nspawn is not None and self._nspawn.poll() is not None:
            raise BootFailed(f"{self.name} stopped on its own (nspawn exited "
                             f"{self._nspawn.returncode}):\n{self._nspawn_log()}")
        full = ["nsenter", "-t", str(self._pid), "-a", "--", *_guest_env_argv(env), *argv]
        return _run(full, **kw)

    def run(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float | None = RUN_TIMEOUT,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run cmd inside the booted container (a string goes to /bin/sh -c).

        The environment is PATH, LANG=C.UTF-8, HOME, TERM=dumb and
        DEBIAN_FRONTEND=noninteractive plus env; nothing of the caller's.
        A command must not leave a background process holding its output
        open (start daemons through systemctl).
        """
        argv = _as_argv(cmd)
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        return self._nsenter(argv, env=env, check=check, input=input, timeout=timeout, text=text)

    def chroot_run(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float | None = RUN_TIMEOUT,
        *,
        env: Mapping[str, str] | None = None,
        network: bool = False,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run cmd chrooted in the unbooted root, as an image builder would.

        A policy-rc.d that refuses service starts is in place for the call
        (and removed afterwards, before any boot); no systemd runs.
        """
        self.prepare()
        if self.booted:
            raise HarnessError(f"{self.name} is booted: use run(), or poweroff() first")
        policy = self.path / str(POLICY_RC_D).lstrip("/")
        ours = not policy.exists()
        if ours:
            policy.write_text(POLICY_RC_D_TEXT)
            policy.chmod(0o755)
        try:
            return _chroot_exec(self.path, cmd, network=network, input=input, timeout=timeout,
                                check=check, env=env, text=text)
        finally:
            if ours:
                policy.unlink(missing_ok=True)

    def exec(self, cmd: str | Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """run() when booted, chroot_run() otherwise."""
        return self.run(cmd, **kw) if self.booted else self.chroot_run(cmd, **kw)

    # -- files -------------------------------------------------------------

    def copy_in(self, host_path: str | os.PathLike[str], container_path: str,
                mode: int | None = None) -> None:
        """Copy a file or directory tree into the container, owned by root.

        Goes through tar inside the container (booted or not), so paths resolve
        the way the container sees them (/run is the container's tmpfs, a
        symlink points inside the container).
        """
        src = Path(host_path)
        dest = PurePosixPath(container_path)

        def as_root(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if mode is not None and ti.name == dest.name:
                ti.mode = mode
            return ti

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.add(str(src), arcname=dest.name, filter=as_root)
        script = 'mkdir -p "$1" && tar -x -f - -C "$1"'
        self.exec(["/bin/sh", "-c", script, "sh", str(dest.parent)], input=buf.getvalue())

    def write_file(self, container_path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write content to a file inside the container (parents created)."""
        data = content.encode() if isinstance(content, str) else content
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        self.exec(["/bin/sh", "-c", script, "sh", container_path, f"{mode:o}"], input=data)

    def read_file(self, container_path: str) -> str:
        return self.exec(["cat", "--", container_path]).stdout

    def exists(self, container_path: str) -> bool:
        return self.exec(["test", "-e", container_path], check=False).returncode == 0

    # -- packages ----------------------------------------------------------

    def install_debs(self, paths: Iterable[str | os.PathLike[str]],
                     preseed: str | None = None,
                     timeout: float = 900.0,
                     env: Mapping[str, str] | None = None,
                     unsafe_io: bool = True) -> subprocess.CompletedProcess:
        """Install .deb files with dpkg -i, offline.

        Dependencies must already be in the root (ROOT_PACKAGES): there is no
        network inside.  If dpkg reports unmet dependencies, MissingDependencies
        names them.  preseed is debconf-set-selections input applied first;
        env is added to dpkg's environment (maintainer scripts see it).
        unsafe_io skips dpkg's fsync of every unpacked file (it halves the
        install time of a venv package; the container is shut down cleanly, so
        nothing is lost), as build chroots do.
        Booted: maintainer scripts see systemd.  Unbooted: image-build mode.
        """
        debs = [Path(p) for p in paths]
        if not debs:
            raise ValueError("no packages given")
        for p in debs:
            if not p.is_file():
                raise HarnessError(f"no such package file: {p}")
        if preseed:
            self.exec(["debconf-set-selections"], input=preseed)
        inside = []
        for p in debs:
            target = str(CONTAINER_DEB_DIR / p.name)
            self.copy_in(p, target)
            inside.append(target)
        dpkg = ["dpkg", "--force-unsafe-io"] if unsafe_io else ["dpkg"]
        r = self.exec([*dpkg, "-i", *inside], check=False, timeout=timeout, env=env)
        if r.returncode != 0:
            out = r.stdout + r.stderr
            missing = sorted(set(re.findall(r"depends on ([^;]+?);\s*however", out)))
            if missing or "dependency problems" in out:
                raise MissingDependencies(missing, out)
            raise CommandFailed(r.returncode, r.args, r.stdout, r.stderr)
        self.exec(["rm", "-rf", str(CONTAINER_DEB_DIR)])
        return r

    # -- diagnostics -------------------------------------------------------

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-n", str(lines)]
        if unit:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def wait_until(self, cmd: str | Sequence[str], timeout: float = 60.0,
                   interval: float = 0.3) -> subprocess.CompletedProcess:
        """Run cmd until it succeeds; raise with its last output after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(cmd, check=False, timeout=max(5.0, timeout))
            if r.returncode == 0:
                return r
            if time.monotonic() > deadline:
                raise CommandFailed(r.returncode, r.args, r.stdout, r.stderr)
            time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP inside the container


@dataclasses.dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_curl_i(raw: bytes) -> HttpResponse:
    rest = raw
    while True:
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            raise HttpError(f"no HTTP response in curl output: {_tail(raw, 500)}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200 and body.startswith(b"HTTP/"):
            rest = body
            continue
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return HttpResponse(status, headers, body)


def http(
    container: Container,
    target: str,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    client_ip: str = "127.0.0.1",
    timeout: float = 60.0,
) -> HttpResponse:
    """One HTTP request made by curl inside the container.

    target is a UNIX socket path (e.g. /run/matrix-synapse/main.sock) or a base
    URL (http://127.0.0.1:8008).  X-Forwarded-For is always sent: Synapse's
    rate limiter fails on socket requests without it.  A dict or list body is
    sent as JSON.  Any HTTP status is returned; transport errors raise HttpError.
    """
    argv = ["curl", "-sS", "-i", "--globoff", "--path-as-is", "--max-time", str(int(timeout)),
            "-X", method, "-H", f"X-Forwarded-For: {client_ip}"]
    hdrs = dict(headers or {})
    data: bytes | None = None
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
        argv += ["--data-binary", "@-"]
    for k, v in hdrs.items():
        argv += ["-H", f"{k}: {v}"]
    if target.startswith(("http://", "https://")):
        url = target.rstrip("/") + path
    else:
        argv += ["--unix-socket", target]
        url = "http://localhost" + path
    argv.append(url)
    r = container.run(argv, check=False, input=data, timeout=timeout + 10, text=False)
    if r.returncode != 0:
        raise HttpError(f"curl {method} {url} via {target} failed ({r.returncode}): "
                        f"{r.stderr.decode(errors='replace').strip()}")
    return _parse_curl_i(r.stdout)


def http_unix(container: Container, socket_path: str, method: str, path: str,
              body: Any = None, headers: Mapping[str, str] | None = None,
              **kw: Any) -> HttpResponse:
    """http() over a UNIX socket inside the container."""
    if socket_path.startswith(("http://", "https://")):
        raise ValueError("http_unix wants a socket path; use http() for URLs")
    return http(container, socket_path, method, path, body, headers, **kw)


def wait_for_http(container: Container, target: str, path: str = "/health",
                  timeout: float = 60.0, expect: int = 200) -> HttpResponse:
    """Poll until the endpoint answers with status `expect`."""
    deadline = time.monotonic() + timeout
    last: str = ""
    while time.monotonic() < deadline:
        try:
            r = http(container, target, "GET", path, timeout=10)
            if r.status == expect:
                return r
            last = f"status {r.status}: {r.text[:200]}"
        except HttpError as e:
            last = str(e)
        time.sleep(0.3)
    raise HttpError(f"{target}{path} did not answer {expect} within {timeout} s: {last}")


# --------------------------------------------------------------------------
# Synapse helpers

_SYNAPSE_SETUP_PY = r"""
import glob, json, re, sys, yaml
args = json.load(sys.stdin)
hs = "/etc/matrix-synapse/homeserver.yaml"
text = open(hs).read()

def drop_key(text, key):
    # Remove a top-level block: its line and the indented/blank lines under it.
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"%s\s*:" % re.escape(key), line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0] in " \t"):
            continue
        skipping = False
        out.append(line)
    return "".join(out)

MARK = "# Set by the matrix-synapse-workers booted tests.\n"
for key in args["settings"]:
    text = drop_key(text, key)
text = text.replace(MARK, "").rstrip("\n") + "\n\n" + MARK
text += yaml.safe_dump(args["settings"], default_flow_style=False, sort_keys=False)

# server_name lives where the admin (or debconf) put it: a conf.d file, else here.
name = args["server_name"]
holders = [p for p in sorted(glob.glob("/etc/matrix-synapse/conf.d/*.yaml"))
           if re.search(r"(?m)^server_name\s*:", open(p).read())]
for p in holders:
    body = re.sub(r"(?m)^server_name\s*:.*$", "server_name: %s" % json.dumps(name), open(p).read())
    open(p, "w").write(body)
if not holders:
    text = drop_key(text, "server_name").rstrip("\n") + "\nserver_name: %s\n" % json.dumps(name)

loaded = yaml.safe_load(text)
for k, v in args["settings"].items():
    assert loaded[k] == v, k
tmp = hs + ".msw-test"
open(tmp, "w").write(text)
import os, shutil
st = os.stat(hs)
os.chown(tmp, st.st_uid, st.st_gid)
os.chmod(tmp, st.st_mode & 0o7777)
os.replace(tmp, hs)
"""


def synapse_settings(shared_secret: str = TEST_SHARED_SECRET) -> dict[str, Any]:
    """Top-level homeserver.yaml keys synapse_setup() writes."""
    lots = {"per_second": 1000, "burst_count": 1000}
    return {
        "database": {
            "name": "psycopg2",
            "args": {
                "user": DB_USER,
                "password": DB_PASSWORD,
                "dbname": DB_NAME,
                "host": PG_SOCKET_DIR,
                "cp_min": 1,
                "cp_max": 5,
            },
        },
        "registration_shared_secret": shared_secret,
        # Password hashing at the default cost takes a noticeable share of 2 cores.
        "bcrypt_rounds": 4,
        # Tests log in many users from one address (the proxy's).
        "rc_login": {"address": lots, "account": lots, "failed_attempts": lots},
        "rc_registration": lots,
        "rc_message": lots,
        "rc_joins": {"local": lots, "remote": lots},
    }


def install_standin_synapse(c: Container, deb: Path, server_name: str) -> None:
    """Install the stand-in, switch it to PostgreSQL as an admin would, wait for /health.

    Here, not in conftest.py, so that scripts/bench builds the same layer without pytest.
    """
    from booted_config import STANDIN_MAIN_URL
    c.install_debs([deb], preseed=f"matrix-synapse-py3 matrix-synapse/server-name string {server_name}\n")
    synapse_setup(c, server_name)
    wait_for_http(c, STANDIN_MAIN_URL, "/health")


def synapse_setup(container: Container, server_name: str, *,
                  shared_secret: str = TEST_SHARED_SECRET, restart: bool = True) -> None:
    """Configure an installed Synapse for the tests, as an admin would.

    Replaces the database, registration_shared_secret and rate-limit blocks
    of /etc/matrix-synapse/homeserver.yaml (keeping the rest of the file as it
    is), sets server_name where it is kept (and in debconf, so a package
    postinst does not put another one back), then restarts
    matrix-synapse.service if it exists and restart is true.
    """
    payload = json.dumps({"settings": synapse_settings(shared_secret), "server_name": server_name})
    container.exec(["python3", "-c", _SYNAPSE_SETUP_PY], input=payload)
    container.exec(["debconf-set-selections"],
                   input=f"matrix-synapse-py3 matrix-synapse/server-name string {server_name}\n")
    if restart and container.booted:
        has_unit = container.run(["systemctl", "cat", "matrix-synapse.service"], check=False)
        if has_unit.returncode == 0:
            r = container.run(["systemctl", "restart", "matrix-synapse.service"], check=False,
                              timeout=180)
            if r.returncode != 0:
                raise CommandFailed(r.returncode, r.args, r.stdout,
                                    r.stderr + "\n" + container.journal("matrix-synapse.service"))


def registration_mac(shared_secret: str, nonce: str, user: str, password: str,
                     admin: bool) -> str:
    """HMAC-SHA1 over nonce NUL user NUL password NUL admin|notadmin (Synapse's admin API)."""
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(),
                             b"admin" if admin else b"notadmin"]))
    return mac.hexdigest()


def register_user(container: Container, socket_or_url: str, user: str, password: str,
                  admin: bool = False, *, shared_secret: str = TEST_SHARED_SECRET,
                  client_ip: str = "127.0.0.1") -> dict[str, Any]:
    """Register a user through /_synapse/admin/v1/register; return Synapse's JSON
    (user_id, access_token, device_id...)."""
    endpoint = "/_synapse/admin/v1/register"
    r = http(container, socket_or_url, "GET", endpoint, client_ip=client_ip)
    if r.status != 200:
        raise HttpError(f"GET {endpoint}: {r.status} {r.text[:500]}")
    nonce = r.json()["nonce"]
    body = {
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": admin,
        "mac": registration_mac(shared_secret, nonce, user, password, admin),
    }
    r = http(container, socket_or_url, "POST", endpoint, body, client_ip=client_ip)
    if r.status != 200:
        raise HttpError(f"POST {endpoint} for {user}: {r.status} {r.text[:500]}")
    return r.json()


def login(container: Container, socket_or_url: str, user: str, password: str,
          *, client_ip: str = "127.0.0.1") -> dict[str, Any]:
    """Password login via /_matrix/client/v3/login; return Synapse's JSON."""
    body = {"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password}
    r = http(container, socket_or_url, "POST", "/_matrix/client/v3/login", body,
             client_ip=client_ip)
    if r.status != 200:
        raise HttpError(f"login {user}: {r.status} {r.text[:500]}")
    return r.json()


def psql(container: Container, sql: str, *, user: str = DB_USER,
         password: str | None = DB_PASSWORD, database: str = DB_NAME,
         check: bool = True) -> subprocess.CompletedProcess:
    """Run SQL with psql on the local socket of a booted container, as `user`.

    With a password, password authentication (the pg_hba line for synapse);
    with password=None, peer authentication as the OS user of the same name
    (e.g. user="postgres").  Output is unaligned, tuples only.
    """
    argv = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", PG_SOCKET_DIR,
            "-U", user, "-d", database, "-c", sql]
    if password is None:
        return container.run(argv, check=check, user=user)
    return container.run(argv, check=check, env={"PGPASSWORD": password})
