"""The installed Synapse's version, read without importing Synapse.

Routes depend on it (:meth:`catalog.Endpoints.applies_to`): an endpoint that
moved off main in some release must stay on main for older ones.  The version
comes from the package metadata in the venv of Matrix.org's package (the only
Synapse package this one accepts); None when it is not there, which the
routing reads as "the newest".

>>> parse_version("1.163.2")
(1, 163, 2)
>>> parse_version("1.144.0rc1"), parse_version("1.135.0~rc2-1"), parse_version("1:1.93.0+bookworm1")
((1, 144, 0), (1, 135, 0), (1, 93, 0))
>>> parse_version("unknown") is None
True
"""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import PathDistribution
from pathlib import Path
from typing import Iterable

from ..core.catalog import Version

#: Synapse's package metadata directory, relative to the root: the venv of
#: Matrix.org's matrix-synapse-py3 (the only Synapse package this one accepts).
DIST_INFO_GLOBS = (
    "opt/venvs/matrix-synapse/lib/python3*/site-packages/matrix_synapse-*.dist-info",
)
#: The Debian package that installs Synapse: the only one Depends accepts (see docs/design.md, "Which Synapse").
SYNAPSE_PACKAGE = "matrix-synapse-py3"

# An optional Debian epoch, then major.minor[.patch]; what follows (rc, ~rc,
# -revision, +build) does not change which routes apply.
_VERSION = re.compile(r"^(?:[0-9]+:)?(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(?:\.(?P<patch>[0-9]+))?")


def parse_version(text: str) -> Version | None:
    match = _VERSION.match(text.strip())
    if not match:
        return None
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)


def installed_version(root: Path = Path("/"), globs: Iterable[str] = DIST_INFO_GLOBS) -> Version | None:
    """The installed Synapse's version; the newest when leftovers of several exist.

    Each dist-info directory is read by importlib.metadata (its METADATA file's
    ``Version``), never by importing Synapse.
    """
    found = []
    for pattern in globs:
        for path in root.glob(pattern):
            try:
                text = PathDistribution(path).version
            except (OSError, KeyError, TypeError):
                continue
            version = parse_version(text) if text else None
            if version is not None:
                found.append(version)
    return max(found, default=None)


def installed_release(root: Path = Path("/")) -> str | None:
    """The installed Synapse's version as its packaging spells it (``1.163.2``,
    ``1.163.2+standin``): the dist-info directory's name, else dpkg's version."""
    for pattern in DIST_INFO_GLOBS:
        for found in sorted(root.glob(pattern)):
            return found.name[len("matrix_synapse-"):-len(".dist-info")]
    return package_version(SYNAPSE_PACKAGE)


def package_version(package: str, timeout: float | None = 1.5) -> str | None:
    """dpkg's version of an installed ``package``; None when it is not installed.

    ``timeout``: status must answer quickly; the postinst waits (None).
    """
    try:
        done = subprocess.run(["dpkg-query", "--show", "--showformat=${Version}", package],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None
