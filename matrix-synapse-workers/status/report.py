"""The status report: rows -> the verdict, the exit code, a table for people or JSON.

>>> worst([Row("x", "a", OK, ""), Row("x", "b", WARN, "", "do this")])
'warn'
>>> exit_code([Row("x", "a", OK, ""), Row("x", "b", FAIL, "", "do that")])
2
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterable, Sequence

from .model import FAIL, INFO, OK, RANK, WARN, Row


def worst(rows: Iterable[Row]) -> str:
    result = OK
    for row in rows:
        if RANK[row.status] > RANK[result]:
            result = row.status
    return result


def exit_code(rows: Iterable[Row]) -> int:
    return RANK[worst(rows)]


_COLOURS = {OK: "32", INFO: "36", WARN: "33", FAIL: "31"}
_VERDICT = {0: "healthy", 1: "degraded", 2: "broken"}


def as_json(rows: Sequence[Row], seconds: float) -> dict[str, object]:
    code = exit_code(rows)
    return {"status": _VERDICT[code], "exit_code": code, "seconds": round(seconds, 3),
            "checks": [asdict(row) for row in rows]}


def as_table(rows: Sequence[Row], seconds: float, colour: bool = False) -> str:
    def paint(status: str) -> str:
        text = status.upper().ljust(4)
        return f"\033[{_COLOURS[status]}m{text}\033[0m" if colour else text

    widths = [max(len(getattr(r, key)) for r in rows) for key in ("check", "subject")]
    lines = []
    for row in rows:
        lines.append(f"{paint(row.status)}  {row.check.ljust(widths[0])}  "
                     f"{row.subject.ljust(widths[1])}  {row.detail}".rstrip())
        if row.advice and row.status in (WARN, FAIL):
            lines.append(f"{'':4}  {'':{widths[0]}}  -> {row.advice}")
    code = exit_code(rows)
    lines.append("")
    problems = sum(1 for r in rows if r.status in (WARN, FAIL))
    lines.append(f"{_VERDICT[code]}: {problems} problem{'s' if problems != 1 else ''} "
                 f"in {len(rows)} checks ({seconds:.2f} s)")
    return "\n".join(lines)
