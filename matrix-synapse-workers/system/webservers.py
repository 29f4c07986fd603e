"""The web servers on this host: which are installed and serving, and their own checks.

Each check runs the server's own tool on its whole configuration, as
system/nginx.py does with ``nginx -t``; the reload is the unit's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..core.paths import DEFAULT_SOCKET_GROUP
from ..core.webserver import WebServer, detect, include_advice
from . import applied
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


def deployed(root: Path) -> WebServer | None:
    """The server last applied, as the applied record keeps it, else the one whose
    routing files of ours were written last (None: neither says).

    The record is read first: ``none`` writes no file, and a switch of server leaves
    the other server's files in place (its sites may still include them).  The
    newest files tell it on a host applied before the record kept it.
    """
    record = applied.read(root)
    if record is not None and record.web_server:
        try:
            return WebServer(record.web_server)
        except ValueError:  # a record edited by hand: the files tell
            pass
    from ..render.files import is_generated
    from ..render.webserver import ALL_PATHS
    found: list[tuple[float, WebServer]] = []
    for server, files in ALL_PATHS.items():
        for relative in files:
            target = root / relative
            if target.is_file() and is_generated(target.read_text(encoding="utf-8", errors="replace")):
                found.append((target.stat().st_mtime, server))
    return max(found, key=lambda item: item[0])[1] if found else None


def is_installed(root: Path, server: WebServer) -> bool:
    """Whether ``server``'s configuration directory exists: only then do our files belong there."""
    return server is not WebServer.NONE and (root / SERVERS[server][0]).is_dir()


def listeners() -> dict[int, str]:
    """``{port: process name}`` of the TCP listeners (``ss -Hltnp``); empty when unknown."""
    if shutil.which("ss", path=_PATH) is None:
        return {}
    result = run(["ss", "-Hltnp"], check=False, capture=True)
    found: dict[int, str] = {}
    for line in (result.stdout or "").splitlines():
        fields = line.split()
        if len(fields) < 6 or '"' not in fields[5]:
            continue
        port = fields[3].rpartition(":")[2]
        if port.isdigit():
            found[int(port)] = fields[5].split('"')[1]
    return found


def resolve(root: Path, chosen: WebServer | None, *, again: bool = False) -> WebServer:
    """The admin's choice, else the server deployed while it is still installed (``auto``
    is decided once, as the preset ``auto`` is), else the one detected on this host now.

    ``again``: detect now whatever is deployed (``auto`` answered in dpkg-reconfigure).
    """
    if chosen is not None:
        return chosen
    kept = None if again else deployed(root)
    if kept is not None and (kept is WebServer.NONE or is_installed(root, kept)):
        return kept
    return detected(root, listeners() if root == Path("/") else {})


def checked_by(server: WebServer) -> dict[str, Any]:
    """The arguments of :func:`nginx.write_checked` for ``server``'s files."""
    if server in (WebServer.NGINX, WebServer.NONE):
        return {}
    binary, arguments = SERVERS[server][1:4:2]
    return {"checker": lambda root: check(server, root), "tool": " ".join((binary, *arguments[:1])),
            "server": server.value}


#: Where the admin's configuration must name our file for it to be used.
_INCLUDED_BY: dict[WebServer, tuple[str, ...]] = {
    WebServer.CADDY: ("etc/caddy/Caddyfile",),
    WebServer.HAPROXY: ("etc/default/haproxy", "etc/haproxy/haproxy.cfg"),
}


def dump(server: WebServer, root: Path, ours: tuple[str, ...],
         timeout: float = 3) -> tuple[bool | None, str, frozenset[str], None]:
    """For ``status``, as ``nginx -T`` gives it (status/clients.py's nginx_dump): (the
    server's own check passed (None: not asked), its messages, which of ``ours`` its
    configuration uses, None: no judgement of the routing as nginx's has)."""
    import subprocess
    _, binary, _, arguments = SERVERS[server]
    found = shutil.which(binary, path=_PATH)
    if found is None or root != Path("/"):
        return None, "", frozenset(), None
    if server is WebServer.APACHE:
        arguments = ("-t", "-D", "DUMP_INCLUDES")
    try:
        done = subprocess.run([found, *arguments], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None, "", frozenset(), None
    if server is WebServer.APACHE:
        used = frozenset(f for f in ours if f in done.stdout)
    else:
        texts = "".join((root / p).read_text(errors="replace") for p in _INCLUDED_BY[server]
                        if (root / p).is_file())
        used = frozenset(f for f in ours if f in texts)
    return done.returncode == 0, done.stderr + done.stdout, used, None


def left_to_do(root: Path, server: WebServer) -> list[str]:
    """The include the admin has still to add for ``server`` (Apache, Caddy, HAProxy);
    [] when it is there or cannot be told (not installed, a root other than /).  The
    admin API's file is left out: it is included only where admins reach the API."""
    from ..render.webserver import ADMIN_PATHS, ALL_PATHS
    if server in (WebServer.NGINX, WebServer.NONE) or not is_installed(root, server):
        return []
    ours = tuple(f"/{p}" for p in ALL_PATHS[server] if (root / p).is_file() and p not in ADMIN_PATHS)
    passed, _, used = dump(server, root, ours)[:3]
    record = applied.read(root)
    group = (record.socket_group if record and record.socket_group else DEFAULT_SOCKET_GROUP)
    return [include_advice(server, f, group) for f in ours
            if passed is not None and f not in used]
