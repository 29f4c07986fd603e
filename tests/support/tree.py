"""Make the source tree importable as ``matrix_synapse_workers`` without installing it.

The package directory is ``matrix-synapse-workers/`` (setup.cfg maps it); the
tests load that directory under its import name.  When MSW_TEST_INSTALLED=1 the
installed package is used instead (autopkgtest runs against the .deb).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "matrix-synapse-workers"
IMPORT_NAME = "matrix_synapse_workers"


def use_source_tree() -> None:
    if os.environ.get("MSW_TEST_INSTALLED") == "1" or IMPORT_NAME in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        IMPORT_NAME, PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[IMPORT_NAME] = module
    spec.loader.exec_module(module)


def module_name(path: Path) -> str:
    """``matrix-synapse-workers/core/plan.py`` -> ``matrix_synapse_workers.core.plan``."""
    parts = path.resolve().relative_to(PACKAGE_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((IMPORT_NAME, *parts))
