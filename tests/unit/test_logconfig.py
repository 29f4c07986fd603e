"""A worker's log config: its own file beside the admin's, rotated, and WARNING to the journal."""

import copy
import io
import logging
import logging.config
from typing import Any

import pytest
import yaml

from hostroot import DEBIAN_LOG_CONFIG, SYNAPSE_LOG_CONFIG, make_root
from matrix_synapse_workers.cli import decide
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.render.logconfig import (
    JOURNAL_HANDLER, JOURNAL_LEVEL, JOURNAL_STREAM, worker_log_config)

LOG = "/var/log/matrix-synapse"


def rendered_log_config(tmp_path, log_config) -> dict[str, Any]:
    desired = decide(make_root(tmp_path, log_config=log_config), None, "sync", Settings())
    files = {str(f.path): f for f in desired.files}
    return yaml.safe_load(files["etc/matrix-synapse/worker-logs/sync-1.yaml"].content)


def test_synapse_default_keeps_its_rotation_and_adds_the_journal_at_warning(tmp_path):
    log = rendered_log_config(tmp_path, SYNAPSE_LOG_CONFIG)
    admin = SYNAPSE_LOG_CONFIG["handlers"]
    assert log["handlers"]["file"] == {**admin["file"], "filename": f"{LOG}/sync-1.log"}
    assert log["handlers"]["file"]["class"] == "logging.handlers.TimedRotatingFileHandler"
    assert (log["handlers"]["file"]["when"], log["handlers"]["file"]["backupCount"]) == ("midnight", 3)
    assert log["handlers"]["buffer"] == admin["buffer"] and log["handlers"]["console"] == admin["console"]
    assert log["root"] == {"level": "INFO", "handlers": ["buffer", JOURNAL_HANDLER]}
    assert log["handlers"][JOURNAL_HANDLER] == {
        "class": "logging.StreamHandler", "level": "WARNING", "formatter": JOURNAL_HANDLER,
        "stream": "ext://sys.__stderr__"}
    assert "asctime" not in log["formatters"][JOURNAL_HANDLER]["format"]  # journald stamps lines
    assert log["formatters"]["precise"] == SYNAPSE_LOG_CONFIG["formatters"]["precise"]


def test_a_root_already_on_stderr_gets_no_second_handler(tmp_path):
    """The journal has every line already: nothing to add."""
    log = rendered_log_config(tmp_path, DEBIAN_LOG_CONFIG)
    assert log["root"] == DEBIAN_LOG_CONFIG["root"] and JOURNAL_HANDLER not in log["handlers"]


