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


def user_name(uid: int) -> str:
    """The user's name, or the number when no account has it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """The group's name, or the number when no group has it."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
