"""Pure: the routing model as an Apache 2.4 snippet, included inside the admin's vhost.

Apache's balancer has no hash of a request value; the nearest honest thing is
its sticky session: the route (a worker's name) is chosen from md5 of the key
by :func:`buckets` and handed to the balancer as its cookie.
"""

from __future__ import annotations

from ..core import paths
from ..core.catalog import ENDPOINTS_CHECKED_AGAINST, Version
from ..core.plan import Plan
from .files import RenderedFile, render_template
from .routing import READ_METHODS, Upstream, nginx_model
from .webcommon import (LIMIT_EXCEEDED_BODY, RETRY_AFTER_MS, ROOM_ID, SYT_LOCALPART, Backend, backends,
                        main_prefixes)

HEX = "0123456789abcdef"
#: Seconds a worker that failed is left out of its pool.
RETRY = 10
CONNECT_TIMEOUT = 3
#: The environment variable (set by the snippet's rewrite rules) each hash key reads.
ENV = {"$msw_user": "MSW_USER", "$msw_room": "MSW_ROOM", "$msw_origin": "MSW_ORIGIN"}
#: Where a 503 of the balancer (main cannot be reached) is sent internally, to become
#: the Matrix 429: Apache lets the request of an ErrorDocument answer with another status.
LIMIT_PATH = "/_matrix/msw-limit-exceeded"


def url(backend: Backend) -> str:
    """A BalancerMember URL: ``unix:/run/...sock|http://NAME`` or ``http://host:port``.

    Apache tells socket workers apart by the URL after ``|``: each gets its own name.
    """
    if backend.is_socket:
        return f"unix:{backend.address}|http://{backend.name}"
    return f"http://{backend.address}"


def buckets(upstream: Upstream) -> list[tuple[Backend, str]]:
    """Each worker of a pool and the first hex digits of md5(key) that pick it.

    >>> from .routing import Upstream
    >>> [(b.name, d) for b, d in buckets(Upstream("p", ("unix:/a", "unix:/b"), "$k", ("a", "b")))]
    [('a', '02468ace'), ('b', '13579bdf')]
    """
    members = backends(upstream)[:len(HEX)]
    return [(backend, HEX[index::len(members)]) for index, backend in enumerate(members)]


def apache_files(plan: Plan, version: Version | None = None,
                 mas: bool = False) -> tuple[RenderedFile, ...]:
    """The snippet for the Matrix vhosts, and the one for Synapse's admin API (its media
    part to the media workers, the rest to main), included after it where admins reach it."""
    model = nginx_model(plan, version, mas)
    context = dict(
        model=model, main_prefixes=main_prefixes(model), path=paths.APACHE_CONF,
        admin_path=paths.APACHE_ADMIN_CONF, backends=backends, url=url,
        buckets=buckets, env=ENV, checked=".".join(map(str, ENDPOINTS_CHECKED_AGAINST)),
        retry=RETRY, connect_timeout=CONNECT_TIMEOUT, read_methods=READ_METHODS,
        syt=SYT_LOCALPART, room=ROOM_ID, limit_path=LIMIT_PATH, body=LIMIT_EXCEEDED_BODY,
        retry_after_s=-(-RETRY_AFTER_MS // 1000))
    return (RenderedFile(paths.APACHE_CONF, render_template("apache.conf.j2", **context)),
            RenderedFile(paths.APACHE_ADMIN_CONF, render_template("apache-admin.conf.j2", **context)))
