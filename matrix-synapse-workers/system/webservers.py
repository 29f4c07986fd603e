"""The web servers on this host: which are installed and serving, and their own checks.

Each check runs the server's own tool on its whole configuration, as
system/nginx.py does with ``nginx -t``; the reload is the unit's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.webserver import WebServer, detect
from .run import run

#: The package's configuration directory, its binary, its unit, and its check.
SERVERS: dict[WebServer, tuple[str, str, str, tuple[str, ...]]] = {
    WebServer.NGINX: ("etc/nginx", "nginx", "nginx.service", ("-t", "-q")),
    WebServer.APACHE: ("etc/apache2", "apache2ctl", "apache2.service", ("-t",)),
    WebServer.CADDY: ("etc/caddy", "caddy", "caddy.service",
                      ("validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile")),
    WebServer.HAPROXY: ("etc/haproxy", "haproxy", "haproxy.service",
                        ("-c", "-q", "-f", "/etc/haproxy/haproxy.cfg",
                         "-f", "/etc/haproxy/matrix-synapse-workers.cfg")),
}
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def installed(root: Path) -> set[str]:
    """The servers whose configuration directory and binary exist."""
    return {server.value for server, (etc, binary, _, _) in SERVERS.items()
            if (root / etc).is_dir() and shutil.which(binary, path=_PATH)}


def serving(listeners: dict[int, str]) -> set[str]:
    """Of ``{port: process name}`` (from ``ss -ltnp``), the servers on 80 or 443."""
    names = {"nginx": "nginx", "apache2": "apache", "httpd": "apache",
             "caddy": "caddy", "haproxy": "haproxy"}
    return {names[p] for port, p in listeners.items() if port in (80, 443) and p in names}


def detected(root: Path, listeners: dict[int, str]) -> WebServer:
    return detect(installed(root), serving(listeners))


def check(server: WebServer, root: Path) -> str | None:
    """The server's complaint about its whole configuration, or None when it passes
    (or cannot be asked: no binary, or a root other than /)."""
    if server is WebServer.NONE or root != Path("/"):
        return None
    _, binary, _, arguments = SERVERS[server]
    found = shutil.which(binary, path=_PATH)
    if found is None:
        return None
    result = run([found, *arguments], check=False, capture=True)
    return None if result.returncode == 0 else ((result.stderr or "") + (result.stdout or "")).strip()[-1500:]


def unit(server: WebServer) -> str | None:
    return None if server is WebServer.NONE else SERVERS[server][2]
