"""The one chroot toolkit: throwaway bookworm (or trixie) roots with real dpkg and debconf.

Used by the maintainer-script tests (tests/chroot) and the stand-in's tests
(tests/standin/test_standin.py).  The pieces: ``run`` and ``chroot_run`` (a
clean environment inside), the Debian mirror this machine's apt uses
(``debian_mirror``, read at run time), ``debootstrap_minbase`` (with a
policy-rc.d that refuses every start and logs what was asked), ``mounted``
(/proc and /dev while a root is used), ``overlay`` (a writable root over
read-only layers), ``chroot_copy`` (a private copy on a tmpfs) and
:class:`Chroot`, the commands the tests run in a root.

The maintainer-script tests use two cached layers under ``$MSW_TEST_CACHE/chroot/`` (default
/var/cache/matrix-synapse-workers-tests), each keyed on everything that makes it:

``deps-KEY``
    ``debootstrap --variant=minbase`` of bookworm (or another release: trixie)
    from the Debian mirror this machine's apt uses (read at run time), a policy-rc.d that refuses every
    start and logs what was asked, and the runtime dependencies of both
    packages (ours and the matrix-synapse-py3 stand-in), so that installing
    the .debs needs no network.
``standin-KEY``
    ``deps`` plus the stand-in installed, and its homeserver.yaml switched
    from SQLite to PostgreSQL (no database runs: nothing starts in a chroot).

Every test gets its own full copy (``cp -a --reflink=auto``) with /proc and
/dev mounted while it runs; the mounts always go, and a copy is only deleted
once nothing is mounted inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from debian import deb822

SUITE = "bookworm"
CACHE = Path(os.environ.get("MSW_TEST_CACHE", "/var/cache/matrix-synapse-workers-tests")) / "chroot"
STALE_SECONDS = 24 * 3600
# Where the per-test copies are mounted (never under pytest's tmp_path, which
# pytest itself deletes with rm -rf in later sessions).
WORK = Path(os.environ.get("MSW_TEST_WORKDIR", "/var/tmp/matrix-synapse-workers-tests")) / "chroot"
COPY_TMPFS_SIZE = "4g"
# Bump when the recipe below changes in a way the key does not see.
RECIPE = "4"
#: Runtime dependencies of matrix-synapse-workers (debian/control), its
#: recommended nginx, and what the tests use inside the chroot.  systemd gives
#: systemctl, which enables units offline; nothing runs it as init here.
BASE_PACKAGES = (
    "python3", "python3-yaml", "python3-jinja2", "python3-debian", "python3-debconf", "python3-redis",
    "adduser", "redis-server", "libpq5", "debconf-utils", "systemd", "nginx",
)
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
POLICY_LOG = "/var/log/policy-rc.d.log"
# Refuse every start/stop/restart, and note what was asked.
POLICY_RC_D = f"""#!/bin/sh
echo "$*" >> {POLICY_LOG}
exit 101
"""
POSTGRES_DATABASE = """database:
  name: psycopg2
  args:
    user: synapse
    password: not-a-real-password
    database: synapse
    host: localhost
    cp_min: 5
    cp_max: 10
"""


class CommandFailed(AssertionError):
    pass


def run(*cmd: str | Path, check: bool = True, input: str | None = None,
        cwd: Path | None = None, timeout: float | None = None,
        stderr: int | None = subprocess.STDOUT) -> subprocess.CompletedProcess[str]:
    """Run a host command; stdout and stderr together in ``.stdout`` (``stderr=None``:
    stderr to the terminal, ``.stdout`` only stdout)."""
    done = subprocess.run([str(c) for c in cmd], input=input, text=True, cwd=cwd, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=stderr,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise CommandFailed(f"{[str(c) for c in cmd]} exited {done.returncode}:\n{done.stdout}")
    return done


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses for suite, else for SUITE (the same
    mirror serves the other releases); deb822 or one-line sources."""
    if suite != SUITE:
        try:
            return _host_mirror(suite)
        except RuntimeError:
            pass
    return _host_mirror(SUITE)


