"""Run the examples in module docstrings, so the manual in them stays true."""

import doctest
import importlib

import pytest

MODULES = ["catalog", "selection", "settings", "plan", "redisconf", "redisserver", "topology", "cluster", "sizing", "dbconnections"]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
    module = importlib.import_module(f"matrix_synapse_workers.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
