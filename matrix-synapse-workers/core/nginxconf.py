"""Pure: ``nginx -T`` text -> its server blocks, and which location nginx picks for a path.

Why read ``nginx -T`` rather than send a marked request through each server:
a request needs the server to be reachable from here (its listen address, TLS
and certificate, its server_name, a port such as 8448 open) and the workers to
be up, and it tests one path per request; reading the configuration nginx
itself loaded (``nginx -T`` prints the files it parsed, after ``nginx -t``
passes) answers for every worker path of every server at once, even while
Synapse is stopped, in a few milliseconds, and names the file and line of the
location that takes a path.  The price is that nginx's choice is simulated
here, so it follows nginx's documented rules (``location`` in the http core
module), as nginx 1.22 to 1.26 implement them:

1. an ``=`` location equal to the path wins;
2. otherwise the longest prefix location (plain or ``^~``) that starts the path
   is remembered; a ``^~`` one wins at once (regexes are not tried);
3. the regex locations nested in that prefix location are tried first, then the
   server's regex locations (``~`` case-sensitive, ``~*`` not) in the order
   they appear: the first that matches wins;
4. otherwise the remembered prefix location.

What is not simulated (none of it changes which location takes a path under
/_matrix or /_synapse/client in the vhosts this package meets): nginx's URI
normalisation (merge_slashes, ``%XX`` decoding: the paths tried here are already
normal), ``if`` and ``rewrite`` (a rewrite in a server block runs before the
location is chosen), PCRE constructs that Python's ``re`` lacks (such a location
is reported as not understood, never as a match), and the choice of server by
listen address and server_name: every server block that includes the snippet is
judged.

>>> dump = '''# configuration file /etc/nginx/nginx.conf:
... http { include /etc/nginx/sites-enabled/*; }
...
... # configuration file /etc/nginx/sites-enabled/matrix:
... server {
...     server_name matrix.example.org;
...     location ~ ^(/_matrix|/_synapse/client) { proxy_pass http://localhost:8008; }
...     include snippets/matrix-synapse-workers.conf;
... }
...
... # configuration file /etc/nginx/snippets/matrix-synapse-workers.conf:
... location ~ "^(?:/_matrix/client/(r0|v3|unstable)/sync$)" { proxy_pass http://msw_sync; }
... location /_matrix/ { proxy_pass http://msw_main; }
... '''
>>> servers = read_servers(dump)
>>> [s.where for s in servers]
['/etc/nginx/sites-enabled/matrix:1']
>>> chosen = choose(servers[0].locations, "/_matrix/client/v3/sync")
>>> chosen.where, chosen.text
('/etc/nginx/sites-enabled/matrix:3', 'location ~ ^(/_matrix|/_synapse/client)')
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator

#: The line ``nginx -T`` prints before each file it read.
FILE_HEADER = re.compile(r"^# configuration file (.+):$", re.M)
#: Location modifiers, longest first (a modifier may be written against its pattern).
MODIFIERS = ("^~", "~*", "=", "~", "@")


class NginxSyntaxError(ValueError):
    """The dump cannot be read as nginx configuration (nginx -T printed it, so rarely)."""


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    file: str
    line: int
    #: The block's directives, or None for a simple directive ending with ';'.
    block: tuple[Directive, ...] | None = None


@dataclass(frozen=True)
class Location:
    modifier: str
    pattern: str
    file: str
    line: int
    children: tuple[Location, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def text(self) -> str:
        return f"location {self.modifier + ' ' if self.modifier else ''}{self.pattern}"

    @property
    def regex(self) -> bool:
        return self.modifier in ("~", "~*")

    def matches(self, path: str) -> bool:
        """Whether a regex location matches; False when Python cannot compile it."""
        try:
            return re.search(self.pattern, path, re.I if self.modifier == "~*" else 0) is not None
        except re.error:
            return False


@dataclass(frozen=True)
class Server:
    file: str
    line: int
    names: tuple[str, ...]
    listens: tuple[str, ...]
    locations: tuple[Location, ...]
    #: Every file included (at any depth) inside this server block.
    included: frozenset[str] = field(default_factory=frozenset)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def label(self) -> str:
        """How an admin finds it: its file and line, and its names."""
        names = " ".join(self.names) or "_"
        return f"the server block at {self.where} (server_name {names})"


def split_dump(text: str) -> dict[str, str]:
    """Each file ``nginx -T`` printed, by path, in its order (the main file first)."""
    parts = FILE_HEADER.split(text)
    return {parts[i]: parts[i + 1].removeprefix("\n") for i in range(1, len(parts) - 1, 2)}


def _tokens(text: str, file: str) -> Iterator[tuple[str, int, bool]]:
    """(token, line, quoted): words, quoted strings, and the specials ``{ } ;``."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c, line, False
            i += 1
        elif c in "\"'":
            start, i = line, i + 1
            chars = []
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                line += text[i] == "\n"
                chars.append(text[i])
                i += 1
            if i >= n:
                raise NginxSyntaxError(f"{file}:{start}: unterminated quoted string")
            yield "".join(chars), start, True
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "{};" and not (
                    text[i] in "\"'" and i == start):
                i += 2 if text[i] == "\\" else 1
            yield text[start:i], line, False


