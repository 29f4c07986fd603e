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


def write_atomically(root: Path, rendered: RenderedFile, *, chown: bool) -> Path:
    """Write ``rendered`` under ``root``; owner and group only when ``chown``."""
    target = root / rendered.path
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(rendered.content)
            handle.flush()
            os.fchmod(handle.fileno(), rendered.mode)
            if chown:
                os.fchown(handle.fileno(), *_ids(rendered.owner, rendered.group))
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def replace_file(target: Path, content: str, mode: int = 0o644) -> Path:
    """Write ``content`` to ``target`` beside it and rename it into place.

    For files other programs read while we write them, such as node_exporter's
    textfile directory (it would read half a file, or a temporary one whose
    name ends in ``.prom``: the temporary name starts with a dot and has no
    such suffix).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def file_matches(root: Path, rendered: RenderedFile, *, chown: bool) -> bool:
    """True when the file on disk already has this content, mode (and owner)."""
    target = root / rendered.path
    try:
        status = target.stat()
        if target.read_text(encoding="utf-8") != rendered.content:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    if status.st_mode & 0o7777 != rendered.mode:
        return False
    if chown and (status.st_uid, status.st_gid) != _ids(rendered.owner, rendered.group):
        return False
    return True
