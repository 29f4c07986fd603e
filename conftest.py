"""pytest at the top of the tree: the package's doctests, collected from its files.

pytest.ini turns on ``--doctest-modules``.  pytest would import
``matrix-synapse-workers/core/plan.py`` by its path, and the hyphen keeps that
directory from being a package to it; here each file is imported by its
import name instead (the tree's, or with MSW_TEST_INSTALLED=1 the installed
package's), so the examples run against the very modules the tests use.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest
from _pytest import doctest as _doctest
from _pytest.python import Package

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from support.tree import PACKAGE_DIR, module_name, use_source_tree  # noqa: E402

use_source_tree()

# Not doctests: synapse_check.py runs inside Synapse's python (it imports synapse);
# setup.py is the build shim; bench/ and scripts/ are tools, not the package.
collect_ignore = ["matrix-synapse-workers/synapse_check.py", "setup.py", "bench", "scripts"]


class PackageDoctests(_doctest.DoctestModule):
    """A package file's doctests, its module imported by its import name."""

    def collect(self):
        original = _doctest.import_path
        _doctest.import_path = lambda path, **_: importlib.import_module(module_name(Path(path)))
        try:
            yield from super().collect()
        finally:
            _doctest.import_path = original


class PackageDirectory(Package):
    """A directory of the package: pytest would import its __init__.py by path (as
    ``core``, ``debconf``...), shadowing real modules; nothing there needs setting up."""

    def setup(self) -> None:
        pass


def _ours(found, parent, file_path):
    if isinstance(found, _doctest.DoctestModule):
        return PackageDoctests.from_parent(parent, path=file_path)
    if isinstance(found, Package):
        return PackageDirectory.from_parent(parent, path=file_path)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path, parent):
    outcome = yield
    if PACKAGE_DIR in file_path.resolve().parents:
        outcome.force_result([_ours(found, parent, file_path) for found in outcome.get_result()])
    else:
        # --doctest-modules is for the package; test helpers (some import Synapse) are not manuals.
        outcome.force_result([found for found in outcome.get_result()
                              if not isinstance(found, _doctest.DoctestModule)])


# --- MSW_REQUIRE_ALL: a skip is a failure -------------------------------------------------
#
# scripts/test (so CI) installs everything the tests need and sets MSW_REQUIRE_ALL=1: then no
# test may skip, whatever its reason, whether it skips in a fixture, in its body, by a skipif
# marker or at collection.  The per-suite MSW_REQUIRE_* flags give the reason in the suites'
# own words; this catches every skip they do not cover, including ones added later.

def _require_all() -> bool:
    return os.environ.get("MSW_REQUIRE_ALL") == "1"


def _as_failure(report, when: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped during {when}, and MSW_REQUIRE_ALL=1 makes a skip a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _require_all() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, report.when)


_skipped_modules: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module skipped whole: made an error, pytest would stop the whole run before any test;
    # recorded instead, and the run fails at its end.
    outcome = yield
    report = outcome.get_result()
    if _require_all() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped_modules.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    for line in _skipped_modules:
        terminalreporter.write_line(f"FAILED (skipped, MSW_REQUIRE_ALL=1) {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_modules and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
