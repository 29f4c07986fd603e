"""Pure: the routing files of the chosen web server, and only those."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Callable

from ..core import paths
from ..core.catalog import Version
from ..core.plan import Plan
from ..core.webserver import WebServer
from .apache import apache_files
from .caddy import caddy_files
from .files import RenderedFile, nginx_admin_file, nginx_files
from .routing import MAX_BODY_SIZE
from .haproxy import haproxy_files

def _nginx(plan: Plan, version: Version | None, mas: bool,
           max_body: str = MAX_BODY_SIZE) -> tuple[RenderedFile, ...]:
    """nginx's routing files and its snippet for the admin API."""
    return (*nginx_files(plan, version, mas, max_body), nginx_admin_file(plan, version, max_body))


_RENDERERS: dict[WebServer, Callable[[Plan, Version | None, bool], tuple[RenderedFile, ...]]] = {
    WebServer.NGINX: _nginx,
    WebServer.APACHE: apache_files,
    WebServer.CADDY: caddy_files,
    WebServer.HAPROXY: haproxy_files,
}

#: Every routing file of every server: a switch of server removes the old ones.
ALL_PATHS: dict[WebServer, tuple[PurePosixPath, ...]] = {
    WebServer.NGINX: (paths.NGINX_HTTP_CONF, paths.NGINX_SNIPPET, paths.NGINX_ADMIN_SNIPPET),
    WebServer.APACHE: (paths.APACHE_CONF, paths.APACHE_ADMIN_CONF),
    WebServer.CADDY: (paths.CADDY_SNIPPET, paths.CADDY_ADMIN_SNIPPET),
    WebServer.HAPROXY: (paths.HAPROXY_CONF,),
    WebServer.NONE: (),
}
#: The files for Synapse's admin API: included only where admins reach it (optional).
ADMIN_PATHS = frozenset((paths.NGINX_ADMIN_SNIPPET, paths.APACHE_ADMIN_CONF, paths.CADDY_ADMIN_SNIPPET))


def routing_paths(server: WebServer, plan: Plan) -> tuple[PurePosixPath, ...]:
    """Where :func:`web_files` puts ``server``'s files for this plan: on the main host only."""
    return ALL_PATHS[server] if plan.here is None else ()


def web_files(server: WebServer, plan: Plan, version: Version | None = None, mas: bool = False,
              max_body: str = MAX_BODY_SIZE) -> tuple[RenderedFile, ...]:
    """The files that route requests through ``server`` (none on a worker host or for NONE).

    ``mas``: Synapse hands logins to the Matrix Authentication Service (see nginx_files).
    ``max_body``: the request body size Synapse accepts (nginx only, for now).

    >>> from ..core.selection import select
    >>> from ..core.plan import plan_workers
    >>> plan = Plan(plan_workers(select(preset="minimal")))
    >>> [str(f.path) for f in web_files(WebServer.CADDY, plan)]
    ['etc/caddy/matrix-synapse-workers.caddy', 'etc/caddy/matrix-synapse-workers-admin.caddy']
    >>> web_files(WebServer.NONE, plan)
    ()
    """
    if plan.here is not None or server is WebServer.NONE:
        return ()
    if server is WebServer.NGINX:
        return _nginx(plan, version, mas, max_body)
    return _RENDERERS[server](plan, version, mas)
