"""Pure: does nginx, as configured, send the workers' paths to the workers?

Read from ``nginx -T`` (:mod:`.nginxconf` says why, and which of nginx's rules
are followed).  For each server block that includes the package's snippet,
every path of the catalog that the snippet alone gives to a worker is put
through nginx's choice of location in the whole server: a location of the
admin's that takes it instead (the usual ``location ~ ^(/_matrix|/_synapse/client)``
above the include) shadows the workers, and ``nginx -t`` cannot see it.

>>> snippet = "/etc/nginx/snippets/matrix-synapse-workers.conf"
>>> dump = f'''# configuration file /etc/nginx/nginx.conf:
... http {{ server {{ server_name m.example; location /_matrix {{ proxy_pass http://s; }} }} }}
... # configuration file {snippet}:
... location ~ ^/_matrix/client/v3/sync$ {{ proxy_pass http://w; }}
... '''
>>> routing = judge(dump)
>>> routing.including, [s.where for s in routing.candidates]
((), ['/etc/nginx/nginx.conf:1'])
>>> print(todo(routing)[0])
no nginx server includes /etc/nginx/snippets/matrix-synapse-workers.conf, so every request goes to main: \
in the server block at /etc/nginx/nginx.conf:1 (server_name m.example), replace its /_matrix and \
/_synapse/client locations with the line 'include snippets/matrix-synapse-workers.conf;'; \
then: nginx -t && systemctl reload nginx
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import paths
from .catalog import ENDPOINTS
from .nginxconf import Location, NginxSyntaxError, Server, choose, read_servers

SNIPPET = f"/{paths.NGINX_SNIPPET}"
#: The line the admin adds (relative to /etc/nginx, as Debian's own snippets are included).
INCLUDE_LINE = f"include snippets/{paths.NGINX_SNIPPET.name};"
#: A path every Matrix server block serves: how a vhost for Synapse is recognised.
MATRIX_PATH = "/_matrix/client/versions"
#: The federation port; a server listening on it serves Matrix.
FEDERATION_PORT = "8448"
#: ``nginx -t`` and ``nginx -T`` say this; what follows is the reload an edit needs.
RELOAD = "then: nginx -t && systemctl reload nginx"


def example_path(pattern: str) -> str | None:
    """A path the anchored catalog ``pattern`` matches (None if this cannot make one).

    >>> example_path("^/_matrix/client/(r0|v3|unstable)/rooms/.*/typing")
    '/_matrix/client/r0/rooms/x/typing'
    >>> example_path("^/_matrix/client/(r0|v3)/devices(/|$)")
    '/_matrix/client/r0/devices/'
    """
    out, i = [], 0
    body = pattern[1:] if pattern.startswith("^") else pattern
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
            continue
        if c == "(":
            depth, j = 0, i
            while j < len(body):
                depth += {"(": 1, ")": -1}.get(body[j], 0)
                if depth == 0:
                    break
                j += 1
            group = body[i + 1:j].removeprefix("?:")
            optional = body[j + 1:j + 2] == "?"
            first = _split_alternatives(group)[0]
            out.append("" if optional else (example_path(first) or "").rstrip("$"))
            i = j + (2 if optional else 1)
            continue
        if c == "[":
            j = body.index("]", i + 1)
            out.append("x" if body[i + 1] == "^" else body[i + 1])
            i = j + 1
        elif c == ".":
            out.append("x")
            i += 1
        elif c == "$":
            i += 1
        elif c in "*+":
            i += 1  # the item before, once
        elif c == "?":
            out.pop()
            i += 1
        else:
            out.append(c)
            i += 1
    result = "".join(out)
    try:
        return result if re.match(pattern, result) else None
    except re.error:
        return None


def _split_alternatives(group: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(group):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "|" and depth == 0:
            parts.append(group[start:i])
            start = i + 1
    parts.append(group[start:])
    return parts


def worker_paths() -> tuple[str, ...]:
    """One example path for each pattern of the catalog (every Synapse version's)."""
    found = (example_path(p) for e in ENDPOINTS.values() for p in e.patterns)
    return tuple(dict.fromkeys(p for p in found if p))


@dataclass(frozen=True)
class Shadow:
    """A location of the admin's that takes worker paths in a server including the snippet."""

    server: Server
    location: Location
    #: The worker paths it takes (examples).
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    #: Server blocks that include the snippet.
    including: tuple[Server, ...] = ()
    #: Server blocks without it that serve Matrix (where the include belongs).
    candidates: tuple[Server, ...] = ()
    shadows: tuple[Shadow, ...] = ()
    #: Worker paths checked in each including server.
    checked: int = 0
    #: Why the configuration could not be read ('' when it was).
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.including) and not self.shadows


