"""Write files atomically: a temporary file beside the target, fsync, rename.

A reader (Synapse, systemd, an admin's editor) sees the old file or the new
one, never half of one.  The temporary file is named ``.NAME.msw-tmp.XXXXXXXX``:
when the process is killed between creating and renaming it (power loss, the
OOM killer, SIGKILL of dpkg), the next apply recognises it as ours and sweeps
it (:func:`sweep_temporaries`); nobody else's file has that name.
"""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..core.errors import ApplyError
from ..render.files import RenderedFile
from . import crashpoint

#: In the name of every temporary file of ours, and of nothing else.
TMP_TAG = ".msw-tmp."


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


@dataclass(frozen=True)
class Staged:
    """A file's new content, complete and synced beside it, not yet renamed into place."""

    target: Path
    temporary: Path
    #: Directories made for it, deepest first: a discarded file takes them away again.
    made: tuple[Path, ...] = ()


def _stage_content(target: Path, content: str, mode: int,
                   ids: tuple[int, int] | None = None) -> Staged:
    """The one way this package writes a file's new content: beside it, synced, not yet renamed."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TMP_TAG}", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if ids is not None:
                os.fchown(handle.fileno(), *ids)
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Staged(target, Path(tmp_name))


def stage(root: Path, rendered: RenderedFile, *, chown: bool) -> Staged:
    """Write ``rendered`` beside its target (owner and group only when ``chown``)."""
    target = root / rendered.path
    made = []
    for directory in (target.parent, *target.parent.parents):
        if os.path.lexists(directory):
            break
        made.append(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _stage_content(target, rendered.content, rendered.mode,
                            _ids(rendered.owner, rendered.group) if chown else None)
    return Staged(staged.target, staged.temporary, tuple(made))


def commit(staged: Staged) -> Path:
    """Rename a staged file into place: a reader sees the old file or the new one."""
    os.replace(staged.temporary, staged.target)
    crashpoint.done(f"wrote {staged.target}")
    return staged.target


def _commit_or_discard(staged: Staged) -> Path:
    try:
        return commit(staged)
    except BaseException:
        staged.temporary.unlink(missing_ok=True)
        raise


def write_atomically(root: Path, rendered: RenderedFile, *, chown: bool) -> Path:
    """Write ``rendered`` under ``root``; owner and group only when ``chown``."""
    return _commit_or_discard(stage(root, rendered, chown=chown))


def stage_all(root: Path, files: Sequence[RenderedFile], *, chown: bool) -> list[Staged]:
    """Every file's new content beside it, before any is renamed into place.

    A file system that fills up (ENOSPC) or any other failure to write stops
    here: the temporary files go, every previous file is still in place, and
    one ApplyError names the file and the reason.
    """
    staged: list[Staged] = []
    try:
        for rendered in files:
            staged.append(stage(root, rendered, chown=chown))
    except OSError as exc:
        discard(staged)
        raise ApplyError(
            f"cannot write /{rendered.path}: {exc.strerror or exc}; every previous file is still "
            "in place and nothing was changed. Make room on that file system (or fix the "
            "error), then run: dpkg-reconfigure matrix-synapse-workers") from None
    except BaseException:
        discard(staged)
        raise
    return staged


def discard(staged: Sequence[Staged]) -> None:
    """Remove the temporary files, and the directories made for them when still empty."""
    for item in staged:
        item.temporary.unlink(missing_ok=True)
    for directory in sorted({d for item in staged for d in item.made}, key=lambda d: len(d.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:  # something else is in it now
            continue
        crashpoint.done(f"removed {directory}")


def is_temporary(name: str) -> bool:
    """A temporary file :func:`write_atomically` made (and a killed run left)."""
    return name.startswith(".") and TMP_TAG in name


def sweep_temporaries(root: Path, directories: "set[Path] | list[Path]") -> list[Path]:
    """Remove our temporary files left in ``directories`` (relative to ``root``)."""
    removed = []
    for directory in sorted(set(directories)):
        try:
            entries = list(os.scandir(root / directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                crashpoint.done(f"removed {entry.path}")
                removed.append(Path(entry.path))
    return removed


@contextmanager
def removing_new_empty_directories(candidates: Iterable[Path]) -> Iterator[None]:
    """Around a check that makes directories as a side effect (``nginx -t``
    makes nginx's temporary directories): afterwards, remove those of
    ``candidates`` and their ancestors that did not exist before and are empty,
    so a check leaves the host as it found it (nothing left for purge).
    """
    missing: list[Path] = []
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if os.path.lexists(directory):
                break
            missing.append(directory)
    try:
        yield
    finally:
        # Deepest first, so a parent made only for its child goes too.
        for directory in sorted(set(missing), key=lambda d: len(d.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:  # never made, or something is in it now
                pass


def replace_file(target: Path, content: str, mode: int = 0o644) -> Path:
    """Write ``content`` to ``target`` beside it and rename it into place.

    For files other programs read while we write them, such as node_exporter's
    textfile directory (it would read half a file, or a temporary one whose
    name ends in ``.prom``: the temporary name, ours as for
    :func:`write_atomically`, starts with a dot and has no such suffix).
    """
    return _commit_or_discard(_stage_content(target, content, mode))
