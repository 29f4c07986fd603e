import yaml
import pytest

from hostroot import DEBIAN_LOG_CONFIG, homeserver, make_root
from matrix_synapse_workers.cli import decide
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.system.hostfacts import read_host_facts
from matrix_synapse_workers.core.settings import Settings, parse_redis


def files_of(root, preset=None, workers=None, settings=Settings()):
    desired = decide(root, preset, workers, settings)
    return {str(f.path): f for f in desired.files}


def test_one_file_per_worker_plus_shared_redis_and_log_configs(tmp_path):
    files = files_of(make_root(tmp_path), workers="sync:2,typing")
    assert set(files) == {
        "etc/matrix-synapse/conf.d/workers.yaml", "etc/matrix-synapse/conf.d/redis.yaml",
        "etc/matrix-synapse/workers/sync-1.yaml", "etc/matrix-synapse/workers/sync-2.yaml",
        "etc/matrix-synapse/workers/typing-1.yaml",
        "etc/matrix-synapse/worker-logs/sync-1.yaml", "etc/matrix-synapse/worker-logs/sync-2.yaml",
        "etc/matrix-synapse/worker-logs/typing-1.yaml",
        "etc/redis/redis-matrix-synapse.conf",
        "etc/nginx/conf.d/matrix-synapse-workers.conf", "etc/nginx/snippets/matrix-synapse-workers.conf",
        "etc/nginx/snippets/matrix-synapse-workers-admin.conf",
        "etc/systemd/system/matrix-synapse.service.d/matrix-synapse-workers-sandbox.conf",
        *(f"etc/systemd/system/matrix-synapse-worker@{n}.service.d/matrix-synapse-workers.conf"
          for n in ("sync-1", "sync-2", "typing-1")),
    }


def test_socket_modes_are_yaml_octal_never_0o(tmp_path):
    files = files_of(make_root(tmp_path), preset="busy")
    for path, rendered in files.items():
        assert "0o" not in rendered.content, path
    worker = files["etc/matrix-synapse/workers/typing-1.yaml"].content
    assert "mode: 0660" in worker and "mode: 0600" in worker
    listeners = yaml.safe_load(worker)["worker_listeners"]
    assert [l["mode"] for l in listeners] == [0o660, 0o600]


def test_admin_listeners_are_kept_and_ours_appended(tmp_path):
    admin_listeners = [
        {"port": 8448, "type": "http", "tls": True, "bind_addresses": ["0.0.0.0"],
         "resources": [{"names": ["federation"]}]},
        {"port": 9000, "type": "metrics", "bind_addresses": ["127.0.0.1"]},
        {"port": 8008, "type": "http", "x_forwarded": True, "resources": [{"names": ["client"]}]},
        {"path": "/run/matrix-synapse/admin-own.sock", "mode": 0o666, "type": "http",
         "resources": [{"names": ["client"]}]},
    ]
    root = make_root(tmp_path, homeserver(tmp_path, listeners=admin_listeners, enable_metrics=True,
                                          tls_certificate_path="/etc/ssl/x.pem"))
    shared = yaml.safe_load(files_of(root, workers="sync")["etc/matrix-synapse/conf.d/workers.yaml"].content)
    assert shared["listeners"][:4] == admin_listeners
    assert [l.get("path") for l in shared["listeners"][4:]] == [
        "/run/matrix-synapse/replication.sock", "/run/matrix-synapse/main.sock"]
    assert shared["listeners"][4]["resources"] == [{"names": ["replication"]}]


def test_our_files_never_set_server_name_or_report_stats(tmp_path):
    for path, rendered in files_of(make_root(tmp_path), preset="busy").items():
        if path.endswith(".yaml"):
            data = yaml.safe_load(rendered.content)
            assert "server_name" not in data and "report_stats" not in data, path


def test_worker_log_config_is_the_admins_with_its_own_file(tmp_path):
    files = files_of(make_root(tmp_path), workers="sync")
    worker = yaml.safe_load(files["etc/matrix-synapse/workers/sync-1.yaml"].content)
    assert worker["worker_log_config"] == "/etc/matrix-synapse/worker-logs/sync-1.yaml"
    log = yaml.safe_load(files["etc/matrix-synapse/worker-logs/sync-1.yaml"].content)
    assert log["handlers"]["file"]["filename"] == "/var/log/matrix-synapse/sync-1.log"
    assert log["handlers"]["file"]["maxBytes"] == DEBIAN_LOG_CONFIG["handlers"]["file"]["maxBytes"]
    assert log["root"] == DEBIAN_LOG_CONFIG["root"]


def test_without_a_log_config_workers_log_to_the_journal(tmp_path):
    files = files_of(make_root(tmp_path, log_config=None), workers="sync")
    assert "worker_log_config" not in yaml.safe_load(files["etc/matrix-synapse/workers/sync-1.yaml"].content)
    assert not any("worker-logs" in p for p in files)


