"""Fixtures for the booted tests: a cached bookworm root and throwaway containers.

Every test here needs root, systemd-nspawn and debootstrap (installed on
demand).  Where they cannot be had the tests skip, unless MSW_REQUIRE_BOOTED=1
(CI sets it): then that is a failure, so a green CI always means they ran.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path
from typing import Iterator

import pytest

import harness

from booted_config import SERVER_NAME, STANDIN_MAIN_URL, STANDIN_VERSION, container_name


def require_booted() -> bool:
    return os.environ.get("MSW_REQUIRE_BOOTED") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail when the environment says booted tests must run."""
    if require_booted():
        pytest.fail(f"MSW_REQUIRE_BOOTED=1 but booted tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "booted: boots a systemd-nspawn container (needs root)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.booted)


@pytest.fixture(scope="session")
def booted_host() -> None:
    """The machine can build and boot roots (tools installed if missing)."""
    try:
        harness.check_host()
    except harness.HarnessUnavailable as e:
        unavailable(str(e))


@pytest.fixture(scope="session")
def base_root(booted_host: None) -> Path:
    """The cached bookworm root (built on first use, about 3 minutes)."""
    return harness.ensure_base_root()


def _name_for(request: pytest.FixtureRequest) -> str:
    return container_name(request.node.name)


@pytest.fixture
def container(base_root: Path, request: pytest.FixtureRequest) -> Iterator[harness.Container]:
    """A booted throwaway container, destroyed after the test."""
    with harness.Container(base_root, name=_name_for(request)) as c:
        yield c


@pytest.fixture
def unbooted(base_root: Path, request: pytest.FixtureRequest) -> Iterator[harness.Container]:
    """A prepared but unbooted container, for image-build (chroot) scenarios."""
    with harness.Container(base_root, name=_name_for(request), boot=False) as c:
        yield c


@pytest.fixture(scope="session")
def standin_deb(booted_host: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in matrix-synapse-py3 .deb, built by tests/standin/build-standin."""
    from support.standin import build_standin
    return build_standin(STANDIN_VERSION, tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def package_deb(booted_host: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our matrix-synapse-workers .deb, built from this tree by scripts/build-deb (or $MSW_DEB):
    never a dist/*.deb left by an earlier build of other code."""
    from support.debs import our_deb  # tests/ is on sys.path (tests/conftest.py)
    return our_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def synapse_root(base_root: Path, standin_deb: Path) -> Path:
    """base_root + the stand-in Synapse on PostgreSQL (server_name SERVER_NAME,
    registration shared secret harness.TEST_SHARED_SECRET), cached as a layer.

    Building it takes about a minute once; a container of it boots with
    Synapse running in about 7 s.  Our package is NOT installed in it.
    """
    setup = functools.partial(harness.install_standin_synapse, deb=standin_deb, server_name=SERVER_NAME)
    return harness.ensure_derived_root(
        "standin-synapse", base_root, setup,
        inputs=[inspect.getsource(harness.synapse_setup), repr(harness.synapse_settings()),
                harness._SYNAPSE_SETUP_PY, STANDIN_MAIN_URL])