def _serves_matrix(server: Server) -> bool:
    """A location of its own names /_matrix (a catch-all ``location /`` does not count),
    or it listens on the federation port."""
    chosen = choose(server.locations, MATRIX_PATH)
    return ((chosen is not None and "_matrix" in chosen.pattern)
            or any(listen.rsplit(":", 1)[-1] == FEDERATION_PORT for listen in server.listens))


def _shadows(server: Server, snippet: str, examples: tuple[str, ...]) -> tuple[list[Shadow], int]:
    ours = tuple(loc for loc in server.locations if loc.file == snippet)
    taken: dict[Location, list[str]] = {}
    checked = 0
    for path in examples:
        if not any(loc.regex for loc in [choose(ours, path)] if loc is not None):
            continue  # the snippet itself sends it to main
        checked += 1
        chosen = choose(server.locations, path)
        if chosen is not None and chosen.file != snippet:
            taken.setdefault(chosen, []).append(path)
    return [Shadow(server, loc, tuple(found)) for loc, found in taken.items()], checked


def judge(dump: str, snippet: str = SNIPPET, examples: tuple[str, ...] | None = None) -> Routing:
    """How the configuration ``nginx -T`` printed routes the worker paths."""
    try:
        servers = read_servers(dump)
    except (NginxSyntaxError, ValueError, IndexError, RecursionError) as exc:
        # A report, not a crash: status goes on with its other checks.
        return Routing(error=f"nginx -T could not be read: {exc}")
    examples = worker_paths() if examples is None else examples
    including = tuple(s for s in servers if snippet in s.included)
    shadows: list[Shadow] = []
    checked = 0
    for server in including:
        found, checked = _shadows(server, snippet, examples)
        shadows += found
    candidates = tuple(s for s in servers if s not in including and _serves_matrix(s))
    return Routing(including, candidates, tuple(shadows), checked)


def todo(routing: Routing, snippet: str = SNIPPET) -> list[str]:
    """What the admin has left to do for the workers to get requests; [] when nothing."""
    if routing.error:
        return []
    lines = []
    if not routing.including:
        where = ("; ".join(f"in {s.label}, replace its /_matrix and /_synapse/client locations "
                           f"with the line '{INCLUDE_LINE}'" for s in routing.candidates)
                 or f"add the line '{INCLUDE_LINE}' to the server block that serves your Matrix "
                    "domain (no server block serves /_matrix yet)")
        lines.append(f"no nginx server includes {snippet}, so every request goes to main: "
                     f"{where}; {RELOAD}")
    for shadow in routing.shadows:
        lines.append(
            f"{shadow.location.where}: '{shadow.location.text}' in {shadow.server.label} takes "
            f"{len(shadow.paths)} of the {routing.checked} worker paths before the snippet can "
            f"(e.g. {shadow.paths[0]}), so they go to main: remove it (the snippet sends the "
            f"other /_matrix and /_synapse/client paths to main itself), or move it below the "
            f"line '{INCLUDE_LINE}'; {RELOAD}")
    return lines