def _host_mirror(suite: str) -> str:
    sources_d = Path("/etc/apt/sources.list.d")
    for sources in sorted(sources_d.glob("*.sources")):
        with open(sources, encoding="utf-8") as handle:
            for para in deb822.Deb822.iter_paragraphs(handle):
                if ("deb" in para.get("Types", "").split() and suite in para.get("Suites", "").split()
                        and para.get("Enabled", "yes") != "no"):
                    return para["URIs"].split()[0]
    for sources in [Path("/etc/apt/sources.list"), *sorted(sources_d.glob("*.list"))]:
        if not sources.exists():
            continue
        for line in sources.read_text(encoding="utf-8").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise RuntimeError(f"this machine's apt has no source for {suite}")


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            target = line.split()[1].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc, /dev and /dev/pts inside ``root`` while the context lasts; always unmounted."""
    done: list[Path] = []
    try:
        for args, target in ((["-t", "proc", "proc"], root / "proc"),
                             (["--bind", "/dev"], root / "dev"),
                             (["--bind", "/dev/pts"], root / "dev/pts")):
            run("mount", *args, target)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", str(target)]).returncode != 0:
                subprocess.run(["umount", "-l", str(target)])


def unmount_below(path: Path) -> None:
    """Unmount whatever is mounted at or below ``path``, deepest first (lazily: a failed
    debootstrap may leave its /proc busy)."""
    for target in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", target])


@contextlib.contextmanager
def overlay(lower: list[Path], top: Path) -> Iterator["Chroot"]:
    """A writable root over read-only ``lower`` layers (first on top), with /proc and /dev;
    its changes in ``top/upper``, kept for the caller to look at or remove."""
    upper, work, merged = top / "upper", top / "work", top / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True)
    run("mount", "-t", "overlay", "msw-overlay", "-o",
        f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}", merged)
    try:
        with mounted(merged):
            yield Chroot(merged)
    finally:
        if subprocess.run(["umount", str(merged)]).returncode != 0:
            subprocess.run(["umount", "-l", str(merged)])


def remove_tree(root: Path) -> None:
    """rm -rf, but never through a mount (a bound /dev would take the host's with it)."""
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"not deleting {root}: still mounted: {left}")
    shutil.rmtree(root, ignore_errors=True)