def parse(text: str, file: str) -> tuple[Directive, ...]:
    """One file's directives, blocks nested (includes not followed)."""
    stack: list[list[Directive]] = [[]]
    heads: list[tuple[str, tuple[str, ...], int]] = []
    words: list[str] = []
    first_line = 0
    for token, line, quoted in _tokens(text, file):
        if quoted or token not in "{};":
            if not words:
                first_line = line
            words.append(token)
        elif token == ";":
            if words:
                stack[-1].append(Directive(words[0], tuple(words[1:]), file, first_line))
            words = []
        elif token == "{":
            heads.append((words[0] if words else "", tuple(words[1:]), first_line))
            stack.append([])
            words = []
        else:
            if len(stack) == 1:
                raise NginxSyntaxError(f"{file}:{line}: unexpected '}}'")
            body = stack.pop()
            name, args, start = heads.pop()
            stack[-1].append(Directive(name, args, file, start, tuple(body)))
            words = []
    if len(stack) != 1:
        raise NginxSyntaxError(f"{file}: unexpected end of file, '}}' expected")
    return tuple(stack[0])


class _Config:
    """The dumped files, parsed once, and include resolved against them."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        main = next(iter(files), "/etc/nginx/nginx.conf")
        self.prefix = posixpath.dirname(main)
        self.parsed = {path: parse(text, path) for path, text in files.items()}

    def included(self, pattern: str) -> list[str]:
        """The dumped files an ``include`` names, sorted as nginx's glob sorts them."""
        full = pattern if pattern.startswith("/") else posixpath.join(self.prefix, pattern)
        depth = full.count("/")
        return sorted(p for p in self.files if p.count("/") == depth and fnmatch.fnmatchcase(p, full))

    def expand(self, directives: tuple[Directive, ...], seen: frozenset[str] = frozenset()
               ) -> Iterator[tuple[Directive, frozenset[str]]]:
        """Directives with includes replaced by the included files' directives; with each,
        the files included on the way to it."""
        for directive in directives:
            if directive.name == "include" and directive.block is None and directive.args:
                for path in self.included(directive.args[0]):
                    if path not in seen:  # nginx would loop; the dump cannot have that
                        for inner, via in self.expand(self.parsed[path], seen | {path}):
                            yield inner, via | {path}
            else:
                yield directive, seen


def _location(directive: Directive, config: _Config) -> Location | None:
    args = list(directive.args)
    if not args:
        return None
    modifier = ""
    if args[0] in MODIFIERS:
        modifier = args.pop(0)
    else:
        modifier = next((m for m in MODIFIERS if args[0].startswith(m)), "")
        args[0] = args[0][len(modifier):]
    if not args:
        return None
    children = _locations(directive.block or (), config)
    return Location(modifier, args[0], directive.file, directive.line, children)


def _locations(block: tuple[Directive, ...], config: _Config) -> tuple[Location, ...]:
    found = []
    for directive, _ in config.expand(block):
        if directive.name == "location" and directive.block is not None:
            location = _location(directive, config)
            if location is not None:
                found.append(location)
    return tuple(found)


def read_servers(dump: str) -> tuple[Server, ...]:
    """Every server block of the http context, in order, from ``nginx -T``'s output."""
    config = _Config(split_dump(dump))
    if not config.parsed:
        return ()
    servers = []
    main = next(iter(config.parsed))
    for top, _ in config.expand(config.parsed[main], frozenset({main})):
        if top.name != "http" or top.block is None:
            continue
        for directive, _ in config.expand(top.block):
            if directive.name != "server" or directive.block is None:
                continue
            names: list[str] = []
            listens: list[str] = []
            included: set[str] = set()
            for inner, via in config.expand(directive.block):
                included |= via
                if inner.name == "server_name":
                    names += inner.args
                elif inner.name == "listen" and inner.args:
                    listens.append(inner.args[0])
            servers.append(Server(directive.file, directive.line, tuple(names), tuple(listens),
                                  _locations(directive.block, config), frozenset(included)))
    return tuple(servers)


def choose(locations: tuple[Location, ...], path: str) -> Location | None:
    """The location nginx uses for ``path`` among ``locations`` (see the module's rules)."""
    for location in locations:
        if location.modifier == "=" and location.pattern == path:
            return location
    prefixes = [loc for loc in locations if loc.modifier in ("", "^~") and path.startswith(loc.pattern)]
    best = max(prefixes, key=lambda loc: len(loc.pattern), default=None)
    if best is not None and best.children:
        inner = choose(best.children, path)
        if inner is not None and (inner.regex or inner.modifier == "="):
            return inner
    if best is not None and best.modifier == "^~":
        return best
    for location in locations:
        if location.regex and location.matches(path):
            return choose(location.children, path) or location
    return best
