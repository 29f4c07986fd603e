"""The .deb under test: ``$MSW_DEB`` when set, otherwise ``scripts/build-deb`` builds it (one copy
of this rule for the package and chroot tests)."""

from __future__ import annotations

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
