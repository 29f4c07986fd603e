"""Pure: the routing model as a Caddy 2 snippet, imported inside the admin's site block."""

from __future__ import annotations

from ..core import paths
from ..core.catalog import ENDPOINTS_CHECKED_AGAINST, Version
from ..core.plan import Plan
from .files import RenderedFile, render_template
from .routing import READ_METHODS, nginx_model
from .webcommon import (ADMIN_PREFIX, LIMIT_EXCEEDED_BODY, REPEATABLE_METHODS, ROOM_ID, SYT_LOCALPART, main_prefixes,
                        Backend, backends)

#: How long Caddy keeps trying a pool's servers, and leaves out one that failed.
TRY_DURATION = "3s"
FAIL_DURATION = "10s"


def address(backend: Backend) -> str:
    """A ``reverse_proxy`` upstream: ``unix//run/...sock`` or ``host:port``."""
    return f"unix/{backend.address}" if backend.is_socket else backend.address


def caddy_files(plan: Plan, version: Version | None = None,
                mas: bool = False) -> tuple[RenderedFile, ...]:
    """The snippet for the Matrix site blocks, and the one for Synapse's admin API (its
    media part to the media workers, the rest to main), imported after it where admins
    reach it."""
    model = nginx_model(plan, version, mas)
    context = dict(
        model=model, main_prefixes=main_prefixes(model), path=paths.CADDY_SNIPPET,
        admin_path=paths.CADDY_ADMIN_SNIPPET, admin_prefix=ADMIN_PREFIX, backends=backends,
        address=address, checked=".".join(map(str, ENDPOINTS_CHECKED_AGAINST)),
        try_duration=TRY_DURATION, fail_duration=FAIL_DURATION, repeatable=REPEATABLE_METHODS,
        read_methods=READ_METHODS, body=LIMIT_EXCEEDED_BODY, syt=SYT_LOCALPART, room=ROOM_ID)
    return (RenderedFile(paths.CADDY_SNIPPET, render_template("caddy.j2", **context)),
            RenderedFile(paths.CADDY_ADMIN_SNIPPET, render_template("caddy-admin.j2", **context)))
