"""Between debconf and the core: raw answers -> (Selection, Settings), and back.

The debconf questions (debian/templates) hand over plain strings: a preset
name or ``custom``, a multiselect value ``"sync, client"``, a counts string
``"sync:4,federation_sender:2"``, names, a Redis choice.  :func:`from_answers`
checks them all and returns what the apply engine takes, or raises
:class:`InvalidAnswer` naming the question to ask again and a message that
names the bad value and what is accepted.

When Synapse spans machines, the host's role decides which answers count.  A
main host may name worker hosts (``LABEL ADDRESS WORKERS; ...``) and then
needs its private replication address; a worker host gives only its label and
gets no Selection (``None``): its workers come from the cluster file the main
host wrote.  The errors of :mod:`.topology` are traced to the question that
gave the bad value.

:func:`answers_from_workers` goes the other way: from the worker names on
disk to the answers that would configure exactly them, which is what
``debian/config`` (in sh) does when it reads the deployed state back; and
:func:`normalized_counts` is the one spelling of a worker set both use to
record and compare what was applied.

>>> selection, settings = from_answers("custom", "sync, typing", "sync:2", "clubmatrix",
...                                    "www-data", "dedicated", "")
>>> selection.counts
{'sync': 2, 'typing': 1}
>>> selection, settings = from_answers("small", "", "", "clubmatrix", "www-data", "dedicated", "",
...                                    "main", "", "hostb 10.0.0.2 sync:2", "10.0.0.1")
>>> str(settings.topology.replication), [h.label for h in settings.topology.worker_hosts]
('10.0.0.1:9093', ['hostb'])
>>> selection, settings = from_answers("small", "", "", "clubmatrix", "www-data", "dedicated", "",
...                                    "worker-host", "hostb")
>>> selection is None, settings.topology.label
(True, 'hostb')
>>> answers_from_workers(["sync-1", "sync-2", "typing-1"])
Answers(preset='custom', worker_types='sync, typing', worker_counts='sync:2')
>>> normalized_counts({"typing": 1, "sync": 2})
'sync:2,typing:1'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..core import paths
from ..core.catalog import PRESETS, ROLES, resolve_role
from ..core.errors import SelectionError
from ..core.memory import format_budget, parse_budget
from ..system.hostfacts import (deployed_memory_budget, deployed_socket_group, existing_worker_names,
                                metrics_deployed)
from ..core.plan import counts_from_workers
from ..core.selection import AUTO, Selection, parse_workers, select
from ..system.applied import AppliedRecord
from ..system.machine import this_machine
from ..core.settings import RedisMode, Settings, check_system_name, parse_redis
from ..core.webserver import AUTO as AUTO_SERVER, DEBCONF_CHOICES, WebServer, parse_web_server
from ..core.topology import (DEFAULT_REPLICATION_PORT, HOST_ROLES, LABEL_RULE, HostRole, Topology,
                       check_index, check_media_hosts, main_topology, parse_address, parse_worker_hosts,
                       worker_host_topology)

PACKAGE = paths.PACKAGE
CUSTOM = "custom"
#: The debconf questions, by the short name used in messages and code.
Q_PRESET = f"{PACKAGE}/preset"
Q_TYPES = f"{PACKAGE}/worker-types"
Q_COUNTS = f"{PACKAGE}/worker-counts"
Q_SOCKET_GROUP = f"{PACKAGE}/socket-group"
Q_WEB_USER = f"{PACKAGE}/web-user"
Q_REDIS = f"{PACKAGE}/redis"
Q_REDIS_LOCATION = f"{PACKAGE}/redis-location"
Q_HOST_ROLE = f"{PACKAGE}/host-role"
Q_HOST_NAME = f"{PACKAGE}/host-name"
Q_WORKER_HOSTS = f"{PACKAGE}/worker-hosts"
Q_REPLICATION = f"{PACKAGE}/replication-address"
Q_ALLOW_PUBLIC = f"{PACKAGE}/allow-public-address"
Q_METRICS = f"{PACKAGE}/metrics"
Q_SHARED_MEDIA = f"{PACKAGE}/shared-media-store"
Q_MEMORY_BUDGET = f"{PACKAGE}/memory-budget"
#: The server in front: one of :data:`..core.webserver.DEBCONF_CHOICES` (``auto``: detected).
Q_WEB_SERVER = f"{PACKAGE}/web-server"
#: Take over a hand-made worker setup ("adopt", the default) or configure nothing while it
#: is there ("leave"); read by the postinst alone (not an input of :func:`from_answers`).
Q_HAND_MADE = f"{PACKAGE}/hand-made"
HAND_MADE_CHOICES = ("adopt", "leave")
#: Every question :func:`from_answers` takes, in the order of its parameters.
QUESTIONS = (Q_PRESET, Q_TYPES, Q_COUNTS, Q_SOCKET_GROUP, Q_WEB_USER, Q_REDIS, Q_REDIS_LOCATION,
             Q_HOST_ROLE, Q_HOST_NAME, Q_WORKER_HOSTS, Q_REPLICATION, Q_ALLOW_PUBLIC, Q_METRICS,
             Q_SHARED_MEDIA, Q_MEMORY_BUDGET, Q_WEB_SERVER)
#: The choices of the preset question, in template order.
PRESET_CHOICES = (AUTO, *PRESETS, CUSTOM)
#: The key that keeps what ``auto`` resolved to, in the applied record and the pending answers.
AUTO_KEY = "auto"
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
    if key == AUTO:
        return select(preset=key, machine=this_machine())
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


def _host_role(value: str) -> HostRole:
    # Empty: a debconf database from before the question existed; one machine.
    text = value.strip() or HostRole.MAIN.value
    for role in HostRole:
        if role.value == text:
            return role
    raise InvalidAnswer(Q_HOST_ROLE, f"unknown host role {value.strip()!r}; accepted: "
                                     f"{', '.join(HOST_ROLES)}")


def _boolean(question: str, value: str) -> bool:
    text = value.strip()
    if text in ("true", "false", ""):
        return text == "true"
    raise InvalidAnswer(question, f"{question} is {text!r}, which is not a debconf boolean; "
                                  "accepted: true, false")


def _memory_budget(value: str) -> int | None:
    try:
        return parse_budget(value)
    except SelectionError as exc:
        raise InvalidAnswer(Q_MEMORY_BUDGET, str(exc)) from None


def _worker_host(label: str) -> Topology:
    if not label.strip():
        raise InvalidAnswer(Q_HOST_NAME, "no host name given: a worker host needs the name the "
                                         "main host's worker hosts list gives it "
                                         f"({LABEL_RULE})")
    try:
        return worker_host_topology(label)
    except SelectionError as exc:
        raise InvalidAnswer(Q_HOST_NAME, str(exc)) from None


def _main_host(worker_hosts: str, replication_address: str, allow_public: bool,
               shared_media: bool = False) -> Topology:
    """:func:`.topology.main_topology`, each error traced to the question that caused it."""
    try:
        hosts = parse_worker_hosts(worker_hosts)
    except SelectionError as exc:
        raise InvalidAnswer(Q_WORKER_HOSTS, f"worker hosts: {exc}") from None
    if not hosts:
        return Topology()
    try:
        check_media_hosts(hosts, shared_media)
    except SelectionError as exc:
        raise InvalidAnswer(Q_SHARED_MEDIA, str(exc)) from None
    if not replication_address.strip():
        raise InvalidAnswer(Q_REPLICATION, "worker hosts are named, but no replication address: "
                                           "give this main host's address on the private "
                                           "network the worker hosts reach it by (for example "
                                           "10.0.0.1 or 10.0.0.1:9093)")
    # An address that is wrong whatever the confirmation says, then one that
    # is refused only for want of it.
    for question, allowed in ((Q_REPLICATION, True), (Q_ALLOW_PUBLIC, allow_public)):
        try:
            parse_address(replication_address, default_port=DEFAULT_REPLICATION_PORT,
                          what="replication address", allow_public=allowed)
        except SelectionError as exc:
            raise InvalidAnswer(question, str(exc)) from None
    try:
        return main_topology(worker_hosts, replication_address, allow_public, shared_media)
    except SelectionError as exc:
        # What is left is a worker host at main's own address.
        raise InvalidAnswer(Q_WORKER_HOSTS, f"worker hosts: {exc}") from None


def _check_deployment(selection: Selection, topology: Topology, redis_mode: RedisMode) -> None:
    """What only holds across hosts: one writer of each unique stream, ports, Redis."""
    if not topology.worker_hosts:
        return
    for role, count in selection.counts.items():
        try:
            check_index(role, count)
        except SelectionError as exc:
            raise InvalidAnswer(Q_COUNTS, f"worker counts: {exc}") from None
    for name, role in ROLES.items():
        if role.scales:
            continue
        hosts = ["main"] if name in selection.counts else []
        hosts += [h.label for h in topology.worker_hosts if name in h.counts]
        if len(hosts) > 1:
            raise InvalidAnswer(Q_WORKER_HOSTS,
                                f"worker hosts: {name!r} can run only once in the whole "
                                f"deployment, but {', '.join(hosts)} each run one; keep it on "
                                "one host")
    if redis_mode is not RedisMode.DEDICATED:
        raise InvalidAnswer(Q_REDIS, f"Redis {redis_mode.value!r} cannot serve worker hosts: they "
                                     "reach the dedicated instance over the private network, "
                                     "with the password in /etc/matrix-synapse/cluster/; choose "
                                     "'dedicated', or name no worker hosts")


def web_server_answer(value: str) -> WebServer | None:
    """The web server answer; None for ``auto`` (or empty: a debconf database from before
    the question): detected on the host (system/webservers.py)."""
    text = value.strip().lower()
    if text in ("", AUTO_SERVER):
        return None
    try:
        return parse_web_server(text)
    except SelectionError:
        raise InvalidAnswer(Q_WEB_SERVER, f"web server {value.strip()!r} is not known; accepted: "
                                          f"{', '.join(DEBCONF_CHOICES)}") from None


def _names(socket_group: str, web_user: str) -> tuple[str, str]:
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
    return group, user


def from_answers(preset: str, types: str, counts: str, socket_group: str, web_user: str,
                 redis: str, redis_location: str, host_role: str = HostRole.MAIN.value,
                 host_name: str = "", worker_hosts: str = "", replication_address: str = "",
                 allow_public_address: str = "false",
                 metrics: str = "false",
                 shared_media_store: str = "false",
                 memory_budget: str = "auto",
                 web_server: str = AUTO_SERVER) -> tuple[Selection | None, Settings]:
    """Check every answer; return what to apply or raise :class:`InvalidAnswer`.

    ``types`` and ``counts`` count only with the preset ``custom``, and
    ``redis_location`` only with the Redis choice ``existing``.  On a worker
    host the workers and Redis come from the cluster file: the Selection is
    ``None`` and those answers are not looked at, nor are the main host's
    ``worker_hosts``, ``replication_address`` and ``allow_public_address``;
    nor ``web_user``: the web server runs on the main host and reaches the
    workers over TCP; nor ``metrics``: the main host's answer, in cluster.yaml,
    holds for every host.  ``shared_media_store`` (the admin's word that every
    host mounts one media store) counts only for media workers on worker hosts.
    ``memory_budget`` is each host's own.
    ``web_server`` counts only on the main host, where the server in front runs.
    """
    budget = _memory_budget(memory_budget)
    if _host_role(host_role) is HostRole.WORKER_HOST:
        topology = _worker_host(host_name)
        group, _ = _names(socket_group, "")
        return None, Settings(socket_group=group, web_user="", topology=topology,
                              memory_budget=budget)
    selection = _selection(preset, types, counts)
    group, user = _names(socket_group, web_user)
    server = web_server_answer(web_server)
    redis_settings = _redis(redis, redis_location)
    topology = _main_host(worker_hosts, replication_address,
                          _boolean(Q_ALLOW_PUBLIC, allow_public_address),
                          _boolean(Q_SHARED_MEDIA, shared_media_store))
    _check_deployment(selection, topology, redis_settings.mode)
    return selection, Settings(socket_group=group, web_user=user, redis=redis_settings,
                               topology=topology, metrics=_boolean(Q_METRICS, metrics),
                               memory_budget=budget, web_server=server)


def normalized_counts(counts: Mapping[str, int]) -> str:
    """``role:count`` items in catalog order: the one spelling of a worker set."""
    return ",".join(f"{role}:{counts[role]}" for role in ROLES if counts.get(role))


def answers_from_workers(names: Iterable[str]) -> Answers:
    """The worker answers that configure exactly the workers ``names``.

    Always the preset ``custom``: the types that are there, and a count for
    each type that has more than one worker.
    """
    return answers_from_counts(counts_from_workers(names))


def answers_from_counts(counts: Mapping[str, int]) -> Answers:
    """The worker answers that configure exactly ``counts`` (catalog order)."""
    counts = {role: counts[role] for role in ROLES if counts.get(role)}
    return Answers(
        preset=CUSTOM,
        worker_types=", ".join(counts),
        worker_counts=",".join(f"{role}:{n}" for role, n in counts.items() if n > 1),
    )


def decided_auto(preset: str, record: AppliedRecord | None, pending: Mapping[str, str] | None,
                 reconfiguring: bool) -> Selection | None:
    """The preset ``auto`` is decided once, when first applied, and kept: the counts a
    killed run decided (in its pending answers), else the ones last applied, unless the
    admin reconfigures.  None: size it from this machine now.

    Without this, an upgrade after a VM resize would add or remove workers unasked.

    >>> decided_auto("auto", AppliedRecord("sync:1", auto="sync:1"), None, False).counts
    {'sync': 1}
    >>> decided_auto("auto", AppliedRecord("sync:1", auto="sync:1"), None, True) is None
    True
    """
    if preset.strip().lower() != AUTO:
        return None
    kept = (pending or {}).get(AUTO_KEY)
    if not kept and not reconfiguring and record is not None:
        kept = record.auto or record.workers  # a record from before ``auto`` was kept
    if not kept:
        return None
    try:
        return select(workers=kept)
    except SelectionError:  # a record edited by hand: size it now
        return None


def auto_now(machine: tuple[int, int]) -> str:
    """What ``auto`` gives this machine now, for the preset question (debian/config)."""
    from ..core.sizing import describe
    return describe(*machine)


def applied_record(root: Path) -> AppliedRecord:
    """What the postinst records after applying, read from the files under ``root``.

    ``debian/config`` reads the files back in the same spelling and compares:
    only a difference (a hand edit) makes it replace the debconf answers.
    """
    workers = normalized_counts(counts_from_workers(existing_worker_names(root)))
    return AppliedRecord(workers, deployed_socket_group(root),
                         metrics="true" if metrics_deployed(root) else "false",
                         memory_budget=format_budget(deployed_memory_budget(root)))
