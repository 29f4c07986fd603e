"""nginx: write our two files only if ``nginx -t`` accepts them, reload only if running.

A failed check puts the previous files back (or removes the new ones), so the
running nginx and its files stay as they were, and says why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from ..core import paths
from ..core import vhost
from ..core.errors import ApplyError
from ..render.files import RenderedFile
from . import crashpoint
from .files import commit, removing_new_empty_directories, stage_all
from .run import run

UNIT = "nginx.service"
FILES = (paths.NGINX_HTTP_CONF, paths.NGINX_SNIPPET, paths.NGINX_ADMIN_SNIPPET)


def installed(root: Path) -> bool:
    """nginx's configuration directory exists: only then do our files belong there."""
    return (root / paths.NGINX_DIR).is_dir()


def binary() -> str | None:
    return shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")


@dataclass(frozen=True)
class _Saved:
    path: PurePosixPath
    content: bytes | None
    mode: int = 0o644


def _save(root: Path, relative: PurePosixPath) -> _Saved:
    target = root / relative
    if not target.is_file():
        return _Saved(relative, None)
    return _Saved(relative, target.read_bytes(), target.stat().st_mode & 0o7777)


def _restore(root: Path, saved: _Saved) -> None:
    target = root / saved.path
    if saved.content is None:
        target.unlink(missing_ok=True)
        crashpoint.done(f"removed {target}")
        return
    tmp = target.with_name(f".{target.name}.restore")
    tmp.write_bytes(saved.content)
    os.chmod(tmp, saved.mode)
    os.replace(tmp, target)
    crashpoint.done(f"restored {target}")


def temp_paths(nginx: str) -> list[Path]:
    """The temporary directories nginx was built with (``nginx -V``: Debian's are
    /var/lib/nginx/body, proxy...), which ``nginx -t`` makes when missing."""
    result = run([nginx, "-V"], check=False, capture=True)
    return [Path(p) for p in re.findall(r"--http-[a-z-]+-temp-path=(\S+)", result.stderr or "")]


def check(root: Path) -> str | None:
    """nginx's complaint about its whole configuration, or None when it passes
    (or cannot be asked: no nginx binary, or a root other than /).

    On a host where nginx never ran, ``nginx -t`` makes its temporary
    directories: those it made are removed again (nginx makes them when it
    starts), so a check leaves nothing behind that purge would not remove.
    """
    nginx = binary()
    if nginx is None or root != Path("/"):
        return None
    with removing_new_empty_directories(temp_paths(nginx)):
        result = run([nginx, "-t", "-q"], check=False, capture=True)
    return None if result.returncode == 0 else (result.stderr or "").strip()[-1500:]


def dump(timeout: float = 5.0) -> subprocess.CompletedProcess[str] | None:
    """``nginx -T``: the whole configuration nginx would load, file by file; None
    when there is no nginx or it does not answer in time.  Like :func:`check`, it
    leaves no temporary directory behind that it made."""
    nginx = binary()
    if nginx is None:
        return None
    try:
        with removing_new_empty_directories(temp_paths(nginx)):
            return subprocess.run([nginx, "-T"], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def left_to_do(root: Path) -> list[str]:
    """What the admin still has to do in nginx for the workers to get requests
    (:func:`..core.vhost.todo`); [] when nothing, or when nginx cannot be asked
    (not installed, a root other than /, a configuration ``nginx -T`` refuses:
    the apply said so already)."""
    if root != Path("/") or not installed(root):
        return []
    done = dump()
    if done is None or done.returncode != 0:
        return []
    return vhost.todo(vhost.judge(done.stdout))


def write_checked(root: Path, files: Sequence[RenderedFile], set_aside: Sequence[PurePosixPath],
                  *, chown: bool, checker: Callable[[Path], str | None] | None = None,
                  tool: str = "nginx -t", server: str = "nginx") -> bool:
    """Write ``files`` (ours under /etc/nginx); keep them only if ``nginx -t`` passes.

    Another web server's files go the same way with its own ``checker`` (see
    system/webservers.py), named ``tool`` and ``server`` in the error.

    ``set_aside`` are admin files at our paths, kept as ``<path>.dpkg-old``.
    Returns whether anything was written.  Raises ApplyError, with every file as
    it was before, when nginx rejects the result.
    """
    if not files:
        return False
    saved = [_save(root, f.path) for f in files]
    staged = stage_all(root, files, chown=chown)  # a full disk: nothing changed
    for relative in set_aside:
        os.replace(root / relative, root / f"{relative}.dpkg-old")
        crashpoint.done(f"set aside {relative}")
    for item in staged:
        commit(item)
    complaint = (checker or check)(root)
    if complaint is None:
        return True
    for item in saved:
        _restore(root, item)
    for relative in set_aside:
        os.replace(root / f"{relative}.dpkg-old", root / relative)
        crashpoint.done(f"put back {relative}")
    raise ApplyError(
        f"'{tool}' rejects the {server} configuration with the new "
        f"{' and '.join('/' + str(f.path) for f in files)}: {complaint}; the previous files "
        f"were put back, {server} was not reloaded and nothing else was changed. Fix the {server} "
        f"configuration (see '{tool}'), then run: dpkg-reconfigure matrix-synapse-workers")
