"""The order of the debconf questions and when each is asked: one table for
``debian/config`` (sh) and the postinst's follow-ups.

The order is the one a single-host admin thinks in: the workers, Redis, the web
server (the socket group, which server, its user), metrics; then one question, whether the
deployment spans several machines (:data:`Q_MULTI_HOST`), behind which come the
host's role and the other machines.  That question only gates asking:
``debian/config`` answers it yes itself when the answers already name other
machines, and no resets them, so the answers the postinst reads
(:data:`.answers.QUESTIONS`) say it all.

``debian/config`` walks :data:`FLOW` state by state; each entry's ``sh`` is the
condition it tests there, word for word (tests/unit/test_maintscript.py reads
the script and compares, and runs each sh condition against ``when``).  The
postinst, after asking a question again, asks the entries that follow it and
now apply (:func:`followups`).

>>> answers = {Q_HOST_ROLE: "main", Q_PRESET: "custom", Q_REDIS: "dedicated"}
>>> [q.name.split("/")[1] for q in FLOW if q.when(answers)]  # doctest: +NORMALIZE_WHITESPACE
['preset', 'worker-types', 'worker-counts', 'redis', 'socket-group', 'web-server', 'web-user',
 'metrics', 'multi-host', 'hand-made', 'memory-budget']
>>> [q.name.split("/")[1] for q in FLOW if q.when({**answers, Q_MULTI_HOST: "true"})][-4:-2]
['host-role', 'worker-hosts']
>>> [q.split("/")[1] for q in followups(Q_PRESET, answers)]
['worker-types', 'worker-counts']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from .answers import (CUSTOM, PACKAGE, Q_ALLOW_PUBLIC, Q_COUNTS, Q_HAND_MADE, Q_HOST_NAME, Q_HOST_ROLE,
                      Q_MEMORY_BUDGET, Q_METRICS,
                      Q_PRESET, Q_REDIS, Q_REDIS_LOCATION, Q_REPLICATION, Q_SHARED_MEDIA, Q_SOCKET_GROUP,
                      Q_TYPES, Q_WEB_SERVER, Q_WEB_USER, Q_WORKER_HOSTS)

Answers = Mapping[str, str]

#: "Does this deployment span several machines?": asks nothing the postinst applies.
Q_MULTI_HOST = f"{PACKAGE}/multi-host"


def multi_host(answers: Answers) -> bool:
    return answers.get(Q_MULTI_HOST, "") == "true"


def names_other_hosts(answers: Answers) -> bool:
    return multi_host(answers) and main_host(answers)


def main_host(answers: Answers) -> bool:
    return answers.get(Q_HOST_ROLE, "") != "worker-host"


def worker_host(answers: Answers) -> bool:
    return not main_host(answers)


def custom(answers: Answers) -> bool:
    return main_host(answers) and answers.get(Q_PRESET, "") == CUSTOM


def spans_hosts(answers: Answers) -> bool:
    """Worker hosts are named: the answer has more than blanks and ';'."""
    return main_host(answers) and bool(answers.get(Q_WORKER_HOSTS, "").strip(" \t;"))


def existing_redis(answers: Answers) -> bool:
    return main_host(answers) and answers.get(Q_REDIS, "") == "existing"


def always(answers: Answers) -> bool:
    return True


@dataclass(frozen=True)
class Question:
    name: str
    priority: str
    #: Asked when this holds for the answers so far.
    when: Callable[[Answers], bool]
    #: The same condition as debian/config spells it ('' for always).
    sh: str = ""
    #: The answer whose new value can make this question needed.
    follows: str | None = None


FLOW: tuple[Question, ...] = (
    Question(Q_PRESET, "high", main_host, "main_host"),
    Question(Q_TYPES, "high", custom, "main_host && is preset custom", follows=Q_PRESET),
    Question(Q_COUNTS, "medium", custom, "main_host && is preset custom", follows=Q_PRESET),
    Question(Q_REDIS, "medium", main_host, "main_host"),
    Question(Q_REDIS_LOCATION, "high", existing_redis, "main_host && is redis existing", follows=Q_REDIS),
    Question(Q_SOCKET_GROUP, "low", always),
    # The server in front runs on the main host; detected by default (auto).
    Question(Q_WEB_SERVER, "medium", main_host, "main_host"),
    Question(Q_WEB_USER, "medium", main_host, "main_host"),
    Question(Q_METRICS, "medium", main_host, "main_host"),
    Question(Q_MULTI_HOST, "medium", always),
    Question(Q_HOST_ROLE, "medium", multi_host, "multi_host"),
    Question(Q_HOST_NAME, "high", worker_host, "! main_host", follows=Q_HOST_ROLE),
    Question(Q_WORKER_HOSTS, "medium", names_other_hosts, "multi_host && main_host"),
    Question(Q_REPLICATION, "high", spans_hosts, "spans_hosts", follows=Q_WORKER_HOSTS),
    Question(Q_ALLOW_PUBLIC, "low", spans_hosts, "spans_hosts"),
    # Needed only for media workers on a worker host: asked low here, and by the
    # postinst (critical) when the worker hosts' answer has them.
    Question(Q_SHARED_MEDIA, "low", spans_hosts, "spans_hosts"),
    # Matters only where a hand-made worker setup is found; the default takes it over.
    Question(Q_HAND_MADE, "low", main_host, "main_host"),
    # Each host's own; the default (auto) suits most, so it is asked low.
    Question(Q_MEMORY_BUDGET, "low", always),
)


def followups(question: str, answers: Answers) -> list[str]:
    """What to ask after ``question`` was answered again, so its new value is complete.

    A replication address already given stands when worker hosts are named
    again; a refused confirmation of a public address means the address itself
    must change; a refused confirmation of a shared media store means the media
    workers must move off the worker hosts.
    """
    found = [q.name for q in FLOW if q.follows == question and q.when(answers)
             and not (q.name == Q_REPLICATION and answers.get(Q_REPLICATION, "").strip())]
    if question == Q_ALLOW_PUBLIC and answers.get(Q_ALLOW_PUBLIC, "") != "true":
        found.append(Q_REPLICATION)
    if question == Q_SHARED_MEDIA and answers.get(Q_SHARED_MEDIA, "") != "true":
        found.append(Q_WORKER_HOSTS)
    return found
