from pathlib import Path

import pytest

from matrix_synapse_workers.render.redisconf import edit_guide_conf, undo_guide_conf

SOCKET = "/run/redis/redis-server.sock"
STOCK = Path("/etc/redis/redis.conf")
ADMIN_EDITED = """\
# my redis
include /etc/redis/local.conf
bind 127.0.0.1 -::1
requirepass s3cret
PORT 6380
unixsocket /tmp/old.sock
unixsocketperm 700
maxmemory 100mb
"""


def directives(text):
    return [l for l in text.splitlines() if l and not l.lstrip().startswith("#")]


@pytest.mark.parametrize("text", [ADMIN_EDITED, "port 6379\n", ""])
def test_edit_sets_three_directives_keeps_the_rest_and_undoes(text):
    edited = edit_guide_conf(text, SOCKET)
    active = directives(edited)
    assert "port 0" in active and f"unixsocket {SOCKET}" in active and "unixsocketperm 770" in active
    kept = [l for l in directives(text) if l.split()[0].lower() not in ("port", "unixsocket", "unixsocketperm")]
    assert [l for l in active if l in kept] == kept
    assert edit_guide_conf(edited, SOCKET) == edited
    assert undo_guide_conf(edited) == text


@pytest.mark.skipif(not STOCK.exists(), reason="redis-server is not installed on this host")
def test_stock_bookworm_file_round_trips():
    text = STOCK.read_text()
    edited = edit_guide_conf(text, SOCKET)
    assert len(edited.splitlines()) == len(text.splitlines()) + 5
    assert undo_guide_conf(edited) == text
