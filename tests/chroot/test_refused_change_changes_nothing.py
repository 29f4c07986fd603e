"""A refused change leaves the host exactly as it was, on a real root.

Inside the chroot the apply engine runs at / as on a host: Synapse's own
loader checks the new file set (the stand-in's Synapse, from PyPI) and nginx
checks its configuration with ``nginx -t``.  Each test starts from a
configured host, makes the admin's own configuration one that the check
refuses, asks for one more sync worker with dpkg-reconfigure, and compares
every file under the watched trees, byte for byte with owner and mode, before
and after.  The wording of the refusal is the message tests' business; here
only that it is a refusal, says nothing was changed, and that is true.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from support.chroot import Chroot, chroot_copy
from test_maintscripts import ETC, INSTALL_ANSWERS, INSTALL_WORKERS, STATE, install, reconfigure, workers_on_disk

# Every tree the apply engine writes to, or whose change would matter (/run: the socket
# directory; /var/lib/matrix-synapse: the media store it makes).
WATCHED = ("/etc", "/run", "/var/lib/matrix-synapse", STATE)
MORE = {**INSTALL_ANSWERS, "worker-counts": "sync:3"}


@pytest.fixture(scope="module")
def configured(standin_layer, ours_deb) -> Iterator[Chroot]:
    with chroot_copy(standin_layer) as chroot:
        install(chroot, ours_deb)
        yield chroot


def contents(c: Chroot) -> dict[str, tuple]:
    """Kind, mode, owner and content of every entry (the times may change: a file put
    back has the bytes it had, written anew)."""
    return {path: (e.kind, e.mode, e.owner, e.content) for path, e in c.snapshot(*WATCHED).items()}


def refused(c: Chroot, admin_file: str, text: str) -> str:
    """Install the admin's ``admin_file``, ask for one more worker: the output of the
    refused reconfigure, checked to have changed nothing (the admin's file removed again)."""
    (c / admin_file).write_text(text)
    try:
        before = contents(c)
        c.preseed(MORE)
        done = reconfigure(c, check=False)
        out = done.stdout  # stderr included
        assert done.returncode != 0, out
        after = contents(c)
        assert {p: (before.get(p), after.get(p)) for p in before.keys() | after.keys()
                if before.get(p) != after.get(p)} == {}
        assert workers_on_disk(c) == INSTALL_WORKERS
        return out
    finally:
        (c / admin_file).unlink()
        c.preseed(INSTALL_ANSWERS)


def test_synapse_rejecting_the_new_files_changes_nothing(configured):
    # A partial email block Synapse's loader refuses (notif_from missing), which nothing of
    # the package reads: the package adds no worker to a configuration Synapse would not
    # start with.  (A bad max_upload_size is the package's own refusal now: it sizes nginx.)
    out = refused(configured, f"{ETC}/conf.d/zz-admin.yaml", "email: {enable_notifs: true}\n")
    assert "Synapse rejects the new configuration" in out and "nothing was changed" in out, out


def test_nginx_rejecting_the_new_files_changes_nothing(configured):
    out = refused(configured, "/etc/nginx/conf.d/zz-admin.conf", "not_an_nginx_directive on;\n")
    assert "'nginx -t' rejects" in out and "nothing else was changed" in out, out

