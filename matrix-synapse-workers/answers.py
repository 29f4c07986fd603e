"""Between debconf and the core: raw answers -> (Selection, Settings), and back.

The debconf questions (debian/templates) hand over plain strings: a preset
name or ``custom``, a multiselect value ``"sync, client"``, a counts string
``"sync:4,federation_sender:2"``, names, a Redis choice.  :func:`from_answers`
checks them all and returns what the apply engine takes, or raises
:class:`InvalidAnswer` naming the question to ask again and a message that
names the bad value and what is accepted.

:func:`answers_from_workers` goes the other way: from the worker names on
disk to the answers that would configure exactly them, which is what
``debian/config`` (in sh) does when it reads the deployed state back; and
:func:`normalized_counts` is the one spelling of a worker set both use to
record and compare what was applied.

>>> selection, settings = from_answers("custom", "sync, typing", "sync:2", "clubmatrix",
...                                    "www-data", "dedicated", "")
>>> selection.counts
{'sync': 2, 'typing': 1}
>>> answers_from_workers(["sync-1", "sync-2", "typing-1"])
Answers(preset='custom', worker_types='sync, typing', worker_counts='sync:2')
>>> normalized_counts({"typing": 1, "sync": 2})
'sync:2,typing:1'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from . import paths
from .catalog import PRESETS, ROLES, resolve_role
from .errors import SelectionError
from .hostfacts import existing_worker_names
from .plan import parse_worker_name
from .selection import Selection, parse_workers, select
from .settings import RedisMode, Settings, check_system_name, parse_redis

PACKAGE = "matrix-synapse-workers"
CUSTOM = "custom"
#: The debconf questions, by the short name used in messages and code.
Q_PRESET = f"{PACKAGE}/preset"
Q_TYPES = f"{PACKAGE}/worker-types"
Q_COUNTS = f"{PACKAGE}/worker-counts"
Q_SOCKET_GROUP = f"{PACKAGE}/socket-group"
Q_WEB_USER = f"{PACKAGE}/web-user"
Q_REDIS = f"{PACKAGE}/redis"
Q_REDIS_LOCATION = f"{PACKAGE}/redis-location"
QUESTIONS = (Q_PRESET, Q_TYPES, Q_COUNTS, Q_SOCKET_GROUP, Q_WEB_USER, Q_REDIS, Q_REDIS_LOCATION)
#: The choices of the preset question, in template order.
PRESET_CHOICES = (*PRESETS, CUSTOM)
#: The choices of the redis question.
REDIS_CHOICES = tuple(mode.value for mode in RedisMode)


class InvalidAnswer(SelectionError):
    """An answer that cannot be used; ``question`` is the one to ask again."""

    def __init__(self, question: str, message: str):
        super().__init__(message)
        self.question = question


@dataclass(frozen=True)
class Answers:
    """The worker answers as debconf holds them."""

    preset: str
    worker_types: str
    worker_counts: str


def split_multiselect(value: str) -> list[str]:
    """debconf's ``"a, b, c"`` as a list; an empty value is an empty list."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _selection(preset: str, types: str, counts: str) -> Selection:
    key = preset.strip().lower().replace("-", "_")
    if key in PRESETS:
        return select(preset=key)
    if key != CUSTOM:
        raise InvalidAnswer(Q_PRESET, f"unknown preset {preset.strip()!r}; accepted: "
                                      f"{', '.join(PRESET_CHOICES)}")
    chosen: list[str] = []
    for item in split_multiselect(types):
        try:
            role = resolve_role(item).name
        except KeyError:
            raise InvalidAnswer(Q_TYPES, f"unknown worker type {item!r}; accepted: "
                                         f"{', '.join(ROLES)}") from None
        if role not in chosen:
            chosen.append(role)
    if not chosen:
        raise InvalidAnswer(Q_TYPES, "no worker type chosen; with the preset 'custom' choose at "
                                     f"least one of: {', '.join(ROLES)}")
    try:
        explicit = parse_workers(counts)
    except SelectionError as exc:
        raise InvalidAnswer(Q_COUNTS, f"worker counts: {exc}") from None
    unchosen = [role for role in explicit if role not in chosen]
    if unchosen:
        raise InvalidAnswer(
            Q_COUNTS, f"worker counts {counts.strip()!r} name {', '.join(map(repr, unchosen))}, "
                      f"which is not among the chosen worker types ({', '.join(chosen)}); "
                      "choose the type too or leave its count out")
    wanted = {role: explicit.get(role, 1) for role in chosen}
    return select(workers=normalized_counts(wanted))


