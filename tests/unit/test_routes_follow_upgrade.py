"""After a Synapse upgrade the trigger renders the routes for the new version (and only them)."""

import io
from pathlib import Path

from hostroot import make_root
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.apply import refresh_routes
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.system.systemd import Systemd

METADATA = "opt/venvs/matrix-synapse/lib/python3.11/site-packages/matrix_synapse-{v}.dist-info/METADATA"


def _install_synapse(root: Path, version: str) -> None:
    for old in root.glob(METADATA.format(v="*")):
        old.unlink()
        old.parent.rmdir()
    target = root / METADATA.format(v=version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"Metadata-Version: 2.1\nName: matrix-synapse\nVersion: {version}\n\n")


def test_upgrade_re_renders_the_routes_for_the_new_version(tmp_path, capsys):
    root = make_root(tmp_path)
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/snippets").mkdir(parents=True)
    _install_synapse(root, "1.92.1")
    assert main(["render", "--root", str(root), "--workers", "sync,client"]) == 0
    http = root / paths.NGINX_HTTP_CONF
    before = http.read_text()
    assert "1.92" in before
    assert "notifications" not in (root / paths.NGINX_SNIPPET).read_text()
    worker = (root / paths.WORKERS_DIR / "sync-1.yaml").read_text()

    _install_synapse(root, "1.163.2")
    refresh_routes(root, Systemd(io.StringIO()), io.StringIO())
    after = http.read_text()
    assert after != before and "1.163" in after
    # /notifications moved to workers in 1.93: now routed, before not.
    snippet = (root / paths.NGINX_SNIPPET).read_text()
    assert "notifications" in snippet
    assert (root / paths.WORKERS_DIR / "sync-1.yaml").read_text() == worker
    # Unchanged version: nothing is written.
    mtime = http.stat().st_mtime_ns
    refresh_routes(root, Systemd(io.StringIO()), io.StringIO())
    assert http.stat().st_mtime_ns == mtime


def test_upgrade_re_renders_the_chosen_servers_routes(tmp_path):
    """The same for Caddy in front: its snippet follows; no nginx file appears."""
    root = make_root(tmp_path)
    (root / "etc/caddy").mkdir(parents=True)
    _install_synapse(root, "1.92.1")
    assert main(["render", "--root", str(root), "--workers", "sync,client", "--web-server", "caddy"]) == 0
    snippet = root / paths.CADDY_SNIPPET
    assert "notifications" not in snippet.read_text()
    _install_synapse(root, "1.163.2")
    refresh_routes(root, Systemd(io.StringIO()), io.StringIO())
    assert "notifications" in snippet.read_text()
    assert not (root / paths.NGINX_SNIPPET).exists() and not (root / paths.NGINX_HTTP_CONF).exists()
