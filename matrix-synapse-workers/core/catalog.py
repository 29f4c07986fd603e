"""The one table of worker roles, and the presets built from it.

Everything the package knows about a kind of worker lives in :data:`ROLES`:
which HTTP resources it serves, which stream it writes, which shared-config
duty it holds, whether several may run.  The planner, the renderer and the
change calculator read this table; nothing about a role is written twice.

Facts checked against Synapse 1.163 (``synapse/config/workers.py``) and
upstream's docs/workers.md.  The all-socket layout needs Synapse >= 1.89.

The reverse proxy's routes live here too, in :data:`ENDPOINTS`: each class of
endpoints names its URL patterns once and the roles that serve it, in order of
preference (main serves whatever no worker takes).  :mod:`routing` turns this
table and a plan into the nginx model; tests/synapse checks the table against
the servlets the installed Synapse registers on a generic worker.

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

#: A Synapse release as (major, minor, patch).
Version = tuple[int, int, int]

MIN_SYNAPSE_VERSION: Version = (1, 89, 0)


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
    #: It holds nothing another process waits on (no stream, no duty): one instance
    #: can restart while the others (or main) serve its requests, so a change that
    #: touches only such workers restarts them one at a time (core/restarts.py).
    stateless: bool = False
    #: Synapse marks it experimental: never chosen by a preset.
    experimental: bool = False
    #: The first Synapse release that knows this role (None: every supported one).
    since: Version | None = None
    #: The first Synapse release that accepts more than one of it (None: as ``since``).
    several_since: Version | None = None
    #: Main stays one of the stream's writers too (it runs a background update that
    #: writes the stream: the quarantined media one).
    main_writes_too: bool = False
    #: It opens connections to other servers itself (federation, media, push
    #: gateways, mail, appservices): its unit keeps outbound network.  Otherwise
    #: it reaches only PostgreSQL, Redis and replication (render/sandbox.py).
    outbound: bool = False
    #: Why, from Synapse's source: shown in the sandbox drop-in and docs/design.md.
    network_why: str = ""
    #: Its share of the host's memory budget beside the others' (core/memory.py):
    #: processes that answer reads from their caches (sync, client) weigh more.
    cache_weight: int = 1

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

    @property
    def serves_media(self) -> bool:
        """It runs the media repository (its own media store, the media admin API)."""
        return "media" in self.resources


_WRITER_WHY = ("writes its stream to the database and tells other processes over "
               "replication; what goes to other servers leaves through the federation senders")


def _writer(name: str, summary: str, *, scales: bool, resources: tuple[str, ...] = ("client",),
            stream: str | None = None, moves_together: bool = False,
            experimental: bool = False, since: Version | None = None,
            outbound: bool = False, network_why: str = _WRITER_WHY, **more: object) -> Role:
    return Role(name=name, summary=summary, scales=scales, resources=resources,
                stream=stream or name, moves_together=moves_together,
                experimental=experimental, since=since, outbound=outbound,
                network_why=network_why, **more)  # type: ignore[arg-type]


_ROLE_LIST: tuple[Role, ...] = (
    # Generic workers: no shared config at all, so they come and go freely.
    Role("sync", "client /sync and related reads (sticky per user)", scales=True, stateless=True,
         resources=("client",), cache_weight=3,
         network_why="answers /sync from the database and replication; fetches nothing remote"),
    Role("client", "client API reads and writes main does not have to do", scales=True, stateless=True,
         resources=("client",), outbound=True, cache_weight=2,
         network_why="asks other servers itself: remote profiles, /keys/query and /keys/claim "
                     "for remote users, remote room directories, identity servers"),
    Role("federation_reader", "inbound federation requests", scales=True, stateless=True,
         resources=("federation",), outbound=True, cache_weight=2,
         network_why="fetches the sending servers' signing keys (directly or from "
                     "trusted_key_servers) and missing events and state"),
    Role("media", "media repository (uploads, downloads, thumbnails)", scales=True, stateless=True,
         resources=("media",),
         shared_when_present={"enable_media_repo": False},
         leader_key="media_instance_running_background_jobs",
         own_config={"enable_media_repo": True}, outbound=True,
         network_why="downloads remote media and fetches URL previews (and oEmbed)"),
    # Duties handed over from main.
    Role("federation_sender", "outbound federation", scales=True,
         duty=Duty("federation_sender_instances", DutyKind.LIST), moves_together=True,
         outbound=True, network_why="sends transactions to every other server"),
    Role("pusher", "push notifications", scales=True,
         duty=Duty("pusher_instances", DutyKind.LIST), outbound=True,
         network_why="posts to push gateways and sends notification mail (SMTP)"),
    Role("appservice", "application service notifications", scales=False,
         duty=Duty("notify_appservices_from_worker", DutyKind.SINGLE), outbound=True,
         network_why="sends transactions to the application services' URLs"),
    Role("user_dir", "user directory updates and search", scales=False,
         resources=("client",),
         duty=Duty("update_user_directory_from_worker", DutyKind.SINGLE),
         network_why="indexes and searches the directory in the database; "
                     "fetches nothing remote"),
    # It serves the client API too: local membership changes go to it (see the
    # "membership" class of ENDPOINTS for why).
    Role("background", "background tasks (cleanups, statistics, profile updates in rooms) "
         "and membership changes", scales=False, resources=("client",),
         duty=Duty("run_background_tasks_on", DutyKind.SINGLE), outbound=True,
         network_why="runs the background tasks: phoning home stats (report_stats) and "
                     "account validity renewal mail"),
    # Stream writers.
    _writer("events", "event persister (sharded by room)", scales=True, resources=(),
            moves_together=True, outbound=True, cache_weight=2,
            network_why="persisting a client's invite of a remote user asks that user's server to "
                        "sign it (EventCreationHandler.persist_and_notify_client_events calls "
                        "send_invite on the writer)"),
    _writer("typing", "typing notifications", scales=False),
    _writer("to_device", "to-device messages", scales=False),
    _writer("account_data", "account data and tags", scales=False),
    _writer("receipts", "read receipts", scales=True, several_since=(1, 96, 0)),
    _writer("presence", "presence", scales=False),
    _writer("push_rules", "push rules", scales=False, since=(1, 105, 0)),
    _writer("device_lists", "device lists and keys", scales=True, since=(1, 135, 0),
            outbound=True,
            network_why="the first device_lists writer resyncs remote users' device lists "
                        "over federation (DeviceListUpdater)"),
    # Synapse 1.152 made quarantining write this stream, and only its writers (which
    # must run the media repository, whose admin servlets do the quarantining) may
    # do it.  Offered from 1.159: 1.152 to 1.158 never send the stream from a worker
    # writer, so other processes never see its position move and /sync can wait
    # for it for ever (element-hq/synapse#20080, fixed by #20085).  Main stays a
    # writer: it runs the background update that records already quarantined media.
    _writer("quarantined_media", "media repository that also quarantines media", scales=True,
            resources=("media",), stream="quarantined_media_changes", since=(1, 159, 0),
            shared_when_present={"enable_media_repo": False},
            leader_key="media_instance_running_background_jobs",
            own_config={"enable_media_repo": True}, main_writes_too=True, outbound=True,
            network_why="a media repository: downloads remote media and fetches URL previews"),
    _writer("thread_subscriptions", "thread subscriptions (experimental in Synapse)",
            scales=True, experimental=True, since=(1, 135, 0)),
    # A generic worker like sync, listed last so that the ports topology derives
    # from each role's place stay what they were.
    Role("initial_sync", "initial /sync (no since) and /initialSync, sticky per user", scales=True,
         resources=("client",), cache_weight=3,
         network_why="answers from the database and replication; fetches nothing remote"),
)

#: Main's weight in the memory budget (Role.cache_weight): it serves whatever no
#: worker took, so it keeps the caches of a sync worker.
MAIN_CACHE_WEIGHT = 3

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
    Preset("minimal", "one sync worker: the split that measured best on 2 cores",
           {"sync": 1}),
    Preset("small", "a sync worker and a client reader",
           {"sync": 1, "client": 1}),
    Preset("one_of_each", "one worker of every stable type",
           _one_of_each()),
    Preset("busy", "several sync, client, federation and sender workers with every stream writer",
           {**_one_of_each(), "sync": 4, "client": 2, "federation_reader": 2,
            "federation_sender": 2, "events": 2, "pusher": 2}),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESET_LIST})


# --------------------------------------------------------------------------
# Reverse-proxy routes: the one table of which endpoints go to which role.


class Balance(Enum):
    """How requests of one endpoint class are spread over a pool of workers."""

    #: Any worker will do (least connections).
    ANY = "any"
    #: The same user to the same worker: the localpart of a Synapse-issued
    #: ``syt_`` access token, or the whole token when it is of another form.
    USER = "user"
    #: The same room to the same worker: the room id after ``/rooms/`` in the path.
    ROOM = "room"
    #: The same remote server to the same worker: the X-Matrix origin, else the address.
    ORIGIN = "origin"


@dataclass(frozen=True)
class Endpoints:
    """A class of endpoints and who serves it.

    ``patterns`` are anchored PCRE regexes (valid for nginx and for Python's
    ``re``), matched against the request path in the order of :data:`ENDPOINTS`
    (the first class that matches wins).  ``roles`` serve every method, first
    role with workers first; ``read_roles`` serve only GET and HEAD when none of
    ``roles`` has workers.  Main serves the rest, and every request whose pool is
    down.  ``resource`` is the listener resource a worker needs to serve them.
    ``initial_roles`` take the requests without a ``since`` argument (initial
    syncs, the heavy ones) when one of them has workers.

    ``since`` and ``until`` bound the Synapse versions whose workers serve the
    class (``until`` excluded): an endpoint that moved off main in some release
    stays on main for older ones.

    A servlet registered on a worker is not proof that the worker can answer:
    the handler behind it may work only on a stream's writer (Synapse then
    answers 500).  ``why`` says which handler lets each named role serve the
    class (or why main keeps it), read from Synapse's source; check it when you
    add a role or a route.  ``writers_only`` marks a class whose handler works
    only on its stream's writer: only that writer role may serve it, and main
    (the writer when there is none) takes it otherwise.

    >>> ENDPOINTS["delayed_events_restart"].applies_to((1, 143, 5))
    False
    >>> [ENDPOINTS["delayed_events_restart"].applies_to(v) for v in ((1, 144, 0), None)]
    [True, True]
    """

    name: str
    summary: str
    resource: str
    patterns: tuple[str, ...]
    roles: tuple[str, ...] = ()
    read_roles: tuple[str, ...] = ()
    balance: Balance = Balance.ANY
    initial_roles: tuple[str, ...] = ()
    #: The first Synapse release whose workers serve these; None: every supported one.
    since: Version | None = None
    #: The first Synapse release this entry no longer describes; None: still current.
    until: Version | None = None
    #: Why the roles named can serve these (the handler a worker has), or why main keeps them.
    why: str = ""
    #: Only the stream's writer (or main) can answer any request of this class.
    writers_only: bool = False
    #: With the Matrix Authentication Service on, MAS serves these or Synapse drops
    #: them: the class gets no location, so the admin's MAS location wins wherever
    #: it stands (or main answers, through the catch-all).
    left_to_mas: bool = False
    #: Synapse registers these only with MAS on: no location without it.
    mas_only: bool = False

    @property
    def admin(self) -> bool:
        """Synapse's admin API: its locations go to the admin snippet, not the client one."""
        return all(p.startswith(ADMIN_PREFIX) for p in self.patterns)

    def applies_to(self, version: Version | None) -> bool:
        """Whether the class describes this Synapse; None (unknown) is the newest."""
        if version is None:
            return self.until is None
        return ((self.since is None or version >= self.since)
                and (self.until is None or version < self.until))


