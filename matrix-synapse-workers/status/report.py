"""The status report: rows -> the verdict, the exit code, a table for people, JSON,
one line for a monitoring plugin, or gauges for node_exporter's textfile collector.

>>> worst([Row("x", "a", OK, ""), Row("x", "b", WARN, "", "do this")])
'warn'
>>> severity([Row("x", "a", OK, ""), Row("x", "b", FAIL, "", "do that")])
2
>>> exit_code([Row("x", "a", OK, ""), Row("x", "b", FAIL, "", "do that")])
<Exit.BROKEN: 5>
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterable, Mapping, Sequence

from ..core.exitcodes import PLUGIN_CODES, Exit, status_exit
from ..core.words import plural
from .model import FAIL, INFO, OK, RANK, WARN, Row


def worst(rows: Iterable[Row]) -> str:
    result = OK
    for row in rows:
        if RANK[row.status] > RANK[result]:
            result = row.status
    return result


def severity(rows: Iterable[Row]) -> int:
    """0 healthy, 1 degraded (warnings), 2 broken (a failure): the gauges' and plugins' scale."""
    return RANK[worst(rows)]


def exit_code(rows: Iterable[Row]) -> Exit:
    """The exit code of ``status`` (:mod:`..core.exitcodes`)."""
    return status_exit(severity(rows))


_COLOURS = {OK: "32", INFO: "36", WARN: "33", FAIL: "31"}
_VERDICT = {0: "healthy", 1: "degraded", 2: "broken"}

#: The version of the ``status --json`` document (matrix-synapse-workers(8); its keys: docs/design.md).
#: Adding a key keeps it; renaming or removing a key, or changing a value's
#: meaning, raises it.  2: exit_code is the command's (:mod:`..core.exitcodes`:
#: 4 degraded, 5 broken; it was 1 and 2).
JSON_SCHEMA_VERSION = 2


def as_json(rows: Sequence[Row], seconds: float,
            memory: Mapping[str, object] | None = None) -> dict[str, object]:
    """``memory`` (:meth:`.model.MemoryFacts.as_json`): the budget and each process's RSS."""
    code = severity(rows)
    document: dict[str, object] = {
        "schema_version": JSON_SCHEMA_VERSION, "status": _VERDICT[code],
        "exit_code": int(status_exit(code)),
        "seconds": round(seconds, 3), "checks": [asdict(row) for row in rows]}
    if memory is not None:
        document["memory"] = dict(memory)
    return document


# --- monitoring plugins (Nagios, Icinga, Naemon, Sensu...) ------------------------

#: The monitoring-plugins exit codes (``status --check`` only).
PLUGIN_OK, PLUGIN_WARNING, PLUGIN_CRITICAL, PLUGIN_UNKNOWN = (
    PLUGIN_CODES["OK"], PLUGIN_CODES["WARNING"], PLUGIN_CODES["CRITICAL"], PLUGIN_CODES["UNKNOWN"])
_PLUGIN_STATE = {PLUGIN_OK: "OK", PLUGIN_WARNING: "WARNING", PLUGIN_CRITICAL: "CRITICAL",
                 PLUGIN_UNKNOWN: "UNKNOWN"}
_PLUGIN_SERVICE = "SYNAPSE WORKERS"


def _plugin_text(text: str) -> str:
    """One line without the ``|`` that starts performance data."""
    return " ".join(text.split()).replace("|", "/")


