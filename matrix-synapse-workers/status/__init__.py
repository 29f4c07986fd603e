"""``matrix-synapse-workers status``: look once, judge, print once.

:mod:`.probe` looks (the system edge) and returns :class:`.model.Facts`;
:mod:`.checks` judges them into :class:`.model.Row` s (the web server's rows in
:mod:`.web_checks`, the other machines' in :mod:`.cluster_checks`, shared advice
in :mod:`.advice`); :mod:`.report` prints the rows.  This package's own namespace is the pure part: importing it does
not import the probe.
"""

from .checks import evaluate, evaluate_worker_host
from .model import FAIL, INFO, OK, WARN, Facts, MemoryFacts, Row
from .report import (as_check_line, as_json, as_prometheus, as_table, exit_code, severity,
                     unknown_check_line, worst)

__all__ = ["FAIL", "INFO", "OK", "WARN", "Facts", "MemoryFacts", "Row", "as_check_line", "as_json", "as_prometheus",
           "as_table", "evaluate", "evaluate_worker_host", "exit_code", "severity", "unknown_check_line", "worst"]
