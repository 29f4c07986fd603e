"""Pure: the guide's edit of /etc/redis/redis.conf, and its undo.

Only three directives change (``port 0``, ``unixsocket``, ``unixsocketperm``);
every other line, comment and include is kept.  Before each line it changes or
adds, the edit leaves a comment saying what was there, so the undo (also done
by the sh postrm at purge, when Python may be gone) needs no other state:

    # matrix-synapse-workers: was: port 6379
    port 0

>>> text = "bind 127.0.0.1\\nport 6379\\n# unixsocket /run/redis/redis-server.sock\\n"
>>> edited = edit_guide_conf(text, "/run/redis/redis-server.sock")
>>> print(edited, end="")
bind 127.0.0.1
# matrix-synapse-workers: was: port 6379
port 0
# unixsocket /run/redis/redis-server.sock
# matrix-synapse-workers: was absent
unixsocket /run/redis/redis-server.sock
# matrix-synapse-workers: was absent
unixsocketperm 770
>>> edit_guide_conf(edited, "/run/redis/redis-server.sock") == edited
True
>>> undo_guide_conf(edited) == text
True
"""

from __future__ import annotations

import re

WAS = "# matrix-synapse-workers: was: "
WAS_ABSENT = "# matrix-synapse-workers: was absent"


def guide_directives(socket: str) -> dict[str, str]:
    return {"port": "0", "unixsocket": socket, "unixsocketperm": "770"}


def _directive(line: str) -> tuple[str, str] | None:
    match = re.match(r"^\s*([A-Za-z-]+)\s+(.*?)\s*$", line)
    if not match or line.lstrip().startswith("#"):
        return None
    return match[1].lower(), match[2]


def _commented(line: str, name: str) -> bool:
    return re.match(rf"^\s*#\s*{name}\s", line, re.IGNORECASE) is not None


def edit_guide_conf(text: str, socket: str) -> str:
    lines = text.splitlines()
    for name, value in guide_directives(socket).items():
        active = [i for i, line in enumerate(lines) if (_directive(line) or ("", ""))[0] == name]
        wanted = f"{name} {value}"
        if active:
            # Redis takes the last occurrence; make every active one say the same.
            for index in reversed(active):
                if _directive(lines[index]) == (name, value):
                    continue
                original = lines[index]
                lines[index:index + 1] = [WAS + original, wanted]
            continue
        commented = [i for i, line in enumerate(lines) if _commented(line, name)]
        at = commented[0] + 1 if commented else len(lines)
        if name == "unixsocketperm":
            socket_at = [i for i, line in enumerate(lines) if _directive(line) and
                         _directive(line)[0] == "unixsocket"]
            if socket_at and not commented:
                at = socket_at[-1] + 1
        lines[at:at] = [WAS_ABSENT, wanted]
    return "\n".join(lines) + "\n"


def undo_guide_conf(text: str) -> str:
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith(WAS) and index + 1 < len(lines):
            out.append(line[len(WAS):])
            index += 2
        elif line == WAS_ABSENT and index + 1 < len(lines):
            index += 2
        else:
            out.append(line)
            index += 1
    body = "\n".join(out)
    return body + "\n" if body else body
