"""dpkg-statoverride for the socket directory: an admin's own override wins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.paths import STATOVERRIDE_DB
from .run import run


@dataclass(frozen=True)
class Override:
    owner: str
    group: str
    mode: int


def parse(text: str, path: str) -> Override | None:
    """The override of ``path`` in dpkg's format (``owner group mode path`` lines), else None.

    >>> parse("root root 0755 /usr/bin/x\\nmatrix-synapse web 2750 /run/matrix-synapse\\n",
    ...       "/run/matrix-synapse")
    Override(owner='matrix-synapse', group='web', mode=1512)
    """
    for line in text.splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) == 4 and fields[3] == path:
            return Override(fields[0], fields[1], int(fields[2], 8))
    return None


def get(path: str) -> Override | None:
    """Asked of dpkg-statoverride (what apply acts on)."""
    result = run(["dpkg-statoverride", "--list", path], check=False, capture=True)
    if result.returncode != 0:
        return None
    return parse(result.stdout, path)


def read(path: str, root: Path = Path("/")) -> Override | None:
    """Read from dpkg's database without running a command (what status shows)."""
    try:
        text = (root / STATOVERRIDE_DB).read_text(encoding="utf-8")
    except OSError:
        return None
    return parse(text, path)


def add(path: str, wanted: Override) -> None:
    run(["dpkg-statoverride", "--quiet", "--add", wanted.owner, wanted.group,
         f"{wanted.mode:o}", path])


def remove(path: str) -> None:
    run(["dpkg-statoverride", "--quiet", "--remove", path], check=False)
