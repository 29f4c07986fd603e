"""The one way the tests build the matrix-synapse-py3 stand-in (tests/standin/build-standin,
which caches each build): the .deb's path, or a failure with the end of the script's output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_STANDIN = REPO / "tests" / "standin" / "build-standin"


def build_standin(version: str, out: Path, suite: str | None = None) -> Path:
    """The stand-in of Synapse ``version`` for ``suite`` (this machine's release when None),
    built into ``out``."""
    done = subprocess.run([str(BUILD_STANDIN), version, str(out), *([suite] if suite else [])],
                          cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
    name = f"build-standin {version}{' ' + suite if suite else ''}"
    if done.returncode != 0:
        pytest.fail(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}",
                    pytrace=False)
    lines = done.stdout.strip().splitlines()
    deb = Path(lines[-1]) if lines else None
    if deb is None or not deb.is_file() or not deb.name.startswith(f"matrix-synapse-py3_{version}"):
        pytest.fail(f"{name} printed {lines[-1:]} and made {sorted(p.name for p in out.iterdir())}",
                    pytrace=False)
    return deb
