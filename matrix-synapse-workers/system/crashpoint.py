"""Where a test kills the apply: after each action it takes on the system.

Every change the system edge makes (a file written, renamed or removed, an
account, group or statoverride changed, a unit started, stopped, restarted
or reloaded) calls :func:`done` right after it.  Nothing happens unless the
environment asks:

``MSW_ACTION_LOG=FILE``
    append one line per action to FILE, numbered from the lines already there,
    so that the maintainer scripts of one dpkg run count together (debian/postrm
    has the same hook in sh);
``MSW_KILL_AFTER_ACTION=N``
    (with the log) after action N, SIGKILL the whole process group, as power
    loss or the OOM killer would end dpkg and its scripts.

The tests of crash consistency (tests/chroot/test_crash_consistency.py) use
them; an admin has no reason to.
"""

from __future__ import annotations

import os
import signal


def done(action: str) -> None:
    log = os.environ.get("MSW_ACTION_LOG")
    if not log:
        return
    with open(log, "a+", encoding="utf-8") as handle:
        handle.seek(0)
        count = sum(1 for _ in handle) + 1
        handle.write(f"{count} {' '.join(action.split())}\n")
    kill_at = os.environ.get("MSW_KILL_AFTER_ACTION")
    if kill_at and count >= int(kill_at):
        os.killpg(os.getpgrp(), signal.SIGKILL)
