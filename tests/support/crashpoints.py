"""What the chroot and booted crash tests share: which kill points a run takes, what a
recovery left that it should not have.

A run that cannot afford every kill point takes a sample that moves: the points whose
number falls in one residue class of ``stride`` (the rotation), so that ``stride``
consecutive rotations kill after every action once.  The rotation is the day
(days since 1970, UTC) unless MSW_CRASH_ROTATION gives it; the test prints it, so a
failure can be run again with the same points.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Mapping


def rotation() -> int:
    given = os.environ.get("MSW_CRASH_ROTATION")
    return int(given) if given else int(time.time() // 86400)


def sample(total: int, count: int, turn: int | None = None) -> list[int]:
    """About ``count`` of the kill points 1..``total``, moved along by ``turn``: every point
    is in the sample of one of ``ceil(total / count)`` consecutive turns.

    >>> sample(10, 4, turn=0), sample(10, 4, turn=1), sample(10, 4, turn=2)
    ([3, 6, 9], [1, 4, 7, 10], [2, 5, 8])
    >>> sorted(p for t in range(3) for p in sample(10, 4, turn=t)) == list(range(1, 11))
    True
    """
    count = max(1, min(total, count))
    stride = -(-total // count)
    offset = (rotation() if turn is None else turn) % stride
    return [p for p in range(1, total + 1) if p % stride == offset]


def chosen(total: int, wanted: str, default: str) -> list[int]:
    """The kill points for ``MSW_CRASH_POINTS`` = ``wanted`` (``default`` when empty):
    ``all``, or a number (a rotating sample of that many)."""
    wanted = wanted or default
    return list(range(1, total + 1)) if wanted == "all" else sample(total, int(wanted))


def temporaries(paths: Iterable[str]) -> list[str]:
    """The temporary files of an interrupted write among ``paths``."""
    return [path for path in paths if path.startswith("/")
            and (".msw-tmp." in path or path.endswith((".new", ".restore")))]


def differences(want: Mapping, got: Mapping) -> dict:
    """Each key whose value differs: (wanted, got)."""
    return {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got))
            if want.get(k) != got.get(k)}
