"""Fixtures for the tests of the built .deb.

The .deb comes from ``$MSW_DEB`` when set, otherwise ``scripts/build-deb`` is
run once per session (it installs its own build dependencies with apt-get
when something is missing, which needs root).

A tool these tests need and cannot find skips the test on a developer's
machine but fails it when ``CI`` or ``MSW_REQUIRE_PACKAGE`` is set, so CI
cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from debian.debfile import DebFile

from support.debs import our_deb

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return our_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def deb(deb_path: Path) -> DebFile:
    return DebFile(str(deb_path))


@pytest.fixture(scope="session")
def unpacked(deb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb's files, unpacked by dpkg-deb into a directory."""
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb_path), str(root)], check=True)
    return root


@pytest.fixture(scope="session")
def packaged_paths(unpacked: Path) -> ModuleType:
    """The ``paths`` module as shipped in the .deb (not the one in the tree)."""
    file = unpacked / "usr/lib/python3/dist-packages/matrix_synapse_workers/core/paths.py"
    spec = importlib.util.spec_from_file_location("packaged_paths", file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generator(unpacked: Path) -> Path:
    return unpacked / "usr/lib/systemd/system-generators/matrix-synapse-workers-generator"
