"""The systemd generator, run as systemd runs it, against directories made here.

MSW_ROOT moves every path the generator reads (never the link targets).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from package_helpers import require_tool

WORKER_TEMPLATE = "/usr/lib/systemd/system/matrix-synapse-worker@.service"
# The rule the Python code applies to worker file names (hostfacts).
WORKER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Run:
    def __init__(self, generator: Path, tmp_path: Path) -> None:
        self.generator = generator
        self.root = tmp_path / "root"
        self.out = tmp_path / "normal"
        self.args = [str(self.out), str(tmp_path / "early"), str(tmp_path / "late")]
        self.workers = self.root / "etc/matrix-synapse/workers"
        self.root.mkdir()
        self.out.mkdir()

    def worker(self, *names: str) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)
        for name in names:
            (self.workers / name).write_text("worker_app: synapse.app.generic_worker\n")

    def main_unit(self, directory: str) -> None:
        path = self.root / directory.lstrip("/") / "matrix-synapse.service"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[Service]\nExecStart=/bin/true\n")

    def __call__(self, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.generator), *(self.args if args is None else args)],
                              env=dict(os.environ, MSW_ROOT=str(self.root)),
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        return done

    def links(self) -> dict[str, str]:
        wants = self.out / "matrix-synapse.target.wants"
        if not wants.exists():
            return {}
        return {p.name: os.readlink(p) for p in wants.iterdir()}

    def output(self) -> list[str]:
        return sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*"))


@pytest.fixture
def run(generator: Path, tmp_path: Path) -> Run:
    return Run(generator, tmp_path)


def test_links_each_worker_and_main(run: Run) -> None:
    run.worker("sync-1.yaml", "client-1.yaml")
    run.main_unit("/lib/systemd/system")
    run()
    assert run.links() == {
        "matrix-synapse-worker@sync-1.service": WORKER_TEMPLATE,
        "matrix-synapse-worker@client-1.service": WORKER_TEMPLATE,
        "matrix-synapse.service": "/lib/systemd/system/matrix-synapse.service",
    }


def test_main_unit_search_order(run: Run) -> None:
    run.worker("sync-1.yaml")
    run.main_unit("/lib/systemd/system")
    run.main_unit("/usr/lib/systemd/system")
    run()
    assert run.links()["matrix-synapse.service"] == "/usr/lib/systemd/system/matrix-synapse.service"
    run.main_unit("/etc/systemd/system")
    for link in (run.out / "matrix-synapse.target.wants").iterdir():
        link.unlink()
    run()
    assert run.links()["matrix-synapse.service"] == "/etc/systemd/system/matrix-synapse.service"


def test_no_workers_no_links(run: Run) -> None:
    run.main_unit("/lib/systemd/system")
    run()  # no workers directory at all
    assert run.output() == []
    run.workers.mkdir(parents=True)
    run()  # an empty one
    assert run.output() == []


def test_only_yaml_files_with_good_names(run: Run) -> None:
    run.main_unit("/lib/systemd/system")
    names = ["sync-1.yaml", "event_persister-2.yaml", "9.yaml",
             "Sync-1.yaml", "-x.yaml", "_x.yaml", "a b.yaml", "a.b.yaml", "a@b.yaml", "ü.yaml",
             "sync-2.yml", "sync-3.yaml.dpkg-old", "sync-4.yaml~", ".sync-5.yaml", "README"]
    run.worker(*names)
    (run.workers / "dir.yaml").mkdir()
    done = run()
    accepted = {n.removesuffix(".yaml") for n in names
                if n.endswith(".yaml") and WORKER_NAME.match(n.removesuffix(".yaml"))}
    assert accepted == {"sync-1", "event_persister-2", "9"}
    assert set(run.links()) == {f"matrix-synapse-worker@{n}.service" for n in accepted} | {"matrix-synapse.service"}
    for bad in ("Sync-1.yaml", "-x.yaml", "_x.yaml", "a b.yaml", "a.b.yaml", "a@b.yaml"):
        assert f"ignoring {run.workers / bad}" in done.stderr


def test_symlinked_worker_file_counts(run: Run, tmp_path: Path) -> None:
    run.main_unit("/lib/systemd/system")
    run.workers.mkdir(parents=True)
    elsewhere = tmp_path / "kept-elsewhere.yaml"
    elsewhere.write_text("worker_app: synapse.app.generic_worker\n")
    (run.workers / "media-1.yaml").symlink_to(elsewhere)
    (run.workers / "dangling-1.yaml").symlink_to(tmp_path / "missing.yaml")
    run()
    assert set(run.links()) == {"matrix-synapse-worker@media-1.service", "matrix-synapse.service"}


def test_workers_without_main_unit(run: Run) -> None:
    run.worker("sync-1.yaml")
    done = run()
    assert run.links() == {"matrix-synapse-worker@sync-1.service": WORKER_TEMPLATE}
    assert "no matrix-synapse.service found" in done.stderr


def test_never_fails(run: Run, tmp_path: Path) -> None:
    run.worker("sync-1.yaml")
    run([])  # no arguments: nothing to do
    assert run.output() == []
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    run([str(blocked), "x", "y"])  # output directory unusable
    assert blocked.read_text() == ""


def test_is_posix_sh(generator: Path) -> None:
    assert generator.read_text().startswith("#!/bin/sh\n")
    done = subprocess.run([require_tool("checkbashisms"), str(generator)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
