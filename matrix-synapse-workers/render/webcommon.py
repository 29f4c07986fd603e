"""Pure: what Apache, Caddy and HAProxy share when they print the routing model.

Every server prints :func:`routing.nginx_model` (the one route table x a plan);
this module holds the few facts they all need beyond it: how a pool's servers
are reached, which requests may be sent again to main, and the 429 a client gets
while main cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass

# Which requests may be sent again to main after a worker failed, and how long a
# client waits while main cannot be reached: decided once, in routing (nginx's rules).
from .routing import MAS_TO_SYNAPSE, REPEATABLE_METHODS, RETRY_AFTER_MS, NginxModel, Upstream

LIMIT_EXCEEDED_BODY = ('{"errcode":"M_LIMIT_EXCEEDED","error":"The server is restarting, '
                       'try again shortly","retry_after_ms":%d}' % RETRY_AFTER_MS)

#: Synapse's admin API: the admin snippets route it (see nginx's admin snippet).
ADMIN_PREFIX = "/_synapse/admin/"
#: The user's key: the localpart of a Synapse-issued token (``syt_<base64>_...``).
SYT_LOCALPART = r"syt_([A-Za-z0-9+/=]+)_"
#: The room id after /rooms/ in a client path.
ROOM_ID = r"^/_matrix/client/.*?/rooms/([^/]+)"


@dataclass(frozen=True)
class Backend:
    """One server of a pool as a web server other than nginx names it."""

    #: ``/run/matrix-synapse/sync-1.sock`` or ``10.0.0.2:18001``.
    address: str
    #: The worker's name (``main`` for main).
    name: str

    @property
    def is_socket(self) -> bool:
        return self.address.startswith("/")


def backends(upstream: Upstream) -> tuple[Backend, ...]:
    """The servers of a routing upstream, without nginx's parameters.

    >>> from .routing import main_upstream
    >>> backends(main_upstream())
    (Backend(address='/run/matrix-synapse/main.sock', name='main'),)
    """
    names = upstream.workers or ("main",)
    return tuple(Backend(server.split()[0].removeprefix("unix:"), name)
                 for server, name in zip(upstream.servers, names))


def main_prefixes(model: NginxModel) -> tuple[str, ...]:
    """The path prefixes whose other requests go to main: Synapse's, and with MAS the
    path MAS calls Synapse on.  With MAS the admin's own MAS routes must come first:
    the classes left to MAS are not in the model, so main would otherwise take them."""
    return ("/_matrix/", "/_synapse/client/") + ((MAS_TO_SYNAPSE,) if model.mas else ())