@pytest.mark.parametrize("handler", [
    {"class": "logging.StreamHandler"},
    {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    {"class": "systemd.journal.JournalHandler", "SYSLOG_IDENTIFIER": "synapse"},
])
def test_console_or_journal_only_configs_write_no_file_and_stay_as_they_are(handler):
    admin = {"version": 1, "handlers": {"out": handler}, "root": {"level": "INFO", "handlers": ["out"]}}
    assert worker_log_config("sync-1", admin) == admin


def test_a_stream_to_another_place_is_not_the_journal():
    admin = {"version": 1, "handlers": {"out": {"class": "logging.StreamHandler",
                                                "stream": "ext://somewhere.else"}},
             "root": {"handlers": ["out"]}}
    assert worker_log_config("sync-1", admin)["root"]["handlers"] == ["out", JOURNAL_HANDLER]


@pytest.mark.parametrize("cls", ["logging.FileHandler", "logging.handlers.WatchedFileHandler"])
def test_a_file_nothing_rotates_gets_synapses_default_rotation(cls):
    admin = {"version": 1, "handlers": {"file": {
        "class": cls, "filename": f"{LOG}/homeserver.log", "mode": "a", "encoding": "utf8",
        "level": "DEBUG", "formatter": "precise"}},
        "formatters": {"precise": {"format": "%(message)s"}},
        "root": {"level": "INFO", "handlers": ["file"]}}
    handler = worker_log_config("sync-1", admin)["handlers"]["file"]
    assert handler == {"class": "logging.handlers.TimedRotatingFileHandler", "when": "midnight",
                       "backupCount": 3, "filename": f"{LOG}/sync-1.log", "encoding": "utf8",
                       "level": "DEBUG", "formatter": "precise"}


def test_size_rotation_is_kept():
    admin = {"version": 1, "handlers": {"file": {
        "class": "logging.handlers.RotatingFileHandler", "filename": f"{LOG}/homeserver.log",
        "maxBytes": 1000, "backupCount": 7}}, "root": {"handlers": ["file"]}}
    assert worker_log_config("sync-1", admin)["handlers"]["file"] == {
        **admin["handlers"]["file"], "filename": f"{LOG}/sync-1.log"}


def test_a_second_file_gets_a_name_of_its_own_and_a_shared_file_stays_shared():
    """Two rotating handlers on one file would rotate it under each other."""
    admin = {"version": 1, "handlers": {
        "all": {"class": "logging.handlers.TimedRotatingFileHandler", "filename": f"{LOG}/homeserver.log"},
        "errors": {"class": "logging.handlers.TimedRotatingFileHandler", "filename": "/srv/errors.log",
                   "level": "ERROR"},
        "again": {"class": "logging.handlers.TimedRotatingFileHandler", "filename": f"{LOG}/homeserver.log"},
    }, "root": {"handlers": ["all", "errors", "again"]}}
    handlers = worker_log_config("sync-1", admin)["handlers"]
    assert [handlers[h]["filename"] for h in ("all", "errors", "again")] == [
        f"{LOG}/sync-1.log", "/srv/sync-1-errors.log", f"{LOG}/sync-1.log"]


def test_a_handler_class_we_do_not_know_is_moved_to_the_workers_file_and_kept():
    admin = {"version": 1, "handlers": {"file": {"class": "acme.RotatingThing", "filename": f"{LOG}/x.log",
                                                 "keep": 9}}, "root": {"handlers": ["file"]}}
    assert worker_log_config("sync-1", admin)["handlers"]["file"] == {
        "class": "acme.RotatingThing", "filename": f"{LOG}/sync-1.log", "keep": 9}


def test_without_a_root_the_journal_handler_gets_one():
    admin = {"version": 1, "loggers": {"synapse": {"level": "INFO"}}}
    config = worker_log_config("sync-1", admin)
    assert config["root"] == {"handlers": [JOURNAL_HANDLER]}
    assert admin == {"version": 1, "loggers": {"synapse": {"level": "INFO"}}}  # input untouched


def test_a_root_given_as_the_empty_logger_name_gets_it():
    admin = {"version": 1, "loggers": {"": {"level": "INFO", "handlers": []}}}
    config = worker_log_config("sync-1", admin)
    assert config["loggers"][""]["handlers"] == [JOURNAL_HANDLER] and "root" not in config


def test_an_incremental_config_cannot_add_handlers_and_gets_none():
    admin = {"version": 1, "incremental": True, "root": {"level": "DEBUG"}}
    assert worker_log_config("sync-1", admin) == admin


def test_the_admins_config_is_not_changed():
    admin = copy.deepcopy(SYNAPSE_LOG_CONFIG)
    worker_log_config("sync-1", admin)
    assert admin == SYNAPSE_LOG_CONFIG


def test_python_logging_takes_it_warnings_to_stderr_everything_to_the_file(tmp_path, monkeypatch):
    """dictConfig with the standard library's own classes: the journal gets WARNING and up only."""
    admin = {"version": 1, "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
             "handlers": {"file": {"class": "logging.FileHandler", "filename": str(tmp_path / "homeserver.log"),
                                   "formatter": "plain"}},
             "root": {"level": "INFO", "handlers": ["file"]}, "disable_existing_loggers": False}
    config = worker_log_config("sync-1", admin)
    config["formatters"][JOURNAL_HANDLER]["format"] = "%(levelname)s %(message)s"  # no Synapse %(request)s
    stderr = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", stderr)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        logging.getLogger("synapse.test").info("an info line")
        logging.getLogger("synapse.test").warning("a warning line")
        file_handler = next(h for h in root.handlers if isinstance(h, logging.FileHandler))
        assert type(file_handler).__name__ == "TimedRotatingFileHandler"
        file_handler.doRollover()  # what midnight does: the file moves aside
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], level = saved
        root.setLevel(level)
    assert stderr.getvalue() == "WARNING a warning line\n"
    rotated = sorted(p.name for p in tmp_path.glob("sync-1.log.*"))
    assert len(rotated) == 1
    assert (tmp_path / rotated[0]).read_text() == "INFO an info line\nWARNING a warning line\n"
    assert JOURNAL_STREAM == "ext://sys.__stderr__" and JOURNAL_LEVEL == "WARNING"
