"""Find a real Synapse (from PyPI, pinned) for loading rendered file sets.

scripts/test builds the venv and sets MSW_SYNAPSE_PYTHON.  Without it the tests
skip, except where MSW_REQUIRE_SYNAPSE=1 (CI) turns the skip into a failure.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

LOADER = Path(__file__).resolve().parents[2] / "matrix-synapse-workers" / "synapse_check.py"


@pytest.fixture(scope="session")
def synapse_python() -> str:
    python = os.environ.get("MSW_SYNAPSE_PYTHON")
    if python and Path(python).exists():
        return python
    reason = "no Synapse venv: set MSW_SYNAPSE_PYTHON (scripts/test builds one)"
    if os.environ.get("MSW_REQUIRE_SYNAPSE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def load_with_synapse(synapse_python):
    """Load ``{label: [paths]}`` with Synapse's loader; returns ``{label: result}``."""

    def load(sets: dict[str, list[str]], signing_keys: tuple[str, ...] = ()) -> dict[str, str]:
        result = subprocess.run([synapse_python, str(LOADER), *signing_keys], input=json.dumps(list(sets.items())),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return load