def test_redis_dedicated_instance_is_socket_only_without_persistence(tmp_path):
    files = files_of(make_root(tmp_path), workers="sync")
    conf = files["etc/redis/redis-matrix-synapse.conf"]
    directives = dict(line.split(" ", 1) for line in conf.content.splitlines()
                      if line and not line.startswith("#"))
    assert directives["port"] == "0"
    assert directives["unixsocket"] == "/run/redis-matrix-synapse/redis-server.sock"
    assert directives["save"] == '""' and directives["appendonly"] == "no"
    assert (conf.owner, conf.group, conf.mode) == ("redis", "redis", 0o640)
    redis = yaml.safe_load(files["etc/matrix-synapse/conf.d/redis.yaml"].content)
    assert redis == {"redis": {"enabled": True, "path": "/run/redis-matrix-synapse/redis-server.sock"}}


@pytest.mark.parametrize("choice,expected", [
    ("guide", {"enabled": True, "path": "/run/redis/redis-server.sock"}),
    ("unix:/srv/redis.sock", {"enabled": True, "path": "/srv/redis.sock"}),
    ("redis.internal:6380", {"enabled": True, "host": "redis.internal", "port": 6380}),
])
def test_other_redis_choices_have_no_instance_file(tmp_path, choice, expected):
    files = files_of(make_root(tmp_path), workers="sync", settings=Settings(redis=parse_redis(choice)))
    assert "etc/redis/redis-matrix-synapse.conf" not in files
    assert yaml.safe_load(files["etc/matrix-synapse/conf.d/redis.yaml"].content)["redis"] == expected


def test_another_socket_group_gets_a_tmpfiles_override(tmp_path):
    files = files_of(make_root(tmp_path), workers="sync", settings=Settings(socket_group="matrixweb"))
    line = [l for l in files["etc/tmpfiles.d/matrix-synapse-workers.conf"].content.splitlines()
            if not l.startswith("#")]
    assert line == ["d /run/matrix-synapse 2750 matrix-synapse matrixweb -"]
    assert "etc/tmpfiles.d/matrix-synapse-workers.conf" not in files_of(make_root(tmp_path / "b"), workers="sync")


def test_rendering_is_deterministic(tmp_path):
    root = make_root(tmp_path)
    first = files_of(root, preset="busy")
    second = files_of(root, preset="busy")
    assert {p: f.content for p, f in first.items()} == {p: f.content for p, f in second.items()}


@pytest.mark.parametrize("database,engine", [(None, "sqlite3"),
                                             ({"name": "sqlite3", "args": {"database": "/x.db"}}, "sqlite3")])
def test_sqlite_is_refused_with_migration_advice(tmp_path, database, engine):
    config = homeserver(tmp_path)
    if database is None:
        del config["database"]
    else:
        config["database"] = database
    with pytest.raises(HostConfigError) as caught:
        files_of(make_root(tmp_path, config), workers="sync")
    assert f"'{engine}'" in str(caught.value) and "synapse_port_db" in str(caught.value)
    assert "dpkg-reconfigure matrix-synapse-workers" in str(caught.value)


def test_missing_homeserver_yaml(tmp_path):
    root = make_root(tmp_path)
    (root / "etc/matrix-synapse/homeserver.yaml").unlink()
    with pytest.raises(HostConfigError, match="homeserver.yaml does not exist"):
        files_of(root, workers="sync")


@pytest.mark.parametrize("text,message", [
    ("listeners: [\n  - port: 8008\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("listeners: 8008\ndatabase: {name: psycopg2}\n", "'listeners'"),
])
def test_broken_homeserver_yaml(tmp_path, text, message):
    with pytest.raises(HostConfigError, match=message):
        files_of(make_root(tmp_path, raw_homeserver=text), workers="sync")


def test_admin_conf_d_read_after_ours_that_sets_listeners_is_refused(tmp_path):
    root = make_root(tmp_path, conf_d={"zz-listeners.yaml": {"listeners": []}})
    with pytest.raises(HostConfigError, match="zz-listeners.yaml sets listeners"):
        files_of(root, workers="sync")


def test_admin_conf_d_before_ours_is_merged_like_synapse_does(tmp_path):
    extra = [{"port": 8009, "type": "http", "resources": [{"names": ["client"]}]}]
    root = make_root(tmp_path, conf_d={"listeners.yaml": {"listeners": extra}})
    shared = yaml.safe_load(files_of(root, workers="sync")["etc/matrix-synapse/conf.d/workers.yaml"].content)
    assert shared["listeners"][0] == extra[0] and len(shared["listeners"]) == 3


def test_single_process_after_removal_keeps_main_sock_and_routes_everything_to_main(tmp_path):
    from matrix_synapse_workers.render.files import render_single_process
    files = {str(f.path): f for f in render_single_process(read_host_facts(make_root(tmp_path)))}
    shared = yaml.safe_load(files["etc/matrix-synapse/conf.d/workers.yaml"].content)
    assert list(shared) == ["listeners"]
    assert [l.get("path") for l in shared["listeners"]][-1] == "/run/matrix-synapse/main.sock"
    assert not any("replication" in str(l) for l in shared["listeners"])
    upstreams = [l for l in files["etc/nginx/conf.d/matrix-synapse-workers.conf"].content.splitlines()
                 if l.startswith("upstream ")]
    assert upstreams == ["upstream msw_main {"]
