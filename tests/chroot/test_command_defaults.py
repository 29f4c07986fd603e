"""The command changes only what it is told, on a real root (dpkg, debconf, the accounts).

After an install with the guide's Redis edit, socket group matrixsock and no
web server user, ``plan`` and ``apply --dry-run`` with no options show and
change nothing: every choice defaults to what is deployed.  ``deconfigure
--dry-run`` says what it would do and changes nothing either.
"""

from __future__ import annotations

PACKAGE = "matrix-synapse-workers"
WATCHED = ("/etc/matrix-synapse", "/etc/redis", "/etc/tmpfiles.d", "/etc/systemd/system",
           "/var/lib/matrix-synapse-workers", "/run/matrix-synapse", "/etc/group")


def test_no_options_means_as_deployed(synapse_host, ours_deb):
    c = synapse_host
    c.preseed({"preset": "small", "redis": "guide", "socket-group": "matrixsock", "web-user": ""})
    c.apt_install(ours_deb)
    assert c.has_group("matrixsock") and not c.has_group("clubmatrix")
    before = c.snapshot(*WATCHED)

    plan = c.run(PACKAGE, "plan")
    assert "Redis: guide; socket group: matrixsock" in plan.stdout, plan.stdout
    dry = c.run(PACKAGE, "apply", "--dry-run", check=False)
    assert dry.returncode == 0 and "nothing to change" in dry.stdout, dry.stdout
    deconfigure = c.run(PACKAGE, "deconfigure", "--dry-run")
    assert "would move /etc/matrix-synapse/workers/sync-1.yaml aside" in deconfigure.stdout
    render = c.run(PACKAGE, "render", "--root", "/", check=False)
    assert render.returncode == 1 and "render does not write into /" in render.stdout

    assert c.snapshot(*WATCHED) == before
    assert not c.has_group("clubmatrix")
