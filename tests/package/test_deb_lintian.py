"""lintian has no error and no warning about the .deb."""

from __future__ import annotations

import subprocess
from pathlib import Path

from package_helpers import require_tool


def test_lintian_clean(deb_path: Path) -> None:
    lintian = require_tool("lintian")
    done = subprocess.run([lintian, "--display-info", "--tag-display-limit", "0", str(deb_path)],
                          capture_output=True, text=True, check=False)
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert not tags, done.stdout
    # lintian's own failures (not tags) exit 2 or more.
    assert done.returncode in (0, 1), done.stdout + done.stderr
