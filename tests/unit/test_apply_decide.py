"""apply_host's decision phase (``dry_run=True``): everything is decided and every error
raised before the first change, and nothing under the root is touched.

The accounts and dpkg's statoverride are the system's: here they are given
(matrix-synapse exists, no override), so the test runs on any machine.  The
acting phase is tested for real in tests/chroot and tests/booted.
"""

import io
import os
from pathlib import Path

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers import apply
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.errors import HostConfigError, SelectionError
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.system import accounts, statoverride


@pytest.fixture(autouse=True)
def system_accounts(monkeypatch):
    monkeypatch.setattr(accounts, "user_exists", lambda name: name in (paths.SYNAPSE_USER, "www-data"))
    monkeypatch.setattr(statoverride, "get", lambda path: None)


def tree(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
            for p in root.rglob("*")}


def test_dry_run_decides_the_workers_and_changes_nothing(tmp_path):
    root = make_root(tmp_path)
    before = tree(root)
    out = io.StringIO()
    report = apply.apply_host(root, select(workers="sync:2,typing"), Settings(), dry_run=True, out=out)
    assert report.changes.start == ("sync-1", "sync-2", "typing-1")
    written = {str(f.path) for f in report.changes.write}
    assert {f"{paths.WORKERS_DIR}/sync-1.yaml", str(paths.SHARED_CONF), str(paths.REDIS_CONF_D)} <= written
    assert report.changes.restart_main and not report.system_steps and not report.services
    assert [w.name for w in report.plan.local_workers] == ["sync-1", "sync-2", "typing-1"]
    assert "sync-1" in out.getvalue()
    assert tree(root) == before


def test_dry_run_refuses_sqlite_before_anything(tmp_path):
    config = homeserver(tmp_path, database={"name": "sqlite3", "args": {"database": "x.db"}})
    root = make_root(tmp_path, config)
    before = tree(root)
    with pytest.raises(HostConfigError, match="sqlite3"):
        apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    assert tree(root) == before


def test_dry_run_refuses_a_missing_web_user_and_a_missing_selection(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    with pytest.raises(HostConfigError, match="'nobody-here'"):
        apply.apply_host(root, select(workers="sync"), Settings(web_user="nobody-here"), dry_run=True,
                         out=io.StringIO())
    with pytest.raises(SelectionError, match="no workers chosen"):
        apply.apply_host(root, None, Settings(), dry_run=True, out=io.StringIO())


def test_dry_run_after_the_files_exist_has_nothing_to_do(tmp_path):
    root = make_root(tmp_path)
    report = apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    for rendered in report.changes.write:
        path = root / rendered.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered.content)
        os.chmod(path, rendered.mode)
    again = apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    assert not again.changes.files_changed and not again.changes.restart_workers


def test_the_dry_run_hands_back_the_facts_it_read_and_a_later_run_reads_none(tmp_path, monkeypatch):
    """The postinst reads the host facts once: the dry run's go to the real apply (facts=)."""
    from matrix_synapse_workers.system.hostfacts import read_host_facts
    root = make_root(tmp_path)
    report = apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    assert report.facts == read_host_facts(root)

    def no_second_reading(root_):
        raise AssertionError("the host facts were read again")

    monkeypatch.setattr(apply, "read_host_facts", no_second_reading)
    again = apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO(),
                             facts=report.facts)
    assert again.facts is report.facts and again.changes == report.changes


def test_a_worker_host_plans_through_read_deployment_and_probes_in_a_step_of_its_own(tmp_path, monkeypatch):
    """A worker host's plan is read_deployment's (from its copy of cluster.yaml); whether this
    machine is the address cluster.yaml names, and whether main answers, is one step after it."""
    from matrix_synapse_workers.core.plan import make_plan
    from matrix_synapse_workers.core.topology import main_topology, worker_host_topology
    from matrix_synapse_workers.deployment import read_deployment
    from matrix_synapse_workers.render.files import render
    from matrix_synapse_workers.system import netprobe, secrets
    from matrix_synapse_workers.system.hostfacts import read_host_facts
    main = make_root(tmp_path / "main")
    topology = main_topology("hostb 10.99.0.2 sync:2", "10.99.0.1")
    main_files = render(make_plan(select(workers="typing"), read_host_facts(main), topology),
                        read_host_facts(main), Settings(topology=topology))
    root = make_root(tmp_path / "hostb")
    [cluster] = [f for f in main_files if f.path == paths.CLUSTER_FILE]
    (root / cluster.path).parent.mkdir(parents=True, exist_ok=True)
    (root / cluster.path).write_text(cluster.content)
    settings = Settings(web_user="", topology=worker_host_topology("hostb"))
    monkeypatch.setattr(secrets, "read_copied", lambda root_, relative: "copied")
    looked: list[str] = []
    monkeypatch.setattr(netprobe, "is_local_address", lambda address: looked.append(str(address)) or True)
    monkeypatch.setattr(apply, "systemd_running", lambda: False)  # an image build: nothing to probe
    before = tree(root)
    out = io.StringIO()
    report = apply.apply_host(root, None, settings, dry_run=True, out=out)
    assert report.plan == read_deployment(root, None, settings).plan
    assert [w.name for w in report.plan.local_workers] == ["sync-1-hostb", "sync-2-hostb"]
    assert looked == ["10.99.0.2"] and "not checked from here" in out.getvalue()
    monkeypatch.setattr(netprobe, "is_local_address", lambda address: False)
    with pytest.raises(HostConfigError, match="10.99.0.2, which is not an address of this machine"):
        apply.apply_host(root, None, settings, dry_run=True, out=io.StringIO())
    assert tree(root) == before


def test_every_blocker_is_named_at_once(tmp_path):
    """SQLite and no server name: one refusal names both, each with its fix."""
    config = homeserver(tmp_path, database={"name": "sqlite3", "args": {"database": "x.db"}})
    root = make_root(tmp_path, config)
    (root / "etc/matrix-synapse/conf.d/server_name.yaml").write_text("server_name: ''\n")
    before = tree(root)
    with pytest.raises(HostConfigError) as refused:
        apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    message = str(refused.value)
    assert message.startswith("2 things stand in the way: (1) Synapse has no server name")
    assert "(2) Synapse uses the 'sqlite3' database engine" in message and "synapse_port_db" in message
    assert tree(root) == before


def test_adoption_blockers_join_the_refusal(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    monkeypatch.setattr(apply, "adoption_blockers", lambda root, facts, adopt: ["a hand-made worker X; fix Y"])
    with pytest.raises(HostConfigError, match="a hand-made worker X; fix Y"):
        apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
