"""The .deb under test: ``$MSW_DEB`` when set, otherwise ``scripts/build-deb`` builds it (one copy
of this rule for the package and chroot tests); and the released .debs kept in tests/releases/,
which the upgrade tests start from."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "scripts" / "build-deb"


def our_deb(copy_to: Path | None = None) -> Path:
    """The package's .deb; with ``copy_to``, a copy there (another build may replace dist/*.deb
    while the tests run)."""
    given = os.environ.get("MSW_DEB")
    if given:
        path = Path(given)
        assert path.is_file(), f"MSW_DEB={given} is not a file"
        return path
    done = subprocess.run(["bash", str(BUILD_DEB)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, check=False)
    assert done.returncode == 0, f"scripts/build-deb failed with exit code {done.returncode}"
    lines = done.stdout.strip().splitlines()
    assert lines, "scripts/build-deb printed no .deb path"
    path = Path(lines[-1])
    assert path.is_file(), f"scripts/build-deb printed {path}, which does not exist"
    if copy_to is None:
        return path
    copy = copy_to / path.name
    shutil.copy2(path, copy)
    return copy


def next_version_deb(deb: Path) -> Path:
    """This tree built again as the version after ``deb``'s (``V+1``): the target of the tests of
    our own upgrade N -> N+1 (``scripts/build-deb --version``; nothing but the version differs)."""
    version = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], text=True,
                             stdout=subprocess.PIPE, check=True).stdout.strip()
    done = subprocess.run(["bash", str(BUILD_DEB), "--version", f"{version}+1"],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=False)
    assert done.returncode == 0, f"scripts/build-deb --version failed with exit code {done.returncode}"
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path


# --- the released .debs, kept as test inputs ------------------------------------------

RELEASES = REPO / "tests" / "releases"
SUMS = RELEASES / "SHA256SUMS"


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], text=True,
                          stdout=subprocess.PIPE, check=True).stdout.strip()


def version_newer(a: str, b: str) -> bool:
    """Whether Debian version ``a`` sorts after ``b`` (dpkg's own comparison)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def kept_releases() -> list[Path]:
    """Every released .deb kept in tests/releases/, oldest first, each checked against
    SHA256SUMS (a file changed or missing fails, as does one not listed there)."""
    listed = {}
    for line in SUMS.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    on_disk = {p.name for p in RELEASES.glob("*.deb")}
    assert on_disk == set(listed), f"tests/releases/: .debs {sorted(on_disk)}, SHA256SUMS lists {sorted(listed)}"
    debs = []
    for name, digest in listed.items():
        path = RELEASES / name
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        assert found == digest, f"{path} does not match SHA256SUMS ({found})"
        debs.append(path)
    order = sorted(debs, key=functools.cmp_to_key(
        lambda a, b: 1 if version_newer(deb_version(a), deb_version(b)) else -1))
    return order


def upgrade_sources() -> list[Path]:
    """The releases the upgrade tests start from: the newest (what admins run), or with
    MSW_UPGRADE_FROM_EVERY_RELEASE=1 every kept one (each costs a booted upgrade and a
    piuparts run: CI, with its 60-minute budget, starts from the newest only)."""
    releases = kept_releases()
    if os.environ.get("MSW_UPGRADE_FROM_EVERY_RELEASE") == "1":
        return releases
    return releases[-1:]


def upgrade_target(tree_deb: Path) -> Path:
    """What every kept release upgrades to: the tree's .deb when its version is newer than
    every release's; otherwise (the tree of a release commit) the tree built as that version
    +1 (:func:`next_version_deb`)."""
    releases = kept_releases()
    if all(version_newer(deb_version(tree_deb), deb_version(r)) for r in releases):
        return tree_deb
    return next_version_deb(tree_deb)
