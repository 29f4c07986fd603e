"""One rule for a test that cannot find what it needs: skip, or fail where it is required.

A suite passes its own flag (MSW_REQUIRE_CHROOT, MSW_REQUIRE_STANDIN...); MSW_REQUIRE_ALL
(scripts/test sets it, with every per-suite flag) and CI require every suite.
"""

from __future__ import annotations

import os

import pytest

ALWAYS = ("MSW_REQUIRE_ALL", "CI")


def required(flag: str) -> str | None:
    """The first flag set among ``flag`` and the ones that require every suite."""
    return next((f for f in (flag, *ALWAYS) if os.environ.get(f)), None)


def need(condition: bool, reason: str, flag: str) -> None:
    """Nothing when ``condition`` holds; otherwise a skip, or a failure when required."""
    if condition:
        return
    given = required(flag)
    if given:
        pytest.fail(f"{reason} ({given} is set: these tests must run)", pytrace=False)
    pytest.skip(reason)