_CS = "^/_matrix/client/"
_V = "(api/v1|r0|v3|unstable)"   # every client API version prefix
_R = "(r0|v3|unstable)"
_F = "^/_matrix/federation/"
#: Synapse's admin API (served to admins through their own snippet: see render/routing.py).
ADMIN_PREFIX = "^/_synapse/admin/"
_A = "^/_synapse/admin/v1/"
#: Local membership changes: POST, or PUT with a transaction id; joins by alias; knocks.
_MEMBERSHIP = (f"{_CS}{_V}/rooms/.*/(join|invite|leave|ban|unban|kick)(/[^/]*)?$",
               f"{_CS}{_V}/join/", f"{_CS}{_R}/knock/")

# Patterns follow the servlet regexes Synapse registers on a generic worker
# (version prefixes included: a prefix a worker does not register would get a
# 404 from the worker); tests/synapse checks them against the installed Synapse.
# since/until were checked the same way against Synapse 1.89.0, 1.92.1, 1.110.0,
# 1.134.0 and 1.143.0 (the table chosen for each of those versions).
_ENDPOINT_LIST: tuple[Endpoints, ...] = (
    # Stream writers first: their endpoints would otherwise match broader classes.
    Endpoints("typing", "typing notifications", "client",
              (f"{_CS}{_V}/rooms/.*/typing",), roles=("typing",),
              why=("Only the typing writer has TypingWriterHandler "
                   "(HomeServer.get_typing_writer_handler refuses on any other process); others "
                   "hold a FollowerTypingHandler that only reads."), writers_only=True),
    Endpoints("to_device", "to-device messages", "client",
              (f"{_CS}{_R}/sendToDevice/",), roles=("to_device",),
              why=("DeviceMessageHandler stores messages through add_messages_to_device_inbox, "
                   "which asserts that the process writes the to_device stream."), writers_only=True),
    Endpoints("account_data", "account data and tags", "client",
              (f"{_CS}{_R}/.*/tags", f"{_CS}{_R}/.*/account_data"),
              roles=("account_data",), read_roles=("client",),
              why=("Writes: AccountDataHandler on the account_data writer (main when none). Reads: "
                   "AccountDataServlet and TagListServlet GET read the store, which every worker "
                   "has.")),
    Endpoints("receipts", "read receipts and markers", "client",
              (f"{_CS}{_R}/rooms/.*/receipt", f"{_CS}{_R}/rooms/.*/read_markers"),
              roles=("receipts",),
              why=("ReceiptsHandler stores receipts through insert_receipt, which asserts that the "
                   "process writes the receipts stream; read_markers sends m.read through the same "
                   "handler."), writers_only=True),
    Endpoints("presence", "presence", "client",
              (f"{_CS}{_V}/presence/",), roles=("presence",),
              why=("Only a presence writer has PresenceHandler; WorkerPresenceHandler.is_visible "
                   "raises NotImplementedError, so reading another user's presence fails on any "
                   "other process."), writers_only=True),
    Endpoints("push_rules", "push rules", "client",
              (f"{_CS}{_V}/pushrules/",), roles=("push_rules",), read_roles=("client",),
              why=("Writes: PushRuleRestServlet refuses PUT and DELETE off the push_rules writer "
                   "(main when none). Reads: PushRulesHandler.push_rules_for_user reads the store, "
                   "on any worker.")),
    # Device changes left main in 1.135 (with the device_lists stream writers).
    Endpoints("device_lists", "devices and key uploads", "client",
              (f"{_CS}{_R}/delete_devices$", f"{_CS}{_R}/devices(/|$)",
               f"{_CS}{_R}/keys/upload", f"{_CS}(v3|unstable)/keys/device_signing/upload$",
               f"{_CS}{_R}/keys/signatures/upload$"),
              roles=("device_lists", "client"), since=(1, 135, 0),
              why=("From 1.135 DeviceHandler on any worker changes devices and keys itself and "
                   "asks a device_lists writer (main when none) over replication to send the "
                   "update (notify_device_update).")),
    Endpoints("keys_upload_before_1_135", "key uploads", "client",
              (f"{_CS}{_R}/keys/upload",), roles=("client",), until=(1, 135, 0),
              why=("KeyUploadServlet on a worker hands the upload to main over replication "
                   "(ReplicationUploadKeysForUserRestServlet).")),
    Endpoints("devices_before_1_135", "the device list (reads)", "client",
              (f"{_CS}{_R}/devices$",), read_roles=("client",), until=(1, 135, 0),
              why=("DeviceWorkerHandler.get_devices_by_user reads the store; changes need main's "
                   "DeviceHandler before 1.135.")),
    Endpoints("device_1_130_to_1_134", "one device (reads; workers serve them from 1.130)",
              "client", (f"{_CS}{_R}/devices/[^/]+$",), read_roles=("client",),
              since=(1, 130, 0), until=(1, 135, 0),
              why=("DeviceWorkerHandler.get_device reads the store; changes need main's "
                   "DeviceHandler before 1.135.")),
    Endpoints("dehydrated_device_msc2697", "legacy dehydrated devices (1.135 to 1.145)", "client",
              (f"{_CS}unstable/org\\.matrix\\.msc2697\\.v2/dehydrated_device(/claim)?$",),
              roles=("client",), since=(1, 135, 0), until=(1, 146, 0),
              why=("From 1.135 DeviceHandler on any worker stores and claims dehydrated devices.")),
    Endpoints("user_directory", "user directory search", "client",
              (f"{_CS}{_R}/user_directory/search$",), roles=("user_dir", "client"),
              why=("UserDirectoryHandler.search_users reads the directory tables any worker has; "
                   "only updating them is a duty (update_user_directory_from_worker).")),
    # Single sign-on: every step of one login must reach the same process.
    Endpoints("sso", "single sign-on (kept on main: one process for every step)", "client",
              (f"{_CS}{_V}/login/sso/redirect", "^/_synapse/client/pick_idp$",
               "^/_synapse/client/pick_username", "^/_synapse/client/new_user_consent$",
               "^/_synapse/client/sso_register$", "^/_synapse/client/oidc/callback$",
               "^/_synapse/client/saml2/authn_response$", f"{_CS}{_V}/login/cas/ticket$"),
              why=("Main only: SsoHandler keeps each login's pending session in the process's "
                   "memory, so every step of one login must reach the same process. Synapse "
                   "refuses SSO with MAS, which serves login/sso/redirect itself."),
              left_to_mas=True),
    # Initial syncs (no since) are the heavy ones: their own pool when there is one.
    Endpoints("sync", "/sync, sticky per user; initial syncs to their own pool if any", "client",
              (f"{_CS}{_R}/sync$",), roles=("sync", "client"), initial_roles=("initial_sync",),
              balance=Balance.USER,
              why=("SyncHandler builds responses from the store and the replication streams every "
                   "worker follows; sticky per user so that the per-user caches stay warm.")),
    Endpoints("initial_sync", "/initialSync of the account or a room, sticky per user", "client",
              (f"{_CS}{_V}/initialSync$", f"{_CS}{_V}/rooms/[^/]+/initialSync$"),
              roles=("initial_sync", "sync", "client"), balance=Balance.USER,
              why=("InitialSyncHandler reads the store, on any worker.")),
    Endpoints("event_stream", "the legacy /events stream, sticky per user", "client",
              (f"{_CS}{_V}/events$",), roles=("sync", "client"), balance=Balance.USER,
              why=("EventStreamHandler waits on the Notifier, which every worker feeds from "
                   "replication.")),
    # Sliding sync: before 1.111 only with an experimental flag (main serves it then).
    Endpoints("sliding_sync", "sliding sync, sticky per user like /sync", "client",
              (f"{_CS}unstable/org\\.matrix\\.simplified_msc3575/sync$",),
              roles=("sync", "client"), balance=Balance.USER, since=(1, 111, 0),
              why=("SlidingSyncHandler reads like SyncHandler, on any worker.")),
    Endpoints("sliding_sync_e2ee", "sliding sync's to-device stream (1.111 to 1.138)", "client",
              (f"{_CS}unstable/org\\.matrix\\.msc3575/sync/e2ee$",),
              roles=("sync", "client"), balance=Balance.USER, since=(1, 111, 0), until=(1, 139, 0),
              why=("SlidingSyncHandler reads like SyncHandler, on any worker.")),
    # Membership changes to the process that runs background tasks (1.150+).  From 1.150
    # a display name or avatar change only schedules a task (ProfileHandler.
    # _update_join_states, element-hq/synapse#19311); the task runs on
    # run_background_tasks_on and writes the user's new join in every room through
    # RoomMemberHandler.update_membership, which holds member_linearizer, a lock of
    # that process's memory, per room.  A leave built meanwhile on a client worker is
    # not serialised with it: it may cite both the old and the new join as auth
    # events and is refused ("duplicate auth_events", 403; element-hq/synapse#19575,
    # #18621).  On one process the linearizer orders the two, so the membership
    # changes of local users go where the task runs.  Before 1.150 the profile
    # request wrote the joins itself before answering, so the client workers keep them.
    Endpoints("membership", "membership changes, where profile changes update the rooms (1.150+)",
              "client", _MEMBERSHIP, roles=("background",), since=(1, 150, 0),
              why=("RoomMemberHandler.update_membership on the run_background_tasks_on process "
                   "(the background worker, else main) holds the same per-room member_linearizer "
                   "as the profile-update task (ProfileHandler._update_join_states_task), so a "
                   "leave waits for the new join instead of racing it; remote joins and leaves "
                   "still go to main over replication (RoomMemberWorkerHandler).")),
    Endpoints("membership_before_1_150", "membership changes (before 1.150)", "client",
              _MEMBERSHIP, roles=("client",), balance=Balance.ROOM, until=(1, 150, 0),
              why=("RoomMemberWorkerHandler: local changes through EventCreationHandler (events "
                   "via replication), remote joins and leaves handed to main.")),
    Endpoints("thread_subscriptions", "thread subscriptions (MSC4306, experimental)", "client",
              (f"{_CS}unstable/io\\.element\\.msc4306/",), roles=("thread_subscriptions",),
              since=(1, 135, 0),
              why=("ThreadSubscriptionsHandler stores subscriptions through "
                   "subscribe_user_to_thread, which asserts that the process writes the "
                   "thread_subscriptions stream (servlets registered only with "
                   "experimental_features.msc4306_enabled)."), writers_only=True),
    Endpoints("thread_subscriptions_list", "the thread subscriptions list (MSC4308)", "client",
              (f"{_CS}unstable/io\\.element\\.msc4308/thread_subscriptions$",),
              roles=("thread_subscriptions",), since=(1, 139, 0),
              why=("ThreadSubscriptionsPaginationRestServlet reads the store; its writer sees "
                   "its own changes first.")),
    Endpoints("room", "room reads and event sending, one worker per room", "client",
              (f"{_CS}{_V}/rooms/.*/messages$", f"{_CS}{_V}/rooms/.*/context/.*$",
               f"{_CS}{_V}/rooms/.*/members$", f"{_CS}{_V}/rooms/.*/joined_members$",
               f"{_CS}{_V}/rooms/.*/state$", f"{_CS}v1/rooms/.*/hierarchy$",
               f"{_CS}(v1|unstable)/rooms/.*/relations/", f"{_CS}v1/rooms/.*/threads$",
               f"{_CS}{_V}/rooms/.*/event/", f"{_CS}v1/rooms/.*/timestamp_to_event$",
               f"{_CS}(r0|v3|unstable/org\\.matrix\\.msc2432)/rooms/[^/]+/aliases$",
               f"{_CS}{_V}/rooms/.*/redact", f"{_CS}{_V}/rooms/.*/send",
               f"{_CS}{_V}/rooms/.*/state/"),
              roles=("client",), balance=Balance.ROOM,
              why=("Reads: MessageHandler, PaginationHandler, RelationsHandler read the store. "
                   "Writes: EventCreationHandler hands events to an event persister (main when "
                   "none) over replication; RoomMemberWorkerHandler hands remote joins and leaves "
                   "to main.")),
    # Password login and registration: the Matrix Authentication Service's, when it is on.
    Endpoints("password_auth", "login and registration (left to MAS when it is on)", "client",
              (f"{_CS}{_V}/login$", f"{_CS}{_R}/register$", f"{_CS}{_R}/register/available$",
               f"{_CS}(v1|unstable)/register/m\\.login\\.registration_token/validity$"),
              roles=("client",), left_to_mas=True,
              why=("AuthHandler and RegistrationHandler work on any worker. With MAS Synapse "
                   "registers no login servlet and only appservice registration (main answers "
                   "it); MAS serves /login, /logout and /refresh itself.")),
    Endpoints("client", "other client API reads and writes a generic worker serves", "client",
              (f"{_CS}{_V}/createRoom(/[^/]*)?$", f"{_CS}{_V}/publicRooms$",
               f"{_CS}{_R}/account/3pid$", f"{_CS}{_R}/account/whoami$",
               f"{_CS}versions$",
               f"{_CS}{_V}/voip/turnServer$", f"{_CS}{_V}/joined_rooms$",
               f"{_CS}{_V}/events/[^/]+$",
               f"{_CS}{_V}/search$", f"{_CS}{_R}/user/.*/filter(/|$)",
               f"{_CS}{_V}/directory/room/.*$", f"{_CS}{_R}/capabilities$",
               f"{_CS}{_R}/keys/query$", f"{_CS}{_R}/keys/changes$", f"{_CS}{_R}/keys/claim$",
               f"{_CS}{_R}/room_keys/",
               f"{_CS}{_R}/password_policy$",
               f"{_CS}{_V}/profile/",
               f"{_CS}(v1|unstable)/appservice/[^/]+/ping$"),
              roles=("client",),
              why=("Generic-worker handlers: AuthHandler and RegistrationHandler, ProfileHandler, "
                   "RoomCreationHandler (events via replication), DirectoryHandler, E2eKeysHandler "
                   "(query/claim), E2eRoomKeysHandler, SearchHandler, RoomMemberWorkerHandler for "
                   "joins and knocks.")),
    # With MAS: where clients find MAS (MSC2965), answered from MAS's metadata.
    Endpoints("auth_metadata", "the authorization server's metadata (with MAS only)", "client",
              (f"{_CS}(v1|unstable|unstable/org\\.matrix\\.msc2965)/auth_metadata$",),
              roles=("client",), since=(1, 136, 0), mas_only=True,
              why=("AuthMetadataServlet asks the MasDelegatedAuth of its own process, which "
                   "fetches (and caches) MAS's openid-configuration: any worker.")),
    # Before 1.153 only with an experimental flag; main serves it then.
    Endpoints("room_summary", "room summaries (workers serve them from 1.153)", "client",
              (f"{_CS}unstable/im\\.nheko\\.summary/(summary/[^/]+|rooms/[^/]+/summary)$",
               f"{_CS}v1/room_summary/[^/]+$"), roles=("client",), since=(1, 153, 0),
              why=("RoomSummaryHandler reads the store (and asks remote servers), on any worker.")),
    Endpoints("notifications", "the notifications list (workers serve it from 1.93)", "client",
              (f"{_CS}{_R}/notifications$",), roles=("client",), since=(1, 93, 0),
              why=("NotificationsServlet reads push actions from the store, on any worker (1.93+).")),
    Endpoints("account_deactivate", "account deactivation (workers serve it from 1.135)",
              "client", (f"{_CS}{_R}/account/deactivate$",), roles=("client",),
              since=(1, 135, 0),
              why=("From 1.135 DeactivateAccountHandler runs on workers and hands the parts that "
                   "need main to it over replication. With MAS, MAS deactivates accounts and "
                   "Synapse registers no such servlet."), left_to_mas=True),
    Endpoints("delayed_events_restart", "restarting a delayed event's timer (workers: from 1.144)",
              "client",
              (f"{_CS}unstable/org\\.matrix\\.msc4140/delayed_events/[^/]+/restart$",),
              roles=("client",), since=(1, 144, 0),
              why=("DelayedEventsHandler.restart on a worker forwards to main over replication.")),
    Endpoints("delayed_events", "delayed events (reads; changes stay on main)", "client",
              (f"{_CS}unstable/org\\.matrix\\.msc4140/delayed_events$",),
              read_roles=("client",), since=(1, 116, 0),
              why=("DelayedEventsHandler.get_all_for_user reads the store; changes need main's "
                   "handler.")),
    Endpoints("delayed_event", "one delayed event (reads; changes stay on main)", "client",
              (f"{_CS}unstable/org\\.matrix\\.msc4140/delayed_events/[^/]+$",),
              read_roles=("client",), since=(1, 161, 0),
              why=("DelayedEventsHandler reads one delayed event from the store; changes need "
                   "main's handler.")),
    Endpoints("media", "the media repository", "media",
              ("^/_matrix/media/", f"{_CS}v1/media/", f"{_F}v1/media/"),
              roles=("media", "quarantined_media"),
              why=("MediaRepository runs only where enable_media_repo is true: the media workers "
                   "(main when there is none).")),
    # The media admin API: registered only where the media repository runs
    # (register_servlets_for_media_repo), so with media workers main answers 404.
    Endpoints("media_quarantine", "quarantining media (admin API; its stream's writers from 1.152)",
              "media",
              (f"{_A}quarantine_media/", f"{_A}room/[^/]+/media/quarantine$",
               f"{_A}user/[^/]+/media/quarantine$", f"{_A}media/quarantine/",
               f"{_A}media/unquarantine/", f"{_A}media/quarantine_changes$"),
              roles=("quarantined_media", "media"),
              why=("Before 1.152 any media repository quarantines. From 1.152 RoomWorkerStore._insert_quarantine_changes_txn asserts that the "
                   "process writes quarantined_media_changes, and only media repositories "
                   "register these servlets: the quarantined_media workers are both. A media "
                   "worker that is not a writer answers 500: deploy a quarantined_media worker "
                   "(Synapse 1.159+).")),
    Endpoints("media_admin", "the media admin API (listing, purging, deleting media)", "media",
              (f"{_A}purge_media_cache$", f"{_A}room/.*/media", f"{_A}user/.*/media",
               f"{_A}media/", f"{_A}users/.*/media$"),
              roles=("media", "quarantined_media"),
              why=("register_servlets_for_media_repo puts these on every process that runs "
                   "MediaRepository (enable_media_repo true): the media workers; main has them "
                   "only while it keeps the media repository.")),
    Endpoints("federation_send", "inbound federation transactions, by origin server",
              "federation", (f"{_F}v1/send/",),
              roles=("federation_reader",), balance=Balance.ORIGIN,
              why=("FederationServer on a worker: PDUs go to an event persister over replication, "
                   "EDUs it cannot handle are forwarded to their writer "
                   "(register_instances_for_edu).")),
    Endpoints("federation", "other inbound federation requests", "federation",
              (f"{_F}v1/version$", f"{_F}v1/event/", f"{_F}v1/state/", f"{_F}v1/state_ids/",
               f"{_F}v1/backfill/", f"{_F}v1/get_missing_events/", f"{_F}v1/publicRooms",
               f"{_F}v1/query/", f"{_F}v1/make_join/", f"{_F}v1/make_leave/",
               f"{_F}(v1|v2)/send_join/", f"{_F}(v1|v2)/send_leave/",
               f"{_F}v1/make_knock/", f"{_F}v1/send_knock/",
               f"{_F}(v1|v2)/invite/", f"{_F}v1/event_auth/", f"{_F}v1/timestamp_to_event/",
               f"{_F}v1/exchange_third_party_invite/", f"{_F}v1/user/devices/",
               f"{_F}v1/user/keys/(claim|query)$", f"{_F}v1/openid/userinfo$",
               f"{_F}v1/3pid/onbind$", f"{_F}unstable/rooms/[^/]+/complexity$",
               "^/_matrix/key/v2/query", f"{_F}v1/hierarchy/"),
              roles=("federation_reader",),
              why=("FederationServer and FederationHandler read the store on any worker; send_join "
                   "and invites persist events through replication.")),
)

#: Every endpoint class by name, in matching order.
ENDPOINTS: Mapping[str, Endpoints] = MappingProxyType({e.name: e for e in _ENDPOINT_LIST})
#: The Synapse version whose registered servlets the table was last checked against.
ENDPOINTS_CHECKED_AGAINST = (1, 163, 2)
