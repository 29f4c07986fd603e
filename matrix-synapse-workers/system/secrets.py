"""The secrets shared between hosts, and the files made from them.

On the main host the replication secret and the Redis password are generated
once (0640 root:matrix-synapse, never inline in YAML, never replaced: the
admin may have copied them to worker hosts already).  On a worker host they
are the admin's copies, checked before use.
"""

from __future__ import annotations

import os
import pwd
import secrets
from pathlib import Path, PurePosixPath

from ..core import paths
from ..core.cluster import COPY_HINT
from ..core.errors import HostConfigError
from ..core.redisserver import REDIS, RedisServer
from ..render.files import GENERATED_MARKER, RenderedFile
from . import crashpoint
from .files import TMP_TAG, write_atomically

SECRET_MODE = 0o640
CLUSTER_DIR_MODE = 0o750


def _fix(path: PurePosixPath) -> str:
    return (f"chown root:{paths.SYNAPSE_USER} /{path} && chmod {SECRET_MODE:04o} /{path}")


def ensure_generated(root: Path, relative: PurePosixPath) -> bool:
    """Create the secret file if it is missing; True if it was created."""
    target = root / relative
    # The Synapse user's own primary group (matrix-synapse-py3 makes it with
    # adduser --group), read rather than assumed: read_copied accepts the same.
    gid = pwd.getpwnam(paths.SYNAPSE_USER).pw_gid
    directory = target.parent
    if not directory.is_dir():
        directory.mkdir(parents=True)
        crashpoint.done(f"created {directory}")
    # Checked each time, not only when made: a run killed right after the mkdir leaves it root's.
    status = directory.stat()
    if (status.st_uid, status.st_gid) != (0, gid):
        os.chown(directory, 0, gid)
        crashpoint.done(f"chown {directory}")
    if status.st_mode & 0o7777 != CLUSTER_DIR_MODE:
        os.chmod(directory, CLUSTER_DIR_MODE)
        crashpoint.done(f"chmod {directory}")
    if target.exists():
        return False
    # Ours alone (swept after a kill, see .files), and gone if a killed run left it.
    tmp = target.with_name(f".{target.name}{TMP_TAG}new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fchown(fd, 0, gid)
        os.fchmod(fd, SECRET_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    crashpoint.done(f"wrote {target}")
    return True


def read_copied(root: Path, relative: PurePosixPath, user: str = paths.SYNAPSE_USER) -> str:
    """A secret file the admin copied from the main host, refused when unsafe or unusable
    (``user``, who must read it: Synapse's account)."""
    target = root / relative
    try:
        status = target.stat()
    except FileNotFoundError:
        raise HostConfigError(f"/{relative} is missing: {COPY_HINT}") from None
    mode = status.st_mode & 0o777
    if mode & 0o007:
        raise HostConfigError(f"/{relative} can be read by every user (mode {mode:04o}); "
                              f"run: {_fix(relative)}")
    synapse = pwd.getpwnam(user)
    readable = (status.st_uid == synapse.pw_uid and mode & 0o400) or (
        status.st_gid == synapse.pw_gid and mode & 0o040)
    if not readable:
        raise HostConfigError(f"/{relative} cannot be read by {user} "
                              f"(owner {status.st_uid}:{status.st_gid}, mode {mode:04o}); "
                              f"run: {_fix(relative)}")
    value = target.read_text(encoding="utf-8").strip()
    if not value:
        raise HostConfigError(f"/{relative} is empty: {COPY_HINT}")
    return value


def _redis_auth_text(root: Path) -> str:
    password = (root / paths.REDIS_PASSWORD).read_text(encoding="utf-8").strip()
    return (f"{GENERATED_MARKER}: the password of /{paths.REDIS_PASSWORD}.\n"
            f"requirepass {password}\n")


def redis_auth_current(root: Path, server: RedisServer = REDIS) -> bool:
    """Whether the dedicated instance's ``requirepass`` file already says the password file's."""
    try:
        return (root / server.instance_auth_conf).read_text(encoding="utf-8") == _redis_auth_text(root)
    except FileNotFoundError:
        return False


def write_redis_auth(root: Path, server: RedisServer = REDIS) -> None:
    """The dedicated instance's ``requirepass`` from the password file."""
    write_atomically(root, RenderedFile(server.instance_auth_conf, _redis_auth_text(root), mode=0o640,
                                        owner=server.user, group=server.user), chown=True)


def mark_worker_host(root: Path, label: str) -> bool:
    """The file whose presence keeps main from starting here; True if it changed."""
    target = root / paths.WORKER_HOST_MARK
    content = f"{label}\n"
    try:
        if target.read_text(encoding="utf-8") == content:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.new")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, target)
    crashpoint.done(f"wrote {target}")
    return True
