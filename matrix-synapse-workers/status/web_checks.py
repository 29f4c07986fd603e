"""Pure: status's checks of the web server in front (its files, its own check, and
whether the workers' paths reach the workers)."""

from __future__ import annotations

from pathlib import PurePosixPath

from ..core import paths, vhost
from ..core.vhost import Routing
from ..core.words import plural
from ..core.webserver import CHECK_TOOL, WebServer, include_advice
from ..render.webserver import ADMIN_PATHS
from .model import FAIL, INFO, OK, WARN, Facts, Row
from .advice import RECONFIGURE


def check_routing(routing: Routing) -> list[Row]:
    """Whether requests reach the workers as nginx really routes (:mod:`..core.vhost`)."""
    if routing.error:
        return [Row("nginx", "routing", WARN, routing.error)]
    rows = []
    if not routing.including:
        rows.append(Row("nginx", "include", FAIL, f"no server block includes {vhost.SNIPPET}: every "
                        "request goes to main", vhost.todo(routing)[0]))
    for shadow, advice in zip(routing.shadows, vhost.todo(routing)[0 if routing.including else 1:]):
        rows.append(Row("nginx", "shadowed", FAIL,
                        f"{shadow.location.where} '{shadow.location.text}' takes "
                        f"{plural(len(shadow.paths), 'worker path')} of {routing.checked} "
                        f"(e.g. {shadow.paths[0]}) before the snippet", advice))
    if routing.ok:
        names = ", ".join(s.where for s in routing.including)
        rows.append(Row("nginx", "routing", OK,
                        f"{plural(routing.checked, 'worker path')} reach the snippet in "
                        f"{plural(len(routing.including), 'server block')} ({names})"))
    return rows


def check_nginx(facts: Facts) -> list[Row]:
    nginx = facts.nginx
    if nginx.server != WebServer.NGINX.value:
        return check_web_server(facts)
    if not nginx.rendered:
        return [Row("nginx", "routing", INFO, "this version renders no nginx files: not checked")]
    rows = []
    if nginx.missing:
        rows.append(Row("nginx", "files", WARN, f"missing: {', '.join(nginx.missing)}", f"run: {RECONFIGURE}"))
    admin = "/" + str(paths.NGINX_ADMIN_SNIPPET)
    if admin in nginx.not_included:  # optional: only where admins reach the admin API
        rows.append(Row("nginx", "admin API", INFO, f"{admin} is not included",
                        "include it in the server block where admins reach /_synapse/admin "
                        "(the media admin API needs it once media workers run)"))
    # The snippet's include is judged with the routing, below.
    not_included = [f for f in nginx.not_included if f != admin
                    and (nginx.routing is None or f != vhost.SNIPPET)]
    if not_included:
        rows.append(Row("nginx", "include", WARN, f"not in nginx's configuration: {', '.join(not_included)}",
                        f"include {not_included[0]} in the context its first lines name, then "
                        f"{vhost.RELOAD.removeprefix('then: ')}"))
    if nginx.test_ok is False:
        first = next((line for line in nginx.test_output.splitlines() if "emerg" in line or "error" in line),
                     nginx.test_output.strip().splitlines()[-1] if nginx.test_output.strip() else "")
        rows.append(Row("nginx", "nginx -t", FAIL, first[:200] or "fails",
                        "fix what nginx -t reports; the running nginx keeps its old configuration until then"))
    elif nginx.test_ok is None:
        rows.append(Row("nginx", "nginx -t", INFO, "nginx not found: not tested"))
    if nginx.routing is not None:
        rows += check_routing(nginx.routing)
    elif not rows or all(r.status == INFO for r in rows):
        included = len(nginx.rendered) - len(nginx.not_included)
        rows.insert(0, Row("nginx", "routing", OK, f"{plural(included, 'file')} included"
                           + (", nginx -t passes" if nginx.test_ok else "")))
    return rows



def check_web_server(facts: Facts) -> list[Row]:
    """As :func:`check_nginx`, for Apache, Caddy or HAProxy in front."""
    web = facts.nginx
    server = WebServer(web.server)
    tool = CHECK_TOOL[server].replace("FILE", web.rendered[0] if web.rendered else "")
    rows = []
    if web.missing:
        rows.append(Row(web.server, "files", WARN, f"missing: {', '.join(web.missing)}", f"run: {RECONFIGURE}"))
    admin = [f for f in web.not_included if PurePosixPath(f.lstrip("/")) in ADMIN_PATHS]
    not_included = [f for f in web.not_included if f not in admin]
    if not_included:
        rows.append(Row(web.server, "include", WARN,
                        f"not in {web.server}'s configuration: {', '.join(not_included)}",
                        include_advice(server, not_included[0], facts.expected.socket_group)))
    if admin:  # optional: only where admins reach the admin API
        rows.append(Row(web.server, "admin API", INFO, f"{admin[0]} is not included",
                        f"name it after {web.rendered[0]} where admins reach /_synapse/admin "
                        "(the media admin API needs it once media workers run)"))
    if web.test_ok is False:
        lines = web.test_output.strip().splitlines()
        first = next((line for line in lines if "rror" in line or "ALERT" in line), lines[-1] if lines else "")
        rows.append(Row(web.server, tool, FAIL, first[:200] or "fails",
                        f"fix what {tool} reports; the running {web.server} keeps its old configuration until then"))
    elif web.test_ok is None:
        rows.append(Row(web.server, tool, INFO, f"{web.server} not found: not tested"))
    if all(r.status == INFO for r in rows) and web.test_ok:
        included = len(web.rendered) - len(web.not_included)
        rows.insert(0, Row(web.server, "routing", OK, f"{plural(included, 'file')} included, {tool} passes"))
    return rows

