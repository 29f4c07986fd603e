"""Pure: the routing model as HAProxy configuration (one file loaded after the admin's).

HAProxy cannot include a fragment into the admin's frontend, so the routes live
in a frontend of their own that the admin's reaches through an in-process hop
(``abns@``); the admin adds one ``use_backend msw_entry`` line.
"""

from __future__ import annotations

from ..core import paths
from ..core.catalog import ENDPOINTS_CHECKED_AGAINST, Version
from ..core.plan import Plan
from .files import RenderedFile, render_template
from .routing import CONNECT_TIMEOUT, READ_METHODS, nginx_model
from .webcommon import (ADMIN_PREFIX, LIMIT_EXCEEDED_BODY, REPEATABLE_METHODS, RETRY_AFTER_MS, ROOM_ID, main_prefixes,
                        SYT_LOCALPART, backends)


def haproxy_files(plan: Plan, version: Version | None = None,
                  mas: bool = False) -> tuple[RenderedFile, ...]:
    model = nginx_model(plan, version, mas)
    text = render_template(
        "haproxy.cfg.j2", model=model, main_prefixes=main_prefixes(model), path=paths.HAPROXY_CONF,
        backends=backends,
        checked=".".join(map(str, ENDPOINTS_CHECKED_AGAINST)), connect_timeout=CONNECT_TIMEOUT,
        repeatable=REPEATABLE_METHODS, read_methods=READ_METHODS, retry_after_ms=RETRY_AFTER_MS,
        body=LIMIT_EXCEEDED_BODY, syt=SYT_LOCALPART, room=ROOM_ID, admin_prefix=ADMIN_PREFIX)
    return (RenderedFile(paths.HAPROXY_CONF, text),)
