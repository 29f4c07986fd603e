"""Make the source tree importable as ``matrix_synapse_workers`` without installing it.

The package directory is ``matrix-synapse-workers/`` (setup.cfg maps it); tests
load that directory under its import name.  When MSW_TEST_INSTALLED=1 the
installed package is used instead (autopkgtest runs against the .deb).
"""

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "matrix-synapse-workers"

if os.environ.get("MSW_TEST_INSTALLED") != "1" and "matrix_synapse_workers" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "matrix_synapse_workers", PACKAGE_DIR / "__init__.py",
        submodule_search_locations=[str(PACKAGE_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["matrix_synapse_workers"] = module
    spec.loader.exec_module(module)
