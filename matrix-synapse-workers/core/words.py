"""Pure: the words every output uses, so they agree.

>>> plural(1, "worker"), plural(2, "worker"), plural(0, "check passed", "checks passed")
('1 worker', '2 workers', '0 checks passed')
"""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and the noun, singular for exactly one (``many`` when '+s' is wrong)."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
