"""A worker's log config, made from the admin's ``log.yaml`` (pure).

Where a worker's lines go:

- the admin's file handlers write to ``<name>.log`` in the same directory
  (``/var/log/matrix-synapse/sync-1.log`` with matrix-synapse-py3's
  ``log.yaml``), at the admin's levels and formats;
- each such file is rotated by the worker itself, by Python's rotating
  handlers: the admin's ``RotatingFileHandler`` or ``TimedRotatingFileHandler``
  is kept as it is (Synapse's generated ``log.yaml`` rotates at midnight and
  keeps 3 old files); a plain ``FileHandler`` or ``WatchedFileHandler`` (which
  rotates nothing itself) becomes a ``TimedRotatingFileHandler`` with Synapse's
  default rotation, so no file we cause to be written grows for ever.  No
  logrotate rule is shipped: it would rotate these files a second time;
- the root logger also writes WARNING and above to the process's stderr, which
  systemd gives to the journal, so ``journalctl -u matrix-synapse-worker@NAME``
  shows the startup banner, warnings, errors and tracebacks.  Unless the root
  logger already writes to stderr or stdout (then the journal has every line
  already).  Not every line: the file has them, and a busy worker at INFO would
  write each line twice and crowd the rest of the system out of the journal.

>>> admin = {"version": 1, "formatters": {"precise": {"format": "%(message)s"}},
...     "handlers": {"file": {"class": "logging.handlers.TimedRotatingFileHandler",
...         "filename": "/var/log/matrix-synapse/homeserver.log", "when": "midnight",
...         "backupCount": 3, "formatter": "precise"}},
...     "root": {"level": "INFO", "handlers": ["file"]}}
>>> config = worker_log_config("sync-1", admin)
>>> config["handlers"]["file"]["filename"]
'/var/log/matrix-synapse/sync-1.log'
>>> config["root"]["handlers"]
['file', 'matrix_synapse_workers_journal']
>>> config["handlers"]["matrix_synapse_workers_journal"]["level"]
'WARNING'
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any, Mapping

#: The handler (and its formatter) we add for the journal; a name no admin uses.
JOURNAL_HANDLER = "matrix_synapse_workers_journal"
#: What reaches the journal when the file has everything.
JOURNAL_LEVEL = "WARNING"
#: The journal stamps each line itself: the rest of Synapse's "precise" format.
JOURNAL_FORMAT = "%(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
#: The stderr the process started with.  Synapse points sys.stderr into its own
#: logging once it is up, and rebuilds every handler on SIGHUP (systemctl
#: reload): a handler that looked up sys.stderr then would feed its lines back
#: into logging.
JOURNAL_STREAM = "ext://sys.__stderr__"

#: Handler classes that write one file for ever: given Synapse's default rotation.
#: (RotatingFileHandler and TimedRotatingFileHandler are kept as the admin set them.)
NOT_ROTATING = frozenset({"logging.FileHandler", "logging.handlers.WatchedFileHandler"})
#: Synapse's generated log.yaml: a new file at midnight, 3 old ones kept.
DEFAULT_ROTATION: Mapping[str, Any] = {"class": "logging.handlers.TimedRotatingFileHandler",
                                       "when": "midnight", "backupCount": 3}
#: Arguments of FileHandler that TimedRotatingFileHandler does not take.
_NOT_TIMED_ARGS = ("mode",)
#: Handlers that already bring the root logger's lines to the journal.
_JOURNAL_CLASSES = frozenset({"systemd.journal.JournalHandler"})
_STD_STREAMS = frozenset({"ext://sys.stderr", "ext://sys.stdout",
                          "ext://sys.__stderr__", "ext://sys.__stdout__"})


def worker_log_file(name: str, admin_file: str, first: bool) -> str:
    """``<name>.log`` beside the admin's file; further files ``<name>-<stem>.log``
    (two rotating handlers on one file would rename it under each other)."""
    path = PurePosixPath(admin_file)
    return str(path.parent / (f"{name}.log" if first else f"{name}-{path.stem}.log"))


def worker_log_config(name: str, admin_log_config: Mapping[str, Any]) -> dict[str, Any]:
    """The admin's log config for worker ``name``: its own files, rotated, and the journal."""
    config = copy.deepcopy(dict(admin_log_config))
    handlers = config.get("handlers")
    if isinstance(handlers, dict):
        renamed: dict[str, str] = {}
        for handler in handlers.values():
            if isinstance(handler, dict) and isinstance(handler.get("filename"), str):
                admin_file = handler["filename"]
                if admin_file not in renamed:
                    renamed[admin_file] = worker_log_file(name, admin_file, first=not renamed)
                handler["filename"] = renamed[admin_file]
                if handler.get("class") in NOT_ROTATING:
                    for arg in _NOT_TIMED_ARGS:
                        handler.pop(arg, None)
                    handler.update(DEFAULT_ROTATION)
    if not config.get("incremental"):
        _add_journal(config)
    return config


def _writes_to_journal(handler: Any) -> bool:
    if not isinstance(handler, dict):
        return False
    if handler.get("class") == "logging.StreamHandler":
        return handler.get("stream", "ext://sys.stderr") in _STD_STREAMS
    return handler.get("class") in _JOURNAL_CLASSES


def _add_journal(config: dict[str, Any]) -> None:
    """Add the WARNING handler to the root logger, unless the root writes to stderr already."""
    loggers = config.get("loggers")
    if isinstance(config.get("root"), dict):
        root = config["root"]
    elif isinstance(loggers, dict) and isinstance(loggers.get(""), dict):
        root = loggers[""]  # dictConfig configures the root logger under "" as well
    else:
        root = config["root"] = {}
    root_handlers = root.get("handlers")
    if not isinstance(root_handlers, list):
        root_handlers = root["handlers"] = []
    handlers = config.get("handlers")
    if not isinstance(handlers, dict):
        handlers = config["handlers"] = {}
    if any(_writes_to_journal(handlers.get(h)) for h in root_handlers if isinstance(h, str)):
        return
    formatters = config.get("formatters")
    if not isinstance(formatters, dict):
        formatters = config["formatters"] = {}
    formatters[JOURNAL_HANDLER] = {"format": JOURNAL_FORMAT}
    handlers[JOURNAL_HANDLER] = {"class": "logging.StreamHandler", "level": JOURNAL_LEVEL,
                                 "formatter": JOURNAL_HANDLER, "stream": JOURNAL_STREAM}
    root_handlers.append(JOURNAL_HANDLER)
