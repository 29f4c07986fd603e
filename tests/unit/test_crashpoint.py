"""The hook the crash tests kill at: it counts the edge's actions and kills its process group."""

import os
import signal
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from support.tree import use_source_tree
use_source_tree()
from pathlib import Path, PurePosixPath
from matrix_synapse_workers.render.files import RenderedFile
from matrix_synapse_workers.system.files import write_atomically
root = Path(sys.argv[1])
for n in range(1, 4):
    write_atomically(root, RenderedFile(PurePosixPath(f"f{n}"), f"{n}\\n"), chown=False)
"""


def run(tmp_path, **env):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO / "tests")], start_new_session=True,
                          env={**os.environ, **env}, capture_output=True, text=True)


def test_actions_are_counted_and_the_group_is_killed_after_the_nth(tmp_path):
    log = tmp_path / "actions"
    assert run(tmp_path, MSW_ACTION_LOG=str(log)).returncode == 0
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [
        ["1", "wrote"], ["2", "wrote"], ["3", "wrote"]]
    for name in ("f1", "f2", "f3"):
        (tmp_path / name).unlink()
    log.write_text("1 an earlier script's action\n")  # scripts of one dpkg run count together
    done = run(tmp_path, MSW_ACTION_LOG=str(log), MSW_KILL_AFTER_ACTION="3")
    assert done.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("f")) == ["f1", "f2"]


def test_without_the_variables_nothing_is_counted(tmp_path):
    assert run(tmp_path).returncode == 0
    assert not (tmp_path / "actions").exists()
