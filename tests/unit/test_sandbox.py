"""The sandbox drop-ins: writable paths from the admin's configuration, network from the role."""

import os

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers.apply import apply_host
from matrix_synapse_workers.cli import decide
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.catalog import ROLES
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.system.hostfacts import read_host_facts, resolve_under


def _values(text, key):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def _socket_root(tmp_path, **overrides):
    config = homeserver(tmp_path, **overrides)
    config["database"]["args"]["host"] = "/run/postgresql"
    root = make_root(tmp_path, config)
    for d in ("var/log/matrix-synapse", "var/lib/matrix-synapse/media"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def _dropins(root, spec, settings=Settings()):
    files = {str(f.path): f.content for f in decide(root, None, spec, settings).files}
    return {name: files[str(paths.worker_sandbox_dropin(name))]
            for name in ("sync-1", "media-1", "federation-sender-1") if
            str(paths.worker_sandbox_dropin(name)) in files}, files[str(paths.MAIN_SANDBOX_DROPIN)]


def test_every_role_says_why_it_has_its_network():
    assert all(role.network_why for role in ROLES.values())
    assert not ROLES["sync"].outbound and ROLES["federation_sender"].outbound


def test_writable_paths_come_from_the_configuration(tmp_path):
    root = _socket_root(tmp_path, media_store_path="/var/lib/matrix-synapse/media")
    workers, main = _dropins(root, "sync,media,federation_sender")
    assert _values(workers["sync-1"], "ReadWritePaths") == ["", "/run/matrix-synapse",
                                                            "/var/log/matrix-synapse"]
    assert _values(workers["media-1"], "ReadWritePaths") == [
        "", "/run/matrix-synapse", "/var/lib/matrix-synapse/media", "/var/log/matrix-synapse"]
    assert _values(main, "ReadWritePaths") == _values(workers["media-1"], "ReadWritePaths")


def test_a_media_store_behind_a_symlink_is_opened_where_it_lies(tmp_path):
    root = _socket_root(tmp_path, media_store_path="/var/lib/matrix-synapse/media-link")
    (root / "srv/matrix-media").mkdir(parents=True)
    (root / "var/lib/matrix-synapse/media-link").rmdir()  # make_root made it a directory
    os.symlink("/srv/matrix-media", root / "var/lib/matrix-synapse/media-link")
    assert resolve_under(root, "/var/lib/matrix-synapse/media-link") == "/srv/matrix-media"
    workers, _ = _dropins(root, "media")
    assert "/srv/matrix-media" in _values(workers["media-1"], "ReadWritePaths")


def test_a_missing_media_store_is_one_error_before_anything_changes(tmp_path):
    root = _socket_root(tmp_path, media_store_path="/srv/nowhere/media")
    (root / "srv/nowhere/media").rmdir()  # make_root made it
    (root / "srv/nowhere").rmdir()
    before = sorted(p for p in root.rglob("*"))
    with pytest.raises(HostConfigError,
                       match="media_store_path is '/srv/nowhere/media', which does not exist"):
        apply_host(root, None, Settings(), facts=read_host_facts(root))
    assert sorted(p for p in root.rglob("*")) == before


def test_socket_only_roles_get_unix_sockets_only(tmp_path):
    workers, main = _dropins(_socket_root(tmp_path), "sync,media,federation_sender")
    assert _values(workers["sync-1"], "RestrictAddressFamilies")[-1] == "AF_UNIX"
    assert _values(workers["sync-1"], "IPAddressDeny") == ["any"]
    for outward in (workers["media-1"], workers["federation-sender-1"], main):
        assert _values(outward, "RestrictAddressFamilies")[-1] == "AF_UNIX AF_INET AF_INET6"
        assert not _values(outward, "IPAddressDeny")


def test_a_database_over_tcp_is_allowed_and_nothing_else(tmp_path):
    config = homeserver(tmp_path)
    config["database"]["args"]["host"] = "10.1.2.3"
    workers, _ = _dropins(make_root(tmp_path, config), "sync")
    assert _values(workers["sync-1"], "IPAddressAllow") == ["localhost 10.1.2.3"]
    assert _values(workers["sync-1"], "RestrictAddressFamilies")[-1] == "AF_UNIX AF_INET AF_INET6"


def test_a_database_host_name_cannot_be_pinned_so_the_role_keeps_the_network(tmp_path):
    config = homeserver(tmp_path)
    config["database"]["args"]["host"] = "db.example.org"
    workers, _ = _dropins(make_root(tmp_path, config), "sync")
    assert not _values(workers["sync-1"], "IPAddressDeny")
    assert "db.example.org is a host name" in workers["sync-1"]


def test_a_missing_media_store_in_an_existing_directory_is_left_to_synapse(tmp_path):
    """Synapse's loader makes it (apply's check, before the units start): an image build."""
    root = _socket_root(tmp_path, media_store_path="/var/lib/matrix-synapse/media")
    (root / "var/lib/matrix-synapse/media").rmdir()
    workers, _ = _dropins(root, "media")
    assert "/var/lib/matrix-synapse/media" in _values(workers["media-1"], "ReadWritePaths")


def test_main_may_write_its_missing_signing_key_until_it_exists(tmp_path):
    """An image build: main's ExecStartPre makes the key at first boot, inside the sandbox."""
    root = _socket_root(tmp_path, signing_key_path="/etc/matrix-synapse/homeserver.signing.key")
    _, main = _dropins(root, "sync")
    assert "/etc/matrix-synapse" in _values(main, "ReadWritePaths")
    (root / "etc/matrix-synapse/homeserver.signing.key").write_text("ed25519 a_key xxx\n")
    _, main = _dropins(root, "sync")
    assert "/etc/matrix-synapse" not in _values(main, "ReadWritePaths")


def test_with_metrics_a_confined_role_listens_on_loopback_tcp_and_nothing_more(tmp_path):
    """Synapse serves metrics on TCP only: a sockets-only role needs loopback TCP for them."""
    from dataclasses import replace
    workers, _ = _dropins(_socket_root(tmp_path), "sync", replace(Settings(), metrics=True))
    assert _values(workers["sync-1"], "RestrictAddressFamilies")[-1] == "AF_UNIX AF_INET AF_INET6"
    assert _values(workers["sync-1"], "IPAddressDeny") == ["any"]
    assert _values(workers["sync-1"], "IPAddressAllow") == ["localhost"]


def test_stream_writers_start_before_the_other_workers(tmp_path):
    """After a restart of everything, the event persister is what sends wait on."""
    root = _socket_root(tmp_path)
    files = {str(f.path): f.content for f in decide(root, None, "sync,events:2,typing", Settings()).files}
    dropin = {name: files[str(paths.worker_sandbox_dropin(name))]
              for name in ("sync-1", "events-1", "typing-1")}
    assert _values(dropin["sync-1"], "After") == [
        "matrix-synapse-worker@events-1.service matrix-synapse-worker@events-2.service "
        "matrix-synapse-worker@typing-1.service"]
    # Writers are not ordered among themselves, and nothing is ordered without writers.
    assert not _values(dropin["events-1"], "After") and not _values(dropin["typing-1"], "After")
    alone = {str(f.path): f.content for f in decide(root, None, "sync", Settings()).files}
    assert "[Unit]" not in alone[str(paths.worker_sandbox_dropin("sync-1"))]
