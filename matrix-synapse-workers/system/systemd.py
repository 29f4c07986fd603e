"""systemd actions, only where systemd runs and policy-rc.d allows them.

In a chroot or an image build nothing is started: the generator and the
enabled target bring everything up at first boot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TextIO

from .run import run

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def policy_allows(unit: str, action: str) -> bool:
    """Ask policy-rc.d like invoke-rc.d does; 101 means 'do not'."""
    if not os.access(POLICY_RC_D, os.X_OK):
        return True
    return run([str(POLICY_RC_D), unit, action], check=False, capture=True).returncode != 101


class Systemd:
    """Service control that records what it did (and what it skipped, and why)."""

    def __init__(self, out: TextIO, *, dry_run: bool = False) -> None:
        self.out = out
        self.dry_run = dry_run
        self.running = systemd_running()
        self.done: list[str] = []

    def _act(self, action: str, units: list[str]) -> bool:
        if not units:
            return False
        if not self.running:
            self.out.write(f"systemd is not running: no {action} of {' '.join(units)}\n")
            return False
        allowed = [u for u in units if policy_allows(u, action)]
        for unit in sorted(set(units) - set(allowed)):
            self.out.write(f"policy-rc.d forbids {action} of {unit}; leaving it\n")
        if not allowed:
            return False
        self.done.append(f"{action} {' '.join(allowed)}")
        if not self.dry_run:
            run(["systemctl", action, *allowed])
        return True

    def daemon_reload(self) -> None:
        if self.running and not self.dry_run:
            run(["systemctl", "daemon-reload"])

    def enable(self, unit: str) -> None:
        """Works offline too (chroot): it only makes symlinks."""
        if self.dry_run:
            return
        if shutil.which("systemctl") is None:
            self.out.write(f"systemctl is not installed: {unit} is not enabled\n")
            return
        if run(["systemctl", "--quiet", "is-enabled", unit], check=False, capture=True).returncode != 0:
            run(["systemctl", "--quiet", "enable", unit])

    def disable(self, unit: str) -> None:
        """Works offline too (chroot): it only removes symlinks."""
        if self.dry_run or shutil.which("systemctl") is None:
            return
        if run(["systemctl", "--quiet", "is-enabled", unit], check=False, capture=True).returncode == 0:
            run(["systemctl", "--quiet", "disable", unit])

    def is_active(self, unit: str) -> bool:
        if not self.running:
            return False
        return run(["systemctl", "--quiet", "is-active", unit], check=False, capture=True).returncode == 0

    def started_at(self, unit: str) -> int | None:
        """When the unit's current main process started (monotonic µs); None if never."""
        if not self.running:
            return None
        done = run(["systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", unit],
                   check=False, capture=True)
        text = done.stdout.strip()
        return int(text) if done.returncode == 0 and text.isdigit() and int(text) else None

    def queued(self, prefix: str) -> list[str]:
        """Units starting with ``prefix`` that have a job queued or running."""
        if not self.running:
            return []
        done = run(["systemctl", "list-jobs", "--no-legend", "--plain"], check=False, capture=True)
        words = [line.split() for line in done.stdout.splitlines()]
        return [w[1] for w in words if len(w) > 1 and w[1].startswith(prefix)]

    def start(self, *units: str) -> bool:
        return self._act("start", list(units))

    def stop(self, *units: str) -> bool:
        return self._act("stop", list(units))

    def restart(self, *units: str) -> bool:
        return self._act("restart", list(units))

    def reload(self, *units: str) -> bool:
        return self._act("reload", list(units))

    def try_restart(self, *units: str) -> bool:
        """Restart the units that run; leave the others stopped."""
        return self._act("try-restart", list(units))
