"""Users and groups, the Debian way: adduser/addgroup, only when something is missing."""

from __future__ import annotations

import grp
import pwd

from .run import run


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def is_member(user: str, group: str) -> bool:
    entry = grp.getgrnam(group)
    return user in entry.gr_mem or pwd.getpwnam(user).pw_gid == entry.gr_gid


def ensure_system_group(name: str) -> bool:
    """Create the group if missing; True when something changed."""
    if group_exists(name):
        return False
    run(["addgroup", "--quiet", "--system", name])
    return True


def ensure_member(user: str, group: str) -> bool:
    if is_member(user, group):
        return False
    run(["adduser", "--quiet", user, group])
    return True