def as_check_line(rows: Sequence[Row], seconds: float) -> str:
    """One line in the monitoring-plugins format: ``SERVICE STATE: text | perfdata``.

    The exit code that goes with it is :func:`severity` (0 OK, 1 WARNING,
    2 CRITICAL); the text names the worst problems first.

    >>> as_check_line([Row("process", "main", OK, "active")], 0.5)
    'SYNAPSE WORKERS OK: 1 check passed | checks=1;;;0 warnings=0;;;0 failures=0;;;0 time=0.500s;;;0'
    >>> as_check_line([Row("process", "sync-1", WARN, "inactive | dead"),
    ...                Row("redis", "unix:/r.sock", FAIL, "no answer")], 1)  # doctest: +NORMALIZE_WHITESPACE
    'SYNAPSE WORKERS CRITICAL: 2 problems in 2 checks: redis unix:/r.sock: no answer;
     process sync-1: inactive / dead | checks=2;;;0 warnings=1;;;0 failures=1;;;0 time=1.000s;;;0'
    """
    code = severity(rows)
    failures = [r for r in rows if r.status == FAIL]
    warnings = [r for r in rows if r.status == WARN]
    problems = failures + warnings
    if problems:
        shown = "; ".join(_plugin_text(f"{r.check} {r.subject}: {r.detail}") for r in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        text = f"{plural(len(problems), 'problem')} in {plural(len(rows), 'check')}: {shown}{more}"
    else:
        text = plural(len(rows), "check passed", "checks passed")
    perfdata = (f"checks={len(rows)};;;0 warnings={len(warnings)};;;0 failures={len(failures)};;;0 "
                f"time={seconds:.3f}s;;;0")
    return f"{_PLUGIN_SERVICE} {_PLUGIN_STATE[code]}: {text} | {perfdata}"


def unknown_check_line(reason: str) -> str:
    """The line for exit code 3: status itself could not look.

    >>> unknown_check_line("permission denied: /etc/matrix-synapse/conf.d")
    'SYNAPSE WORKERS UNKNOWN: permission denied: /etc/matrix-synapse/conf.d'
    """
    return f"{_PLUGIN_SERVICE} {_PLUGIN_STATE[PLUGIN_UNKNOWN]}: {_plugin_text(reason)}"


# --- node_exporter's textfile collector --------------------------------------------

#: Where Debian's prometheus-node-exporter reads ``*.prom`` files (its
#: ``--collector.textfile.directory``).
TEXTFILE_DIRECTORY = "/var/lib/prometheus/node-exporter"
TEXTFILE_NAME = "matrix-synapse-workers.prom"
_METRIC = "matrix_synapse_workers"


def _label(value: str) -> str:
    """A label value escaped as the text exposition format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def as_prometheus(rows: Sequence[Row], seconds: float) -> str:
    """Gauges in the Prometheus text format, for node_exporter's textfile collector.

    One ``matrix_synapse_workers_check`` gauge per check (``check`` and
    ``subject`` labels; 0 ok or info, 1 warning, 2 failure), the worst of them
    as ``matrix_synapse_workers_status`` (0 healthy, 1 degraded, 2 broken), and how
    long the checks took.  Two rows with the same labels make one gauge, the
    worse value: the collector refuses a file that repeats a series.

    >>> print(as_prometheus([Row("process", "main", OK, ""), Row("unit", 'a"b', WARN, "")], 0.25), end="")
    # HELP matrix_synapse_workers_check Result of one status check: 0 ok, 1 warning, 2 failure.
    # TYPE matrix_synapse_workers_check gauge
    matrix_synapse_workers_check{check="process",subject="main"} 0
    matrix_synapse_workers_check{check="unit",subject="a\\"b"} 1
    # HELP matrix_synapse_workers_status Worst check: 0 healthy, 1 degraded, 2 broken.
    # TYPE matrix_synapse_workers_status gauge
    matrix_synapse_workers_status 1
    # HELP matrix_synapse_workers_status_duration_seconds How long the checks took.
    # TYPE matrix_synapse_workers_status_duration_seconds gauge
    matrix_synapse_workers_status_duration_seconds 0.250
    """
    gauges: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.check, row.subject)
        gauges[key] = max(gauges.get(key, 0), RANK[row.status])
    lines = [f"# HELP {_METRIC}_check Result of one status check: 0 ok, 1 warning, 2 failure.",
             f"# TYPE {_METRIC}_check gauge"]
    lines += [f'{_METRIC}_check{{check="{_label(check)}",subject="{_label(subject)}"}} {value}'
              for (check, subject), value in gauges.items()]
    lines += [f"# HELP {_METRIC}_status Worst check: 0 healthy, 1 degraded, 2 broken.",
              f"# TYPE {_METRIC}_status gauge",
              f"{_METRIC}_status {severity(rows)}",
              f"# HELP {_METRIC}_status_duration_seconds How long the checks took.",
              f"# TYPE {_METRIC}_status_duration_seconds gauge",
              f"{_METRIC}_status_duration_seconds {seconds:.3f}"]
    return "\n".join(lines) + "\n"


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
    code = severity(rows)
    lines.append("")
    problems = sum(1 for r in rows if r.status in (WARN, FAIL))
    lines.append(f"{_VERDICT[code]}: {plural(problems, 'problem')} "
                 f"in {plural(len(rows), 'check')} ({seconds:.2f} s)")
    return "\n".join(lines)
