"""The exit codes of every ``matrix-synapse-workers`` command: one meaning each,
the same in every command (the manual page's EXIT STATUS is this table).

``status --check`` is the one exception: it speaks the monitoring-plugins
protocol (Nagios, Icinga), whose codes are fixed by that protocol
(:data:`PLUGIN_CODES`), so that a plugin runner reads it without a wrapper.

>>> [f"{code.value} {code.name}" for code in Exit]
['0 OK', '1 ERROR', '2 USAGE', '3 PENDING', '4 DEGRADED', '5 BROKEN']
>>> status_exit(0), status_exit(1), status_exit(2)
(<Exit.OK: 0>, <Exit.DEGRADED: 4>, <Exit.BROKEN: 5>)
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    #: Done; for ``status``, healthy; for ``apply --dry-run``, nothing would change.
    OK = 0
    #: An error, said in one ``Error: ...`` line on stderr; nothing was half-applied.
    ERROR = 1
    #: A bad command line (an unknown option, a missing argument): argparse's own code.
    USAGE = 2
    #: ``apply --dry-run``: changes are pending (``apply`` would make them).
    PENDING = 3
    #: ``status``: warnings only; every process that must run runs.
    DEGRADED = 4
    #: ``status``: at least one check failed.
    BROKEN = 5


#: What each code means, for ``--help`` and the manual page.
MEANINGS: dict[Exit, str] = {
    Exit.OK: "success (status: healthy; apply --dry-run: nothing to change)",
    Exit.ERROR: "error (one 'Error: ...' line; nothing was half-applied)",
    Exit.USAGE: "usage error (bad command line)",
    Exit.PENDING: "apply --dry-run: changes pending",
    Exit.DEGRADED: "status: degraded (warnings)",
    Exit.BROKEN: "status: broken (a check failed)",
}

#: ``status --check`` only: the monitoring-plugins codes.
PLUGIN_CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}

_BY_SEVERITY = (Exit.OK, Exit.DEGRADED, Exit.BROKEN)


def status_exit(severity: int) -> Exit:
    """The exit code of ``status`` for the worst check's severity (0 ok, 1 warning, 2 failure)."""
    return _BY_SEVERITY[severity]


def epilog() -> str:
    """The table, one line, for ``--help``."""
    return "Exit status: " + "; ".join(f"{code.value} {text}" for code, text in MEANINGS.items()) + "."
