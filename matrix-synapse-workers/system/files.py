"""Write files atomically: a temporary file beside the target, fsync, rename.

A reader (Synapse, systemd, an admin's editor) sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
from pathlib import Path

from ..render.files import RenderedFile


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def _write_beside(target: Path, content: str, mode: int, ids: tuple[int, int] | None = None,
                  suffix: str = "") -> Path:
    """The one way this package replaces a file: written and synced beside it, then renamed."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if ids is not None:
                os.fchown(handle.fileno(), *ids)
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def write_atomically(root: Path, rendered: RenderedFile, *, chown: bool) -> Path:
    """Write ``rendered`` under ``root``; owner and group only when ``chown``."""
    target = root / rendered.path
    target.parent.mkdir(parents=True, exist_ok=True)
    return _write_beside(target, rendered.content, rendered.mode,
                         _ids(rendered.owner, rendered.group) if chown else None)


def replace_file(target: Path, content: str, mode: int = 0o644) -> Path:
    """Write ``content`` to ``target`` beside it and rename it into place.

    For files other programs read while we write them, such as node_exporter's
    textfile directory (it would read half a file, or a temporary one whose
    name ends in ``.prom``: the temporary name starts with a dot and has no
    such suffix).
    """
    return _write_beside(target, content, mode, suffix=".tmp")