def _redis(choice: str, location: str):
    mode = choice.strip()
    if mode in (RedisMode.DEDICATED.value, RedisMode.GUIDE.value):
        return parse_redis(mode)
    if mode != RedisMode.EXISTING.value:
        raise InvalidAnswer(Q_REDIS, f"unknown Redis choice {choice.strip()!r}; accepted: "
                                     f"{', '.join(REDIS_CHOICES)}")
    where = location.strip()
    if where in (RedisMode.DEDICATED.value, RedisMode.GUIDE.value) or not where:
        raise InvalidAnswer(
            Q_REDIS_LOCATION, f"Redis location {where!r} does not name a Redis server; accepted: "
                              "unix:/PATH/TO/SOCKET or HOST:PORT")
    try:
        return parse_redis(where)
    except SelectionError as exc:
        raise InvalidAnswer(Q_REDIS_LOCATION, str(exc)) from None


def from_answers(preset: str, types: str, counts: str, socket_group: str, web_user: str,
                 redis: str, redis_location: str) -> tuple[Selection, Settings]:
    """Check every answer; return what to apply or raise :class:`InvalidAnswer`.

    ``types`` and ``counts`` count only with the preset ``custom``, and
    ``redis_location`` only with the Redis choice ``existing``.
    """
    selection = _selection(preset, types, counts)
    group = socket_group.strip()
    try:
        check_system_name("socket group", group)
    except SelectionError as exc:
        raise InvalidAnswer(Q_SOCKET_GROUP, str(exc)) from None
    user = web_user.strip()
    if user:
        try:
            check_system_name("web server user", user)
        except SelectionError as exc:
            raise InvalidAnswer(Q_WEB_USER, str(exc)) from None
    redis_settings = _redis(redis, redis_location)
    return selection, Settings(socket_group=group, web_user=user, redis=redis_settings)


def normalized_counts(counts: Mapping[str, int]) -> str:
    """``role:count`` items in catalog order: the one spelling of a worker set."""
    return ",".join(f"{role}:{counts[role]}" for role in ROLES if counts.get(role))


def counts_from_workers(names: Iterable[str]) -> dict[str, int]:
    """Workers per role among ``names``; names this package did not make are left out."""
    counts: dict[str, int] = {}
    for name in names:
        parsed = parse_worker_name(name)
        if parsed:
            counts[parsed[0].name] = counts.get(parsed[0].name, 0) + 1
    return {role: counts[role] for role in ROLES if role in counts}


def answers_from_workers(names: Iterable[str]) -> Answers:
    """The worker answers that configure exactly the workers ``names``.

    Always the preset ``custom``: the types that are there, and a count for
    each type that has more than one worker.
    """
    counts = counts_from_workers(names)
    return Answers(
        preset=CUSTOM,
        worker_types=", ".join(counts),
        worker_counts=",".join(f"{role}:{n}" for role, n in counts.items() if n > 1),
    )


def deployed_socket_group(root: Path) -> str:
    """The group of the socket directory as the files say (what ``debian/config`` reads)."""
    group = paths.DEFAULT_SOCKET_GROUP
    try:
        text = (root / paths.TMPFILES_OVERRIDE).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return group
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "d" and fields[1] == str(paths.SOCKET_DIR):
            group = fields[4]
    return group


def applied_record(root: Path) -> str:
    """What the postinst records after applying, read from the files under ``root``.

    ``debian/config`` reads the files back in the same spelling and compares:
    only a difference (a hand edit) makes it replace the debconf answers.
    """
    workers = normalized_counts(counts_from_workers(existing_worker_names(root)))
    return f"workers={workers}\nsocket_group={deployed_socket_group(root)}\n"
