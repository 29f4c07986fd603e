"""The examples in module docstrings are run by pytest's doctest collection.

pytest.ini sets ``--doctest-modules`` with the package among its testpaths, and
the top conftest.py imports each package file by its import name.  This test
keeps that configuration and the examples themselves from quietly going away:
every module that is a manual with examples must still have them.
"""

import configparser
import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Modules whose docstrings are manuals with examples.
MODULES = ["core.catalog", "core.selection", "core.settings", "core.plan", "core.topology", "core.cluster",
           "core.sizing", "core.dbconnections", "render.redisconf", "render.routing", "debconf.answers",
           "status.report", "system.synapseversion", "system.applied", "system.statoverride"]


def test_pytest_collects_the_package_doctests():
    ini = configparser.ConfigParser()
    ini.read(REPO / "pytest.ini")
    assert "--doctest-modules" in ini["pytest"]["addopts"].split()
    assert "matrix-synapse-workers" in ini["pytest"]["testpaths"].split()


@pytest.mark.parametrize("name", MODULES)
def test_module_has_examples(name):
    module = importlib.import_module(f"matrix_synapse_workers.{name}")
    assert any(test.examples for test in doctest.DocTestFinder().find(module))
