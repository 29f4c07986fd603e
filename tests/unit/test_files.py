"""Atomic writes, and the temporary files a killed run leaves: ours by name, swept."""

import os
from pathlib import Path, PurePosixPath

import pytest

from matrix_synapse_workers.render.files import RenderedFile
from matrix_synapse_workers.system import files
from matrix_synapse_workers.system.files import is_temporary, sweep_temporaries, write_atomically

TARGET = PurePosixPath("etc/matrix-synapse/workers/sync-1.yaml")


def test_a_write_killed_before_its_rename_leaves_a_temporary_the_next_run_sweeps(tmp_path, monkeypatch):
    write_atomically(tmp_path, RenderedFile(TARGET, "old\n"), chown=False)

    def killed(src, dst):  # as if SIGKILL came between the fsync and the rename
        raise SystemExit("killed")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(SystemExit):
        write_atomically(tmp_path, RenderedFile(TARGET, "new\n"), chown=False)
    # The old file stands; a BaseException still cleans up, so make a leftover
    # by hand, named as a real kill leaves it.
    directory = tmp_path / TARGET.parent
    assert (tmp_path / TARGET).read_text() == "old\n"
    left = directory / ".sync-2.yaml.msw-tmp.abcd1234"
    left.write_text("half")
    admin = [directory / ".sync-1.yaml.swp", directory / "notes.msw-tmp.txt", directory / "mine.yaml"]
    for path in admin:
        path.write_text("the admin's")
    assert [p.name for p in sweep_temporaries(tmp_path, [TARGET.parent, PurePosixPath("nope")])] == [
        left.name]
    assert not left.exists() and all(p.exists() for p in admin)


def test_temporary_names_are_recognisably_ours(tmp_path):
    write_atomically(tmp_path, RenderedFile(TARGET, "x\n"), chown=False)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    files.os.replace = spy
    try:
        write_atomically(tmp_path, RenderedFile(TARGET, "y\n"), chown=False)
    finally:
        files.os.replace = real_replace
    assert len(seen) == 1 and is_temporary(seen[0]) and seen[0].startswith(".sync-1.yaml.msw-tmp.")
    assert not is_temporary("sync-1.yaml") and not is_temporary(".sync-1.yaml.swp")


def test_a_check_s_new_empty_directories_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/old").mkdir()
    wanted = [tmp_path / "lib/old", tmp_path / "lib/new/body", tmp_path / "lib/kept"]
    with files.removing_new_empty_directories(wanted):
        for directory in wanted:
            directory.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib/kept/file").write_text("")
    # Made and empty: gone, with the parent made for it; there before, or used: stays.
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["kept", "old"]


def test_a_full_file_system_leaves_every_previous_file_and_one_error(tmp_path, monkeypatch):
    import errno
    from matrix_synapse_workers.core.errors import ApplyError
    for n in (1, 2, 3):
        (tmp_path / f"w{n}.yaml").write_text(f"old {n}\n")
    calls = []
    real_fsync = files.os.fsync

    def filling(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", filling)
    new = [RenderedFile(PurePosixPath(f"w{n}.yaml"), f"new {n}\n") for n in (1, 2, 3)]
    with pytest.raises(ApplyError, match=r"cannot write /w3.yaml: No space left on device; every "
                                         r"previous file is still in place"):
        files.stage_all(tmp_path, new, chown=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w1.yaml", "w2.yaml", "w3.yaml"]
    assert [(tmp_path / f"w{n}.yaml").read_text() for n in (1, 2, 3)] == ["old 1\n", "old 2\n", "old 3\n"]
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    for item in files.stage_all(tmp_path, new, chown=False):
        files.commit(item)
    assert (tmp_path / "w3.yaml").read_text() == "new 3\n"



def test_discarded_files_take_the_directories_made_for_them_and_no_other(tmp_path):
    """A refused apply (nginx -t) discards what it staged: a new worker's drop-in directory,
    made for its file, goes with it; a directory that was there stays."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    staged = files.stage_all(tmp_path, [
        RenderedFile(PurePosixPath("etc/systemd/system/w@sync-3.service.d/sandbox.conf"), "x\n"),
        RenderedFile(PurePosixPath("etc/systemd/system/kept.conf"), "y\n")], chown=False)
    files.discard(staged)
    assert sorted(p.name for p in (tmp_path / "etc/systemd/system").iterdir()) == []
    assert (tmp_path / "etc/systemd/system").is_dir()
