"""Redis or Valkey: which server the host uses, and what the package renders for each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
import yaml

from hostroot import make_root
from matrix_synapse_workers.cli import decide
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.redisserver import REDIS, VALKEY, choose_server, server_of_socket
from matrix_synapse_workers.core.settings import Settings, parse_redis
from matrix_synapse_workers.render.redisconf import effective_password
from matrix_synapse_workers.status import evaluate
from matrix_synapse_workers.system.hostfacts import deployed_redis_server, host_redis_server, installed_servers

# valkey-server@.service on trixie (8.1.1): what its sandbox lets the instance write.
VALKEY_WRITABLE = ("/var/lib/valkey", "/var/log/valkey", "/var/run/valkey-matrix-synapse",
                   "/run/valkey-matrix-synapse")


@pytest.mark.parametrize("installed, in_use, chosen", [
    ({"redis-server"}, None, REDIS),
    ({"valkey-server"}, None, VALKEY),
    ({"redis-server", "valkey-server"}, None, REDIS),  # Depends' first alternative
    ({"redis-server", "valkey-server"}, VALKEY, VALKEY),  # the one in use stays
    ({"redis-server", "valkey-server"}, REDIS, REDIS),
    ({"valkey-server"}, REDIS, VALKEY),  # Redis removed: Valkey
    ({"redis-server"}, VALKEY, REDIS),  # and back
])
def test_the_server_in_use_stays_while_installed(installed, in_use, chosen):
    assert choose_server(installed, in_use) == chosen


def test_our_sockets_name_their_server_and_mode():
    assert server_of_socket("/run/redis-matrix-synapse/redis-server.sock") == (REDIS, "dedicated")
    assert server_of_socket("/run/valkey-matrix-synapse/valkey-server.sock") == (VALKEY, "dedicated")
    assert server_of_socket("/run/valkey/valkey-server.sock") == (VALKEY, "guide")
    assert server_of_socket("/run/redis/other.sock") is None


def files_of(root: Path, settings: Settings) -> dict[str, str]:
    return {str(f.path): f.content for f in decide(root, None, "sync", settings).files}


def test_valkey_instance_is_socket_only_without_persistence_inside_its_sandbox(tmp_path):
    settings = Settings(redis=parse_redis("dedicated", VALKEY))
    files = files_of(make_root(tmp_path), settings)
    assert "etc/redis/redis-matrix-synapse.conf" not in files
    conf = files["etc/valkey/valkey-matrix-synapse.conf"]
    values = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in conf.splitlines()
              if line and not line.startswith("#")}
    assert values["port"] == "0" and "bind" not in values
    assert values["unixsocket"] == "/run/valkey-matrix-synapse/valkey-server.sock"
    assert values["unixsocketperm"] == "770"
    assert values["save"] == '""' and values["appendonly"] == "no"
    for key in ("unixsocket", "pidfile", "logfile", "dir"):
        assert values[key].startswith(VALKEY_WRITABLE), (key, values[key])
    assert "valkey-server@matrix-synapse.service" in conf
    assert yaml.safe_load(files[str(paths.REDIS_CONF_D)]) == {
        "redis": {"enabled": True, "path": "/run/valkey-matrix-synapse/valkey-server.sock"}}


def test_redis_instance_is_rendered_as_before(tmp_path):
    conf = files_of(make_root(tmp_path), Settings())["etc/redis/redis-matrix-synapse.conf"]
    for line in ("unixsocket /run/redis-matrix-synapse/redis-server.sock",
                 "pidfile /run/redis-matrix-synapse/redis-server.pid",
                 "logfile /var/log/redis/redis-server-matrix-synapse.log", "dir /var/lib/redis",
                 "dbfilename dump-matrix-synapse.rdb"):
        assert f"\n{line}\n" in conf
    assert "# A Redis instance used only by Synapse" in conf


def test_guide_mode_with_a_password_gives_synapse_a_path_never_the_password(tmp_path):
    redis = replace(parse_redis("guide", VALKEY),
                    password_path=PurePosixPath("/etc/matrix-synapse/redis-guide-password"))
    files = files_of(make_root(tmp_path), Settings(redis=redis))
    assert yaml.safe_load(files[str(paths.REDIS_CONF_D)]) == {"redis": {
        "enabled": True, "path": "/run/valkey/valkey-server.sock",
        "password_path": "/etc/matrix-synapse/redis-guide-password"}}
    assert not any(p.startswith("etc/valkey/") for p in files)


def test_the_host_server_is_read_from_the_unit_files_and_what_is_deployed(tmp_path):
    root = make_root(tmp_path)
    assert installed_servers(root) == frozenset()
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/valkey-server@.service").write_text("[Service]\n")
    assert installed_servers(root) == {"valkey-server"} and host_redis_server(root) == VALKEY
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/redis-server@.service").write_text("[Service]\n")
    assert host_redis_server(root) == REDIS  # nothing deployed: Depends' first alternative
    (root / paths.REDIS_CONF_D).write_text(
        "redis:\n  enabled: true\n  path: /run/valkey-matrix-synapse/valkey-server.sock\n")
    assert deployed_redis_server(root) == VALKEY and host_redis_server(root) == VALKEY


def test_requirepass_in_an_included_glob_counts():
    files = {"/etc/redis/conf.d/a.conf": "maxmemory 1mb\n", "/etc/redis/conf.d/b.conf": "requirepass 's3 cret'\n"}
    read = lambda pattern: [files[p] for p in sorted(files) if pattern == "/etc/redis/conf.d/*.conf"]
    assert effective_password("requirepass old\ninclude /etc/redis/conf.d/*.conf\n", read) == "s3 cret"
    assert effective_password("include /etc/redis/conf.d/*.conf\nrequirepass last\n", read) == "last"


def test_status_wants_synapse_in_the_valkey_group_for_valkey():
    from test_status import healthy, row  # the healthy Redis host of the status tests
    facts = healthy()
    expected = replace(facts.expected, redis_group="valkey")
    rows = evaluate(replace(facts, expected=expected,
                            groups={**facts.groups, "valkey": frozenset()}))
    valkey = row(rows, "groups", "valkey")
    assert valkey.status == "fail" and valkey.advice.startswith("adduser matrix-synapse valkey")


class _NoSystemd:
    """systemd not running (an image build): nothing is active, nothing is started."""

    running = False
    done: list[str] = []

    def is_active(self, unit: str) -> bool:
        return False

    def stop(self, *units: str) -> bool:
        return False

    def disable(self, unit: str) -> None:
        pass

    def try_restart(self, *units: str) -> bool:
        return False


def test_leaving_the_other_server_unlinks_its_instance_and_undoes_its_guide_edit(tmp_path):
    """Valkey now, Redis before: our Redis instance's enable link goes (its unit file may be
    gone with its package), the guide's edit of redis.conf is undone, and the report says so."""
    import os
    from matrix_synapse_workers import apply
    from matrix_synapse_workers.render.redisconf import edit_guide_conf
    root = make_root(tmp_path)
    stock = "bind 127.0.0.1\nport 6379\n# unixsocket /run/redis/redis-server.sock\n"
    (root / "etc/redis").mkdir(parents=True)
    (root / "etc/redis/redis.conf").write_text(edit_guide_conf(stock, "/run/redis/redis-server.sock"))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / REDIS.instance_unit).symlink_to(f"/usr/lib/systemd/system/{REDIS.template_unit}")
    owner = os.stat(root / "etc/redis/redis.conf")
    settings = Settings(redis=parse_redis("dedicated", VALKEY))
    report = apply.ApplyReport(changes=None, plan=None)  # type: ignore[arg-type]
    apply._leave_other_servers(root, settings, REDIS, _NoSystemd(), report)  # type: ignore[arg-type]
    assert not (wants / REDIS.instance_unit).is_symlink()
    assert (root / "etc/redis/redis.conf").read_text() == stock
    assert os.stat(root / "etc/redis/redis.conf").st_uid == owner.st_uid
    assert report.notices == [
        "Synapse now uses valkey-server instead of redis-server (dedicated, socket "
        "/run/valkey-matrix-synapse/valkey-server.sock)",
        f"stopped and disabled {REDIS.instance_unit}",
        "restored /etc/redis/redis.conf (the guide's edit undone)"]
