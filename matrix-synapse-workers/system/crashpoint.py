"""Where a test kills the apply: after each action it takes on the system.

Every change the system edge makes (a file written, renamed or removed, an
account, group or statoverride changed, a unit started, stopped, restarted
or reloaded) calls :func:`done` right after it.  Nothing happens unless the
environment asks:

``MSW_ACTION_LOG=FILE``
    append one line per action to FILE (a first run counts the actions);
``MSW_KILL_AFTER_ACTION=N``
    after the N-th action of this process, SIGKILL its whole process group,
    as power loss or the OOM killer would end dpkg and its scripts.

The tests of crash consistency (tests/chroot/test_crash_consistency.py) use
them; an admin has no reason to.
"""

from __future__ import annotations

import os
import signal

_count = 0


def done(action: str) -> None:
    global _count
    log = os.environ.get("MSW_ACTION_LOG")
    kill_at = os.environ.get("MSW_KILL_AFTER_ACTION")
    if not log and not kill_at:
        return
    _count += 1
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{_count} {' '.join(action.split())}\n")
    if kill_at and _count >= int(kill_at):
        os.killpg(os.getpgrp(), signal.SIGKILL)
