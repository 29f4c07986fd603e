"""A hand-made setup taken over (the worker guide's, Synapse docs'): the files the package
would write, with the admin's homeserver.yaml left as it is (its replication listener and
instance_map still in it), load in the real Synapse as main and as each worker."""

import io
import shutil
from pathlib import Path

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers import apply
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.system import accounts, statoverride
from support import handmade

VARIANTS = {
    "guide": (handmade.GUIDE_REPLICATION, handmade.guide_homeserver_additions(), handmade.guide_files,
              {"sync": 1, "client": 1}),
    "synapse-docs": (handmade.DOCS_REPLICATION, handmade.docs_homeserver_additions(),
                     handmade.docs_files, {"client": 1, "federation_sender": 1}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_taken_over_setup_loads(tmp_path, load_with_synapse, monkeypatch, variant):
    monkeypatch.setattr(accounts, "user_exists", lambda name: True)
    monkeypatch.setattr(statoverride, "get", lambda path: None)
    listener, additions, files, counts = VARIANTS[variant]
    base = homeserver(tmp_path)
    root = make_root(tmp_path, dict(base, listeners=[*base["listeners"], listener], **additions))
    files(root)
    report = apply.apply_host(root, select(workers="sync"), Settings(), dry_run=True, out=io.StringIO())
    assert report.plan.counts() == counts
    # What Synapse will read: the admin's homeserver.yaml and conf.d, then ours over them.
    stage = tmp_path / "stage"
    shutil.copytree(root / paths.CONF_D, stage / "conf.d")
    (stage / "workers").mkdir()
    shutil.copy(root / paths.HOMESERVER_YAML, stage / "homeserver.yaml")
    for rendered in report.changes.write:
        if rendered.path.parent in (paths.CONF_D, paths.WORKERS_DIR):
            (stage / rendered.path.parent.name / rendered.path.name).write_text(rendered.content)
    base_set = [str(stage / "homeserver.yaml"), str(stage / "conf.d")]
    sets = {"main": base_set, **{p.stem: base_set + [str(p)] for p in sorted((stage / "workers").glob("*.yaml"))}}
    results = load_with_synapse(sets, (str(tmp_path / "signing.key"),))
    assert results == {"main": "OK master", **{label: f"OK {label}" for label in sets if label != "main"}}
