"""pytest at the top of the tree: the package's doctests, collected from its files.

pytest.ini turns on ``--doctest-modules``.  pytest would import
``matrix-synapse-workers/core/plan.py`` by its path, and the hyphen keeps that
directory from being a package to it; here each file is imported by its
import name instead (the tree's, or with MSW_TEST_INSTALLED=1 the installed
package's), so the examples run against the very modules the tests use.
"""

import importlib
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