def chroot_run(root: Path, *cmd: str, env: Mapping[str, str] | None = None, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    variables = [f"{k}={v}" for k, v in {**CHROOT_ENV, **(env or {})}.items()]
    return run("chroot", root, "env", "-i", *variables, *cmd, check=check, input=input)


def deb_depends(deb: Path) -> list[str]:
    """First alternative of every Depends of a .deb, without versions."""
    field = run("dpkg-deb", "--field", deb, "Depends").stdout
    names = []
    for relation in deb822.PkgRelation.parse_relations(field):
        names.append(relation[0]["name"])
    return names


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deb_identity(deb: Path) -> str:
    """A digest of what a .deb installs: its control files (md5sums of every
    file, maintainer scripts, fields), not its bytes, which change with every
    rebuild of the same content."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="msw-deb-control-") as tmp:
        run("dpkg-deb", "--control", deb, tmp)
        for path in sorted(Path(tmp).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _build_layer(final: Path, make) -> Path:
    """Build a cached layer once (under a lock), atomically renamed into place."""
    with locked(final.with_name(final.name + ".lock")):
        if final.is_dir():
            os.utime(final)  # in use: not stale
            return final
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            remove_tree(tmp)
        make(tmp)
        tmp.rename(final)
        _drop_stale(final)
        return final


def _drop_stale(final: Path) -> None:
    """Layers of the same kind with another key, unused for a day, go."""
    kind = final.name.split("-")[0]
    for old in final.parent.glob(f"{kind}-*"):
        if old == final or not old.is_dir() or old.name.endswith(".tmp"):
            continue
        if time.time() - old.stat().st_mtime > STALE_SECONDS:
            remove_tree(old)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


def debootstrap_minbase(target: Path, suite: str, mirror: str) -> None:
    """``debootstrap --variant=minbase`` of suite into target, with our policy-rc.d (every
    start refused and logged) and this machine's resolv.conf for apt."""
    run("debootstrap", "--variant=minbase", suite, target, mirror)
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")


def deps_root(standin_deb: Path, suite: str = SUITE) -> Path:
    """minbase of suite with the runtime dependencies of both packages (standin_deb
    built for that suite)."""
    mirror = debian_mirror(suite)
    extra = sorted(set(deb_depends(standin_deb)) - set(BASE_PACKAGES))
    final = CACHE / f"deps-{_key(RECIPE, suite, mirror, BASE_PACKAGES, extra, POLICY_RC_D)}"

    def make(tmp: Path) -> None:
        debootstrap_minbase(tmp, suite, mirror)
        with mounted(tmp):
            chroot_run(tmp, "apt-get", "update")
            chroot_run(tmp, "apt-get", "install", "-y", "--no-install-recommends",
                       *BASE_PACKAGES, *extra)
            chroot_run(tmp, "apt-get", "clean")
        (tmp / POLICY_LOG.lstrip("/")).unlink(missing_ok=True)

    return _build_layer(final, make)


def standin_root(standin_deb: Path, suite: str = SUITE) -> Path:
    """deps_root plus the stand-in, with a PostgreSQL homeserver configuration."""
    base = deps_root(standin_deb, suite)
    final = CACHE / f"standin-{_key(RECIPE, base.name, deb_identity(standin_deb), POSTGRES_DATABASE)}"

    def make(tmp: Path) -> None:
        run("cp", "-a", "--reflink=auto", base, tmp)
        chroot = Chroot(tmp)
        with mounted(tmp):
            # As an image builder answers Synapse's own question.
            chroot.run("debconf-set-selections",
                       input="matrix-synapse-py3 matrix-synapse/server-name string workers.test\n")
            chroot.apt_install(standin_deb)
        use_postgres(chroot)
        (tmp / POLICY_LOG.lstrip("/")).unlink(missing_ok=True)

    return _build_layer(final, make)


def use_postgres(chroot: "Chroot") -> None:
    """Replace the ``database:`` section of homeserver.yaml with PostgreSQL settings."""
    path = chroot / "/etc/matrix-synapse/homeserver.yaml"
    text = path.read_text()
    new, count = re.subn(r"(?m)^database:\n(?:[ \t]+.*\n|\n)*", POSTGRES_DATABASE + "\n", text)
    assert count == 1, text
    path.write_text(new)


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    owner: tuple[int, int]
    mtime_ns: int
    content: str  # sha256 of a file, target of a link, '' for a directory


class RanAway(AssertionError):
    """An interactive run went on past its bound (time, or questions shown)."""


#: Typed answers that are still asked for after this many more screens than
#: lines were typed, or after this long, are a loop: debconf's teletype
#: frontend re-asks forever once its input runs out (at EOF it keeps the old,
#: invalid value and the postinst asks again).
INTERACTIVE_SLACK = 3
INTERACTIVE_SECONDS = 240
INTERACTIVE_MAX_OUTPUT = 1 << 20


def interactive(argv: list[str], typed: str, *, marker: str, seconds: float = INTERACTIVE_SECONDS,
                slack: int = INTERACTIVE_SLACK) -> str:
    """Run ``argv`` with ``typed`` as its input; return its output.

    Bounded twice: in time, and in how often ``marker`` (the screen a loop
    repeats, e.g. debconf's "Invalid answer") may appear: at most once per
    typed line plus ``slack``.  Past either bound the whole process group is
    killed and the test fails saying which bound and with the output's end.
    """
    limit = typed.count("\n") + slack
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(typed.encode())
    proc.stdin.close()
    out = bytearray()
    deadline = time.monotonic() + seconds
    why = ""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"still running after {seconds:.0f} s"
                break
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                shown = " ".join(out.decode(errors="replace").split()).count(marker)
                if shown > limit:
                    why = (f"{marker!r} shown {shown} times, more than the {typed.count(chr(10))} "
                           f"typed lines can answer (+{slack})")
                    break
                if len(out) > INTERACTIVE_MAX_OUTPUT:
                    why = f"more than {INTERACTIVE_MAX_OUTPUT} bytes of output"
                    break
    finally:
        if why:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.wait()
        if not why:
            # The leader is gone; anything it left in its group goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    if why:
        raise RanAway(f"{' '.join(argv)}: the scripted input ran out ({why}); it was killed. "
                      f"Typed: {typed!r}. Output's end:\n{text[-3000:]}")
    return text


class Chroot:
    """A bookworm root directory and the commands the tests run in it."""

    def __init__(self, path: Path):
        self.path = path

    def __truediv__(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def run(self, *cmd: str, env: Mapping[str, str] | None = None, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return chroot_run(self.path, *cmd, env=env, check=check, input=input)

    def interactive(self, command: str, typed: str, *, env: Mapping[str, str] | None = None,
                    marker: str = "Invalid answer", seconds: float = INTERACTIVE_SECONDS) -> str:
        """``command`` (a shell line) on a terminal (script(1)) with ``typed`` as
        the keyboard; bounded in time and repeats (see ``interactive``)."""
        variables = [f"{k}={v}" for k, v in {**CHROOT_ENV, **(env or {})}.items()]
        return interactive(["chroot", str(self.path), "env", "-i", *variables,
                            "script", "-qec", command, "/dev/null"],
                           typed, marker=marker, seconds=seconds)

    def copy_in(self, deb: Path) -> str:
        inside = f"/tmp/{deb.name}"
        shutil.copyfile(deb, self / inside)
        return inside

    def apt_install(self, *debs: Path, env: Mapping[str, str] | None = None,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
        inside = [self.copy_in(deb) for deb in debs]
        return self.run("apt-get", "install", "-y", "--no-install-recommends", *inside,
                        env=env, check=check)

    def preseed(self, answers: Mapping[str, str]) -> None:
        """debconf-set-selections for our questions; values are typed by question."""
        types = {"preset": "select", "worker-types": "multiselect", "redis": "select",
                 "host-role": "select", "web-server": "select", "allow-public-address": "boolean",
                 "shared-media-store": "boolean", "metrics": "boolean"}
        lines = "".join(
            f"matrix-synapse-workers matrix-synapse-workers/{q} {types.get(q, 'string')} {v}\n"
            for q, v in answers.items())
        self.run("debconf-set-selections", input=lines)

    def answers(self) -> dict[str, str]:
        """Our debconf answers, as debconf-get-selections shows them."""
        out = self.run("debconf-get-selections").stdout
        found = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0] == "matrix-synapse-workers":
                found[parts[1].split("/", 1)[1]] = parts[3] if len(parts) > 3 else ""
        return found

    def status(self, package: str = "matrix-synapse-workers") -> str:
        done = self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package, check=False)
        return done.stdout.strip() if done.returncode == 0 else "not-installed"

    def group_members(self, group: str) -> set[str]:
        done = self.run("getent", "group", group, check=False)
        if done.returncode != 0:
            raise KeyError(group)
        return set(filter(None, done.stdout.strip().split(":")[3].split(",")))

    def has_group(self, group: str) -> bool:
        return self.run("getent", "group", group, check=False).returncode == 0

    def owner(self, path: str) -> tuple[str, str, int]:
        user, group, mode = self.run("stat", "-c", "%U %G %a", path).stdout.split()
        return user, group, int(mode, 8)

    def statoverride(self, path: str) -> str:
        return self.run("dpkg-statoverride", "--list", path, check=False).stdout.strip()

    def policy_log(self) -> list[str]:
        log = self / POLICY_LOG
        return log.read_text().splitlines() if log.exists() else []

    def snapshot(self, *dirs: str) -> dict[str, Entry]:
        """Every entry under ``dirs`` (inside the chroot) with its content and metadata."""
        found: dict[str, Entry] = {}
        for top in dirs:
            start = self / top
            if not os.path.lexists(start):
                continue
            for path in [start, *sorted(start.rglob("*"))]:
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    kind, content = "link", os.readlink(path)
                elif stat.S_ISDIR(st.st_mode):
                    kind, content = "dir", ""
                elif stat.S_ISREG(st.st_mode):
                    kind, content = "file", _file_sha(path)
                else:
                    kind, content = "other", ""
                rel = "/" + str(path.relative_to(self.path))
                found[rel] = Entry(kind, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid),
                                   st.st_mtime_ns, content)
        return found


def sweep_stale_copies() -> None:
    """Unmount and drop the copies of test processes that were killed outright."""
    if not WORK.is_dir():
        return
    for work in WORK.glob("copy-*"):
        match = re.fullmatch(r"copy-(\d+)-\d+", work.name)
        if not match or Path(f"/proc/{match[1]}").exists():
            continue
        for target in sorted(mounts_under(work), key=len, reverse=True):
            if subprocess.run(["umount", target]).returncode != 0:
                subprocess.run(["umount", "-l", target])
        if not mounts_under(work):
            with contextlib.suppress(OSError):
                work.rmdir()


_copies = 0


@contextlib.contextmanager
def chroot_copy(layer: Path) -> Iterator[Chroot]:
    """A private copy of a cached layer, with /proc and /dev, gone afterwards.

    The copy lives on a tmpfs of its own (``cp -a --reflink=auto`` from the
    cache): copying is quick, and deleting it is an unmount, never an
    ``rm -rf`` that could run into the bound /dev.
    """
    global _copies
    _copies += 1
    work = WORK / f"copy-{os.getpid()}-{_copies}"
    work.mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", f"size={COPY_TMPFS_SIZE},mode=0755", "msw-chroot", work)
    try:
        root = work / "root"
        run("cp", "-a", "--reflink=auto", layer, root)
        with mounted(root):
            yield Chroot(root)
    finally:
        if subprocess.run(["umount", str(work)]).returncode != 0:
            subprocess.run(["umount", "-l", str(work)])
        with contextlib.suppress(OSError):
            work.rmdir()


def file_list(chroot: Chroot, skip: Iterable[str]) -> dict[str, str]:
    """What piuparts compares: every path of the system, with a checksum for files.

    ``skip`` are absolute paths (inside the chroot) left out with everything
    below them: mount points and what changes by design (dpkg's and apt's own
    state, logs, caches).
    """
    skipped = {str(chroot / s).rstrip("/") for s in ("/proc", "/dev", "/sys", *skip)}
    result = {}
    for top, dirs, files in os.walk(chroot.path):
        dirs[:] = sorted(d for d in dirs if os.path.join(top, d) not in skipped)
        for name in [*dirs, *files]:
            path = Path(top, name)
            if str(path) in skipped:
                continue
            rel = "/" + str(path.relative_to(chroot.path))
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                result[rel] = _file_sha(path)
            elif stat.S_ISLNK(st.st_mode):
                result[rel] = "-> " + os.readlink(path)
            else:
                result[rel] = "dir" if stat.S_ISDIR(st.st_mode) else "other"
    return result


class Installed:
    """A chroot with the package installed, and what the installation printed."""

    def __init__(self, chroot: Chroot, output: str):
        self.chroot = chroot
        self.output = output
