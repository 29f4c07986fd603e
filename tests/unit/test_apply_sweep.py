"""What a killed apply leaves that the next one must sweep (issue 16, found on a booted system)."""

from matrix_synapse_workers.apply import sweep_empty_dropin_dirs
from matrix_synapse_workers.core import paths


def test_an_emptied_drop_in_directory_of_a_removed_worker_goes_and_nothing_else(tmp_path):
    """A run killed between removing a worker's drop-in and its directory left the directory
    empty: no drop-in of ours is in it any more, so only this sweep removes it."""
    units = tmp_path / paths.SYSTEMD_ETC
    gone = units / "matrix-synapse-worker@events-1.service.d"
    planned = units / "matrix-synapse-worker@sync-1.service.d"
    admins = units / "matrix-synapse-worker@typing-1.service.d"
    other = units / "nginx.service.d"
    for directory in (gone, planned, admins, other):
        directory.mkdir(parents=True)
    (admins / "override.conf").write_text("[Service]\nNice=5\n")

    removed = sweep_empty_dropin_dirs(tmp_path, {"sync-1"})

    assert removed == [paths.SYSTEMD_ETC / gone.name]
    assert not gone.exists()
    assert planned.is_dir() and other.is_dir()
    assert (admins / "override.conf").read_text() == "[Service]\nNice=5\n"
    assert sweep_empty_dropin_dirs(tmp_path, {"sync-1"}) == []  # nothing the second time


def test_no_systemd_directory_is_nothing_to_sweep(tmp_path):
    assert sweep_empty_dropin_dirs(tmp_path, set()) == []
