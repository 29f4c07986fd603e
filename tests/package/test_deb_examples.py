"""The nginx vhosts as the .deb installs them pass ``nginx -t`` without a warning on the
nginx of the release each is written for, with the package's rendered files:
bookworm's 1.22 on this host, trixie's 1.26 in a trixie chroot
(harness.ensure_suite_root, with trixie's real nginx package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from support.plans import plan_of
from support.vhosts import VHOSTS, nginx_version, problems, release_for, write_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "booted"))
import harness  # noqa: E402  (tests/booted/harness.py)

EXAMPLES = "usr/share/doc/matrix-synapse-workers/examples"
PLAN = "sync:2,client,federation_reader,media,events"


def required(reason: str) -> None:
    if os.environ.get("MSW_REQUIRE_PACKAGE") or os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def test_bookworm_vhost_on_this_hosts_nginx(unpacked: Path, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        required("nginx is not installed")
    version = nginx_version(subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr)
    if release_for(version) != "bookworm":
        required(f"this host's nginx is {version}, not bookworm's")
    example = (unpacked / EXAMPLES / VHOSTS["bookworm"]).read_text()
    conf = write_tree(tmp_path, PurePosixPath(tmp_path), example, plan_of(PLAN), os.geteuid() == 0)
    done = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and not problems(done.stderr), done.stderr


def test_trixie_vhost_on_trixies_nginx(unpacked: Path) -> None:
    try:
        root = harness.ensure_suite_root("trixie", ("nginx",))
    except harness.HarnessUnavailable as e:
        required(f"cannot make a trixie chroot: {e}")
    example = (unpacked / EXAMPLES / VHOSTS["trixie"]).read_text()
    with harness.Container(root, name="trixie-nginx", boot=False) as c:
        where = PurePosixPath("/srv/vhost")
        conf = write_tree(c.path / "srv/vhost", where, example, plan_of(PLAN), root_user=True)
        version = c.chroot_run(["nginx", "-v"], check=False)
        assert release_for(nginx_version(version.stderr + version.stdout)) == "trixie", version.stderr
        done = c.chroot_run(["nginx", "-t", "-c", str(conf), "-p", str(where)], check=False)
    print(done.stderr)
    assert done.returncode == 0 and not problems(done.stderr), done.stderr
