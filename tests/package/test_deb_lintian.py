"""lintian has no error and no warning about the .deb, on bookworm and on trixie.

The package is built once, on bookworm.  Trixie's lintian (2.122, run in a
trixie chroot: harness.ensure_suite_root) checks the same .deb and the source
package built beside it (dist/*.dsc), so the Standards-Version and every other
tag are judged by both releases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from package_helpers import require_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "booted"))
import harness  # noqa: E402  (tests/booted/harness.py)

# Standards-Version of debian/control: the newest bookworm's lintian knows.  4.7.2
# (trixie's) would make bookworm's lintian warn newer-standards-version; trixie's
# lintian reports 4.6.2 as out-of-date-standards-version, an info tag only.
STANDARDS_VERSION = "4.6.2"
TRIXIE_LINTIAN_FLAGS = ["--display-info", "--tag-display-limit", "0"]


def bad_tags(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:2] in ("E:", "W:")]


def test_lintian_clean(deb_path: Path) -> None:
    lintian = require_tool("lintian")
    done = subprocess.run([lintian, "--display-info", "--tag-display-limit", "0", str(deb_path)],
                          capture_output=True, text=True, check=False)
    tags = bad_tags(done.stdout)
    assert not tags, done.stdout
    # lintian's own failures (not tags) exit 2 or more.
    assert done.returncode in (0, 1), done.stdout + done.stderr


def source_package(deb_path: Path) -> list[Path]:
    """The .dsc built with deb_path (scripts/build-deb puts it in dist/) and the files it names."""
    version = deb_path.name.split("_")[1]
    for where in (deb_path.parent, Path(__file__).resolve().parents[2] / "dist"):
        dsc = where / f"matrix-synapse-workers_{version}.dsc"
        if dsc.is_file():
            return [dsc, *sorted(where.glob(f"matrix-synapse-workers_{version}.tar.*"))]
    pytest.fail(f"no matrix-synapse-workers_{version}.dsc beside {deb_path} or in dist/ "
                "(scripts/build-deb writes it)", pytrace=False)


def test_standards_version_is_the_one_both_lintians_accept() -> None:
    control = (Path(__file__).resolve().parents[2] / "debian/control").read_text()
    assert f"\nStandards-Version: {STANDARDS_VERSION}\n" in control


def test_trixie_lintian_clean(deb_path: Path) -> None:
    try:
        root = harness.ensure_suite_root("trixie", ("lintian",))
    except harness.HarnessUnavailable as e:
        if os.environ.get("MSW_REQUIRE_PACKAGE") or os.environ.get("CI"):
            pytest.fail(f"cannot make a trixie chroot: {e}")
        pytest.skip(f"cannot make a trixie chroot: {e}")
    files = [deb_path, *source_package(deb_path)]
    with harness.Container(root, name="trixie-lintian", boot=False) as c:
        for f in files:
            c.copy_in(f, f"/srv/{f.name}")
        assert c.chroot_run(["lintian", "--version"]).stdout.startswith("Lintian v2.1")
        done = c.chroot_run(["lintian", *TRIXIE_LINTIAN_FLAGS, f"/srv/{deb_path.name}",
                             f"/srv/{files[1].name}"], check=False)
    print(done.stdout)
    assert not bad_tags(done.stdout), done.stdout
    assert done.returncode in (0, 1), done.stdout + done.stderr
