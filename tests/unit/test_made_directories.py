"""What the apply made for Synapse (the media store, before Synapse's first start) is known
after a kill at any point: the record is written before the directory is made, and a run
that finds the directory made but not recorded (its maker killed) still records it.

The kill is simulated where crashpoint.done would SIGKILL (tests/chroot/test_crash_consistency.py
kills for real); each kill is followed by a run that finishes, as ``dpkg --configure -a`` would.
"""

import io

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers import apply
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.system import crashpoint
from matrix_synapse_workers.system.hostfacts import read_host_facts

MEDIA = "/var/lib/matrix-synapse/media"


class Killed(BaseException):
    pass


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A root whose media store does not exist yet (an image build: Synapse never ran)."""
    root = make_root(tmp_path, homeserver(tmp_path, media_store_path=MEDIA))
    (root / MEDIA.lstrip("/")).rmdir()
    monkeypatch.setattr(apply.os, "chown", lambda *args: None)
    monkeypatch.setattr(apply.pwd, "getpwnam", lambda name: type("P", (), {"pw_uid": 0})())
    monkeypatch.setattr(apply.grp, "getgrnam", lambda name: type("G", (), {"gr_gid": 0})())
    return root


def made(root):
    record = root / paths.MADE_DIRECTORIES
    return record.read_text().splitlines() if record.is_file() else []


def ensure(root):
    report = apply.ApplyReport(changes=None, plan=None)
    apply._ensure_writable_paths(root, read_host_facts(root), report)
    return report


def test_the_record_comes_before_the_directory_at_every_kill_point(host, monkeypatch):
    actions = []
    monkeypatch.setattr(crashpoint, "done", actions.append)
    ensure(host)
    assert made(host) == [MEDIA] and len(actions) >= 2
    for point in range(1, len(actions) + 1):
        (host / paths.MADE_DIRECTORIES).unlink()
        (host / MEDIA.lstrip("/")).rmdir()
        calls = []

        def kill_at(action, point=point):
            calls.append(action)
            if len(calls) == point:
                raise Killed(action)

        monkeypatch.setattr(crashpoint, "done", kill_at)
        with pytest.raises(Killed):
            ensure(host)
        if (host / MEDIA.lstrip("/")).exists():
            assert made(host) == [MEDIA], f"killed after {calls[-1]!r}: made, not recorded"
        monkeypatch.setattr(crashpoint, "done", lambda action: None)
        ensure(host)  # the recovery
        assert made(host) == [MEDIA], f"killed after {calls[-1]!r}"
        assert (host / MEDIA.lstrip("/")).is_dir()


def test_a_run_after_an_existing_media_store_records_nothing(host):
    (host / MEDIA.lstrip("/")).mkdir()
    assert not ensure(host).system_steps and made(host) == []


def test_a_media_store_made_by_a_killed_check_is_recorded_and_made_ours(host, monkeypatch):
    """Synapse's loader, in the check, makes a missing media store (matrix-synapse, its own
    mode) and removes it when done: killed in between, the run leaves it.  It was recorded
    before the check ran, and the next run gives it the owner and mode the apply gives."""
    modes = []
    monkeypatch.setattr(apply.os, "chmod", lambda path, mode: modes.append(mode))
    assert apply.record_directories_to_make(host, read_host_facts(host)) == [MEDIA]
    (host / MEDIA.lstrip("/")).mkdir(mode=0o755)  # the check's loader, then the kill
    report = ensure(host)  # the recovery
    assert made(host) == [MEDIA] and modes == [0o750]
    assert "made by an interrupted run" in report.system_steps[0]


def test_a_refused_run_forgets_what_it_did_not_make(host):
    (host / paths.STATE_DIR).mkdir(parents=True)
    (host / paths.MADE_DIRECTORIES).write_text("/srv/made-earlier\n")
    added = apply.record_directories_to_make(host, read_host_facts(host))
    assert made(host) == ["/srv/made-earlier", MEDIA]
    apply.forget_unmade_directories(host, added)
    assert made(host) == ["/srv/made-earlier"]
    (host / paths.MADE_DIRECTORIES).unlink()
    apply.forget_unmade_directories(host, apply.record_directories_to_make(host, read_host_facts(host)))
    assert not (host / paths.MADE_DIRECTORIES).exists()
