"""The one table of worker roles, and the presets built from it.

Everything the package knows about a kind of worker lives in :data:`ROLES`:
which HTTP resources it serves, which stream it writes, which shared-config
duty it holds, whether several may run.  The planner, the renderer and the
change calculator read this table; nothing about a role is written twice.

Facts checked against Synapse 1.163 (``synapse/config/workers.py``) and
upstream's docs/workers.md.  The all-socket layout needs Synapse >= 1.89.

>>> ROLES["typing"].stream
'typing'
>>> ROLES["sync"].scales, ROLES["typing"].scales
(True, False)
>>> resolve_role("federation-reader").name
'federation_reader'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

MIN_SYNAPSE_VERSION = (1, 89, 0)


class DutyKind(Enum):
    """How a duty is written into the shared configuration."""

    #: A list of every instance holding it (``pusher_instances: [a, b]``).
    LIST = "list"
    #: The name of the one instance holding it (``run_background_tasks_on: a``).
    SINGLE = "single"


class Scope(Enum):
    """Which processes read a shared key and so must restart when it changes."""

    #: Main and the workers of this role.
    MAIN_AND_ROLE = "main_and_role"
    #: Every Synapse process (stream writers: every process routes writes to them).
    EVERY_PROCESS = "every_process"


@dataclass(frozen=True)
class Duty:
    """A shared-config key that hands a job from main to workers of a role."""

    key: str
    kind: DutyKind


@dataclass(frozen=True)
class Role:
    """One kind of worker.

    ``resources`` are the HTTP resources on the worker's own socket; a role with
    none still gets a socket serving only ``health`` so that every process can be
    probed.  A role with ``stream`` writes that stream and therefore also gets a
    replication listener and an ``instance_map`` entry.
    """

    name: str
    summary: str
    scales: bool
    resources: tuple[str, ...] = ()
    stream: str | None = None
    duty: Duty | None = None
    #: Keys the shared file sets once any worker of this role exists.
    shared_when_present: Mapping[str, object] = field(default_factory=dict)
    #: A shared key naming the first instance (a job only one of them may run).
    leader_key: str | None = None
    #: Keys in each worker's own file.
    own_config: Mapping[str, object] = field(default_factory=dict)
    #: Every instance must be stopped and started together when the set changes.
    moves_together: bool = False
    #: Synapse marks it experimental: never chosen by a preset.
    experimental: bool = False

    @property
    def needs_replication_listener(self) -> bool:
        return self.stream is not None

    @property
    def needs_instance_map_entry(self) -> bool:
        return self.stream is not None

    @property
    def shared_scope(self) -> Scope | None:
        """Who reads the shared keys this role sets; None if it sets none."""
        if self.stream is not None:
            return Scope.EVERY_PROCESS
        if self.duty is not None or self.shared_when_present or self.leader_key:
            return Scope.MAIN_AND_ROLE
        return None

    @property
    def restarts_main(self) -> bool:
        """Adding or removing an instance changes config main reads."""
        return self.shared_scope is not None

    @property
    def http_resources(self) -> tuple[str, ...]:
        return self.resources or ("health",)


def _writer(name: str, summary: str, *, scales: bool, resources: tuple[str, ...] = ("client",),
            stream: str | None = None, moves_together: bool = False,
            experimental: bool = False) -> Role:
    return Role(name=name, summary=summary, scales=scales, resources=resources,
                stream=stream or name, moves_together=moves_together,
                experimental=experimental)


_ROLE_LIST: tuple[Role, ...] = (
    # Generic workers: no shared config at all, so they come and go freely.
    Role("sync", "client /sync and related reads (sticky per user)", scales=True,
         resources=("client",)),
    Role("client", "client API reads and writes main does not have to do", scales=True,
         resources=("client",)),
    Role("federation_reader", "inbound federation requests", scales=True,
         resources=("federation",)),
    Role("media", "media repository (uploads, downloads, thumbnails)", scales=True,
         resources=("media",),
         shared_when_present={"enable_media_repo": False},
         leader_key="media_instance_running_background_jobs",
         own_config={"enable_media_repo": True}),
    # Duties handed over from main.
    Role("federation_sender", "outbound federation", scales=True,
         duty=Duty("federation_sender_instances", DutyKind.LIST), moves_together=True),
    Role("pusher", "push notifications", scales=True,
         duty=Duty("pusher_instances", DutyKind.LIST)),
    Role("appservice", "application service notifications", scales=False,
         duty=Duty("notify_appservices_from_worker", DutyKind.SINGLE)),
    Role("user_dir", "user directory updates and search", scales=False,
         resources=("client",),
         duty=Duty("update_user_directory_from_worker", DutyKind.SINGLE)),
    Role("background", "background tasks (cleanups, statistics)", scales=False,
         duty=Duty("run_background_tasks_on", DutyKind.SINGLE)),
    # Stream writers.
    _writer("events", "event persister (sharded by room)", scales=True, resources=(),
            moves_together=True),
    _writer("typing", "typing notifications", scales=False),
    _writer("to_device", "to-device messages", scales=False),
    _writer("account_data", "account data and tags", scales=False),
    _writer("receipts", "read receipts", scales=True),
    _writer("presence", "presence", scales=False),
    _writer("push_rules", "push rules", scales=False),
    _writer("device_lists", "device lists and keys", scales=True),
    _writer("quarantined_media", "quarantined media changes", scales=True,
            stream="quarantined_media_changes"),
    _writer("thread_subscriptions", "thread subscriptions (experimental in Synapse)",
            scales=True, experimental=True),
)

#: Every role by its short name.
ROLES: Mapping[str, Role] = MappingProxyType({role.name: role for role in _ROLE_LIST})

#: Other spellings admins type, mapped to the short name.
ALIASES: Mapping[str, str] = MappingProxyType({
    "federation_inbound": "federation_reader",
    "federation_senders": "federation_sender",
    "pushers": "pusher",
    "appservices": "appservice",
    "user_directory": "user_dir",
    "background_tasks": "background",
    "media_repository": "media",
    "event_persister": "events",
    "event_persisters": "events",
    "quarantined_media_changes": "quarantined_media",
})

def resolve_role(name: str) -> Role:
    """Return the role an admin means by ``name`` (hyphens and aliases accepted).

    Raises KeyError for an unknown name; :mod:`selection` turns that into a
    message listing the accepted names.
    """
    key = name.strip().lower().replace("-", "_")
    return ROLES[ALIASES.get(key, key)]


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    counts: Mapping[str, int]


def _one_of_each() -> dict[str, int]:
    return {role.name: 1 for role in _ROLE_LIST if not role.experimental}


_PRESET_LIST: tuple[Preset, ...] = (
    Preset("minimal", "one sync worker: the cheapest split that helps",
           {"sync": 1}),
    Preset("small", "a sync worker and a client reader: best measured split on 2 cores",
           {"sync": 1, "client": 1}),
    Preset("one_of_each", "one worker of every stable role",
           _one_of_each()),
    Preset("busy", "several sync, client, federation and sender workers with every stream writer",
           {**_one_of_each(), "sync": 4, "client": 2, "federation_reader": 2,
            "federation_sender": 2, "events": 2, "pusher": 2}),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESET_LIST})
DEFAULT_PRESET = "small"
