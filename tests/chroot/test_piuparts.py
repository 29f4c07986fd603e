"""piuparts, Debian's own install/upgrade/purge tester, on this package.

One piuparts run per kept release (tests/releases/), two of its tests:
install and purge of this tree (built as a version newer than every release,
see support/debs.upgrade_target), and the upgrade from that release (offered
by a local apt repository) to this tree, then purge.  piuparts
starts from a copy of a cached layer (``--existing-chroot``): the ``standin``
layer (bookworm, every dependency installed, the matrix-synapse-py3 stand-in)
with the PostgreSQL settings in ``conf.d/database.yaml`` and the stand-in's
homeserver.yaml as shipped, since piuparts' debsums check fails on any
changed conffile, even one changed before the test.  So it judges only what
our package does, and fails on files left after purge, on a maintainer script
that fails, and on processes left running.

The log is kept under ``$MSW_TEST_CACHE/piuparts/`` (default
/var/cache/matrix-synapse-workers-tests/piuparts/), named after the version
tested; the test prints its path.  About two minutes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.debs import deb_version, upgrade_sources
from support.require import need
from support.chroot import (CACHE, POSTGRES_DATABASE, SUITE, WORK, _build_layer, _key, debian_mirror,
                            deb_identity, run)

LOGS = CACHE.parent / "piuparts"


def local_repository(directory: Path, *debs: Path) -> str:
    """A flat apt repository of ``debs``; the sources line that reaches it."""
    directory.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copyfile(deb, directory / deb.name)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=directory,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              check=True).stdout
    (directory / "Packages").write_text(packages)
    return f"deb [trusted=yes] file://{directory} ./"


@pytest.fixture(scope="module")
def piuparts_layer(standin_layer: Path, standin_deb: Path) -> Path:
    """The standin layer with its homeserver.yaml as packaged; the database in conf.d."""
    final = CACHE / f"piuparts-{_key(standin_layer.name, deb_identity(standin_deb), POSTGRES_DATABASE)}"

    def make(tmp: Path) -> None:
        run("cp", "-a", "--reflink=auto", standin_layer, tmp)
        packaged = subprocess.run(
            f"dpkg-deb --fsys-tarfile '{standin_deb}' | tar -xOf - ./etc/matrix-synapse/homeserver.yaml",
            shell=True, stdout=subprocess.PIPE, check=True).stdout
        assert b"database:" in packaged
        (tmp / "etc/matrix-synapse/homeserver.yaml").write_bytes(packaged)
        (tmp / "etc/matrix-synapse/conf.d/database.yaml").write_text(POSTGRES_DATABASE)

    return _build_layer(final, make)


@pytest.fixture(scope="module")
def piuparts_tool(chroot_tools) -> str:
    tool = shutil.which("piuparts")
    need(tool is not None, "piuparts is not installed (apt-get install piuparts)", "MSW_REQUIRE_CHROOT")
    need(shutil.which("dpkg-scanpackages") is not None, "dpkg-scanpackages is not installed (dpkg-dev)",
         "MSW_REQUIRE_CHROOT")
    return tool


@pytest.mark.parametrize("release", upgrade_sources(), ids=lambda deb: deb_version(deb))
def test_piuparts_install_purge_and_upgrade_from_a_release(piuparts_tool, piuparts_layer, release, upgrade_deb):
    version = deb_version(upgrade_deb)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"matrix-synapse-workers_{deb_version(release)}_to_{version}.log"
    log.unlink(missing_ok=True)
    # The repository is bind-mounted at the same path inside piuparts' chroot.
    WORK.mkdir(parents=True, exist_ok=True)
    repo = Path(subprocess.run(["mktemp", "-d", f"{WORK}/piuparts-repo.XXXXXX"], check=True,
                               capture_output=True, text=True).stdout.strip())
    scratch = Path(subprocess.run(["mktemp", "-d", f"{WORK}/piuparts-tmp.XXXXXX"], check=True,
                                  capture_output=True, text=True).stdout.strip())
    try:
        line = local_repository(repo, release)
        done = run(piuparts_tool,
                   "--existing-chroot", piuparts_layer, "--skip-minimize",
                   "--distribution", SUITE, "--mirror", debian_mirror(),
                   "--extra-repo", line, "--bindmount", repo,
                   "--tmpdir", scratch, "--log-file", log,
                   upgrade_deb, check=False)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"piuparts log: {log}")
    text = log.read_text(errors="replace") if log.exists() else done.stdout
    assert done.returncode == 0, f"piuparts failed (log: {log}):\n{text[-6000:]}"
    # Both tests ran: the upgrade is skipped silently when apt does not know version N.
    assert "PASS: Installation and purging test." in text, text[-3000:]
    assert "PASS: Installation, upgrade and purging tests." in text, text[-3000:]
