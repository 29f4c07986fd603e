"""The installed units' sandbox, scored by systemd's own `systemd-analyze security --offline`.

The packaged command renders the drop-ins for one worker of every role (and
main's) into a root that holds the packaged units and the stand-in's
matrix-synapse.service (the same unit as matrix-synapse-py3's in every respect
scored here); systemd-analyze then scores each unit with its drop-ins, as
systemd would load them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from package_helpers import require_tool

REPO = Path(__file__).resolve().parents[2]
STANDIN_MAIN = REPO / "tests/standin/files/lib/systemd/system/matrix-synapse.service"
#: The issue's bar (systemd-analyze's scale: 0 confined, 10 not at all).
MAX_EXPOSURE = 1.5
_OVERALL = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")
sys.path.insert(0, str(REPO / "tests"))
from hostroot import DEBIAN_LOG_CONFIG, homeserver  # noqa: E402
from matrix_synapse_workers.core.catalog import ROLES  # noqa: E402


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    config = homeserver(tmp_path, media_store_path="/var/lib/matrix-synapse/media")
    config["database"]["args"]["host"] = "/run/postgresql"
    etc = root / "etc/matrix-synapse"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "homeserver.yaml").write_text(yaml.safe_dump(config))
    (etc / "log.yaml").write_text(yaml.safe_dump(DEBIAN_LOG_CONFIG))
    for directory in ("var/log/matrix-synapse", "var/lib/matrix-synapse/media"):
        (root / directory).mkdir(parents=True)
    return root


def scores(analyze: str, root: Path, units: list[str]) -> dict[str, float]:
    done = subprocess.run([analyze, "security", "--offline=yes", f"--root={root}", "--no-pager",
                           *units], capture_output=True, text=True, check=False,
                          env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0"))
    found = {name: float(value) for name, value in _OVERALL.findall(done.stdout)}
    assert set(found) == set(units), done.stdout + done.stderr
    return found


def test_every_unit_scores_at_most_1_5(unpacked: Path, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    root = _root(tmp_path)
    shutil.copytree(unpacked / "usr/lib/systemd/system", root / "usr/lib/systemd/system")
    (root / "lib/systemd/system").mkdir(parents=True)
    shutil.copy(STANDIN_MAIN, root / "lib/systemd/system/matrix-synapse.service")
    spec = ",".join(name for name in ROLES)
    env = dict(os.environ, PYTHONPATH=str(unpacked / "usr/lib/python3/dist-packages"))
    subprocess.run(["/usr/bin/python3", str(unpacked / "usr/bin/matrix-synapse-workers"), "render",
                    "--root", str(root), "--workers", spec], env=env, check=True,
                   capture_output=True)
    dropins = sorted((root / "etc/systemd/system").glob("matrix-synapse-worker@*.service.d"))
    units = [d.name[:-2] for d in dropins]
    assert len(units) == len(ROLES)
    found = scores(analyze, root, [*units, "matrix-synapse.service"])
    too_open = {unit: score for unit, score in found.items() if score > MAX_EXPOSURE}
    assert not too_open, found
    # Confined roles score lower than outward ones: their network is closed.
    assert found["matrix-synapse-worker@sync-1.service"] < found[
        "matrix-synapse-worker@federation-sender-1.service"]
    print(found)


def test_the_score_falls_back_without_our_drop_ins(unpacked: Path, tmp_path: Path) -> None:
    """The measure can fail: Synapse's unit alone, without main's drop-in, is far above it."""
    analyze = require_tool("systemd-analyze")
    root = tmp_path / "bare"
    (root / "lib/systemd/system").mkdir(parents=True)
    shutil.copy(STANDIN_MAIN, root / "lib/systemd/system/matrix-synapse.service")
    assert scores(analyze, root, ["matrix-synapse.service"])["matrix-synapse.service"] > 5
