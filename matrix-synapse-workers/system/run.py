"""Run helper programs with their stdout kept off ours.

In a debconf-driven postinst fd 1 is the debconf protocol pipe: a child that
writes there corrupts it.  Every child's stdout goes to our stderr.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

from ..core.errors import ApplyError
from . import crashpoint


def run(argv: Sequence[str], *, check: bool = True, capture: bool = False,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), text=True, timeout=timeout,
                                stdout=subprocess.PIPE if capture else sys.stderr,
                                stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError:
        raise ApplyError(f"{argv[0]} is not installed; it is needed to run: {' '.join(argv)}") from None
    if not capture:  # run for its effect, not to ask something
        crashpoint.done(" ".join(argv))
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip() if capture else ""
        raise ApplyError(f"'{' '.join(argv)}' failed with exit code {result.returncode}"
                         + (f": {detail}" if detail else ""))
    return result
