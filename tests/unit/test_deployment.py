"""deployment.read_deployment: the one reading of what is deployed, used by the command,
apply, the trigger's re-render (refresh_routes) and status."""

import io

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers import apply
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.core.settings import RedisMode
from matrix_synapse_workers.core.topology import HostRole
from matrix_synapse_workers.deployment import deployed_settings, read_deployment
from matrix_synapse_workers.system.systemd import Systemd


def test_what_render_wrote_reads_back_as_the_same_deployment(tmp_path, capsys):
    root = make_root(tmp_path)
    assert main(["render", "--root", str(root), "--workers", "sync:2,client", "--socket-group", "webby",
                 "--redis", "guide"]) == 0
    settings = deployed_settings(root)
    assert (settings.socket_group, settings.redis.mode, settings.topology.role) == \
        ("webby", RedisMode.GUIDE, HostRole.MAIN)
    deployment = read_deployment(root)
    assert [w.name for w in deployment.plan.local_workers] == ["sync-1", "sync-2", "client-1"]
    assert deployment.selection.counts == {"sync": 2, "client": 1}
    # Rendered again from what the files say, every file is what is there: nothing
    # (the tmpfiles group, the Redis choice) falls back to a default.
    for rendered in deployment.files():
        target = root / rendered.path
        if target.exists():
            assert target.read_text(encoding="utf-8") == rendered.content, rendered.path


def test_one_error_when_the_host_cannot_take_workers(tmp_path):
    root = make_root(tmp_path, homeserver(tmp_path, database={"name": "sqlite3", "args": {}}))
    with pytest.raises(HostConfigError, match="sqlite3"):
        read_deployment(root)


def test_refresh_routes_renders_with_the_deployed_settings(tmp_path, monkeypatch, capsys):
    """The trigger's re-render reads the deployment as everything else does: with nginx
    files of ours in place and nothing changed, it writes nothing."""
    root = make_root(tmp_path)
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/snippets").mkdir(parents=True)
    assert main(["render", "--root", str(root), "--workers", "sync", "--socket-group", "webby"]) == 0
    written = []
    monkeypatch.setattr(apply.nginx, "installed", lambda r: True)
    monkeypatch.setattr(apply.nginx, "write_checked", lambda *a, **k: written.append(a) or True)
    out = io.StringIO()
    apply.refresh_routes(root, Systemd(out), out)
    assert written == [] and out.getvalue() == ""
