"""Fixtures of the chroot tests: the two .debs and the cached bookworm (and trixie) layers.

The .deb under test is ``$MSW_DEB`` when set, otherwise ``scripts/build-deb``
builds it once per session.  The matrix-synapse-py3 stand-in comes from
``tests/standin/build-standin`` (cached by that script).

Without root or a needed tool the tests are skipped with the reason;
MSW_REQUIRE_CHROOT=1 (scripts/test sets it) or CI turns a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from support.chroot import Chroot, chroot_copy, deps_root, standin_root, sweep_stale_copies
from support.debs import next_version_deb, our_deb

REPO = Path(__file__).resolve().parents[2]
STANDIN_NEW, STANDIN_OLD = "1.163.2", "1.163.1"
BOOKWORM, TRIXIE = "bookworm", "trixie"


def need(condition: bool, reason: str) -> None:
    if condition:
        return
    for flag in ("MSW_REQUIRE_CHROOT", "CI"):
        if os.environ.get(flag):
            pytest.fail(f"{reason} ({flag} is set: the chroot tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chroot_tools() -> None:
    need(os.geteuid() == 0, "the chroot tests need root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "chroot", "mount", "dpkg-deb"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    need(Path("/proc/self/mounts").exists(), "/proc is not mounted")
    sweep_stale_copies()


@pytest.fixture(scope="session")
def ours_deb(chroot_tools) -> Path:
    return our_deb()


@pytest.fixture(scope="session")
def next_deb(ours_deb) -> Path:
    """This tree again, built as the next version (N+1): the upgrade tests' target."""
    return next_version_deb(ours_deb)


def _standin(version: str, out: Path, suite: str | None = None) -> Path:
    done = subprocess.run([str(REPO / "tests/standin/build-standin"), version, str(out),
                           *([suite] if suite else [])],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=False)
    assert done.returncode == 0, f"build-standin {version} failed with exit code {done.returncode}"
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def standin_deb(chroot_tools, tmp_path_factory) -> Path:
    return _standin(STANDIN_NEW, tmp_path_factory.mktemp("standin-new"))


@pytest.fixture(scope="session")
def standin_old_deb(chroot_tools, tmp_path_factory) -> Path:
    return _standin(STANDIN_OLD, tmp_path_factory.mktemp("standin-old"))


@pytest.fixture(scope="session")
def deps_layer(standin_deb) -> Path:
    """bookworm with the dependencies of both packages, nothing of ours or Synapse."""
    return deps_root(standin_deb)


@pytest.fixture(scope="session")
def standin_layer(standin_deb) -> Path:
    """bookworm with the stand-in Synapse installed and set to PostgreSQL."""
    return standin_root(standin_deb)


@pytest.fixture(scope="session")
def trixie_standin_deb(chroot_tools, tmp_path_factory) -> Path:
    """The stand-in built for trixie (its venv on Python 3.13)."""
    return _standin(STANDIN_NEW, tmp_path_factory.mktemp("standin-trixie"), TRIXIE)


@pytest.fixture(scope="session")
def trixie_standin_layer(trixie_standin_deb) -> Path:
    """trixie with the stand-in Synapse installed and set to PostgreSQL."""
    return standin_root(trixie_standin_deb, TRIXIE)


@pytest.fixture(params=[BOOKWORM, TRIXIE])
def release_synapse_host(request) -> Iterator[Chroot]:
    """synapse_host on bookworm, then on trixie: for the few tests that run on both."""
    layer = request.getfixturevalue("standin_layer" if request.param == BOOKWORM else "trixie_standin_layer")
    with chroot_copy(layer) as chroot:
        yield chroot


@pytest.fixture
def trixie_synapse_host(trixie_standin_layer) -> Iterator[Chroot]:
    with chroot_copy(trixie_standin_layer) as chroot:
        yield chroot


@pytest.fixture
def synapse_host(standin_layer) -> Iterator[Chroot]:
    """A private chroot with Synapse (PostgreSQL) installed, ours not yet."""
    with chroot_copy(standin_layer) as chroot:
        yield chroot


@pytest.fixture
def bare_host(deps_layer) -> Iterator[Chroot]:
    """A private chroot with only the dependencies installed."""
    with chroot_copy(deps_layer) as chroot:
        yield chroot


@pytest.fixture(scope="session")
def postgres_bin(chroot_tools) -> Path:
    """The machine's PostgreSQL server binaries, for a throwaway cluster (test_refusals)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    need(bool(found), "PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    return found[-1].parent
