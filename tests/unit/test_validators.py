"""Every validator of a name, count, address or path judges the whole value.

``re.match`` with ``$`` accepts a value with a newline at its end (``$`` matches
before it): a socket group ``"clubmatrix\\n"`` once made a tmpfiles line broken
in two.  Each validator is tried with a good value, the same with a trailing
newline, with a control character inside, and far too long; each of the bad
ones is refused with a SelectionError (never another exception), or, where a
value's surrounding whitespace is trimmed by design (a debconf answer), what is
kept holds none of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from hostroot import make_root
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.errors import SelectionError
from matrix_synapse_workers.core.plan import parse_worker_name
from matrix_synapse_workers.core.selection import MAX_COUNT, parse_workers
from matrix_synapse_workers.core.settings import check_system_name, parse_redis
from matrix_synapse_workers.core.topology import check_label, parse_address, parse_worker_hosts
from matrix_synapse_workers.debconf.answers import InvalidAnswer, from_answers
from matrix_synapse_workers.system.hostfacts import existing_worker_names

LONG = 5000  # also past int()'s 4300 digits


def address(text: str) -> object:
    return parse_address(text, default_port=9093, what="replication address")


#: (name, validator, a good value, the same made bad three ways)
CASES: list[tuple[str, Callable[[str], object], str, tuple[str, str, str]]] = [
    ("system name", lambda v: check_system_name("socket group", v), "clubmatrix",
     ("clubmatrix\n", "club\x1bmatrix", "c" * LONG)),
    ("redis host:port", parse_redis, "localhost:6379",
     ("localhost:6379\n", "local\x07host:6379", "h" * LONG + ":6379")),
    ("redis socket", parse_redis, "unix:/run/redis/redis.sock",
     ("unix:/run/redis/redis.sock\n", "unix:/run/re\ndis.sock", "unix:/" + "r" * LONG)),
    ("worker count", parse_workers, "sync:2",
     ("sync:2\n5", "sync:2\x00", "sync:" + "9" * LONG)),
    ("host label", check_label, "hostb",
     ("hostb\n", "ho\tstb", "h" * LONG)),
    ("address", address, "10.0.0.1:9093",
     ("10.0.0.1:9093\n5", "10.0.0.1:90\x0093", "10.0.0.1:" + "9" * LONG)),
    ("bracketed address", address, "[fd00::1]:9093",
     ("[fd00::1]:9093\n5", "[fd00::1]:9\x0b093", "[fd00::1]:" + "9" * LONG)),
    ("worker hosts", parse_worker_hosts, "hostb 10.0.0.2 sync:2",
     ("hostb 10.0.0.2 sync:2\n5", "hostb 10.0.0.2 sy\x1bnc", "hostb 10.0.0.2 " + "s" * LONG)),
]


@pytest.mark.parametrize("name, check, good, bad", CASES, ids=[c[0] for c in CASES])
def test_a_validator_refuses_newline_control_and_length(name, check, good, bad):
    check(good)
    for value in bad:
        with pytest.raises(SelectionError):
            check(value)


def test_the_defects_found():
    """The two values the review found accepted."""
    with pytest.raises(SelectionError, match="not a valid user or group name"):
        check_system_name("socket group", "clubmatrix\n")
    with pytest.raises(SelectionError, match="is not understood"):
        parse_redis("localhost:6379\n")


def test_a_count_above_the_most_is_refused_by_its_size():
    parse_workers(f"sync:{MAX_COUNT}")
    for count in (str(MAX_COUNT + 1), "0" * 50 + "100", "9" * LONG):
        with pytest.raises(SelectionError, match=f"above {MAX_COUNT}"):
            parse_workers(f"sync:{count}")
    assert parse_workers("sync:" + "0" * 50 + "3") == {"sync": 3}


@pytest.mark.parametrize("name", ["sync-1\n", "sync-1\x00", "sync-" + "1" * LONG,
                                  "sync-1-" + "h" * LONG, "sync-1-hostb\n"],
                         ids=["newline", "control", "long index", "long host", "host newline"])
def test_a_worker_name_is_ours_only_as_a_whole(name):
    assert parse_worker_name("sync-1") is not None and parse_worker_name("sync-1-hostb") is not None
    assert parse_worker_name(name) is None


def test_worker_files_with_a_newline_in_their_name_are_not_workers(tmp_path: Path):
    root = make_root(tmp_path)
    workers = root / str(paths.WORKERS_DIR)
    workers.mkdir(parents=True, exist_ok=True)
    for stem in ("sync-1", "sync-2\n", "sync\x1b-3", "s" * 200):
        (workers / f"{stem}.yaml").write_text("worker_app: synapse.app.generic_worker\n")
    assert existing_worker_names(root) == ("sync-1",)


def answers(**given: str) -> dict[str, str]:
    base = dict(preset="custom", types="sync", counts="", socket_group="matrix-synapse-sockets",
                web_user="www-data", redis="dedicated", redis_location="")
    base.update(given)
    return base


@pytest.mark.parametrize("question, value", [
    ("socket_group", "club\x1bmatrix"), ("socket_group", "c" * LONG),
    ("web_user", "www\ndata"), ("web_user", "w" * LONG),
    ("counts", "sync:2\x00"), ("counts", "sync:" + "9" * LONG),
    ("redis_location", "unix:/run/re\ndis.sock"), ("redis_location", "h" * LONG + ":6379"),
], ids=lambda v: v if len(v) < 20 and v.isprintable() else "bad")
def test_debconf_answers_refuse_them_naming_the_question(question, value):
    given = answers(**{question: value})
    if question == "redis_location":
        given["redis"] = "existing"
    with pytest.raises(InvalidAnswer):
        from_answers(**given)


def test_debconf_answers_trim_a_trailing_newline_and_keep_none_of_it():
    """debconf answers are trimmed whole (as ever); nothing of the newline is kept."""
    _, settings = from_answers(**answers(socket_group="clubmatrix\n", web_user="www-data\n"))
    assert (settings.socket_group, settings.web_user) == ("clubmatrix", "www-data")
