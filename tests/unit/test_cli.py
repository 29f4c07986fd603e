import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostroot import make_root
from matrix_synapse_workers import __version__
from matrix_synapse_workers.cli import main

REPO = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as code:
        main(["--version"])
    assert code.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "plan" in out and "render" in out and "busy" in out


def test_plan_json_lists_workers(tmp_path, capsys):
    assert main(["plan", "--root", str(make_root(tmp_path)), "--workers", "sync:2,typing", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [w["name"] for w in data["workers"]] == ["sync-1", "sync-2", "typing-1"]
    assert data["workers"][2]["unit"] == "matrix-synapse-worker@typing-1.service"
    assert data["counts"] == {"sync": 2, "typing": 1}


def test_render_writes_files_and_a_rerender_reads_workers_back(tmp_path, capsys):
    root = make_root(tmp_path)
    assert main(["render", "--root", str(root), "--workers", "sync:2,client"]) == 0
    assert (root / "etc/matrix-synapse/workers/sync-2.yaml").is_file()
    assert oct((root / "etc/matrix-synapse/workers/sync-2.yaml").stat().st_mode & 0o777) == "0o644"
    capsys.readouterr()
    assert main(["plan", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"sync": 2, "client": 1}


@pytest.mark.parametrize("args,fragment", [
    (["--workers", "nosuch"], "unknown worker type 'nosuch'"),
    (["--workers", "typing:2"], "'typing' can run only once"),
    (["--workers", "sync:none"], "count 'none'"),
    (["--preset", "gigantic"], "unknown preset 'gigantic'"),
    (["--workers", "sync", "--socket-group", "Bad Group"], "socket group 'Bad Group'"),
    (["--workers", "sync", "--redis", "tcp://x"], "Redis location 'tcp://x'"),
])
def test_bad_input_exits_1_names_the_value_and_writes_nothing(tmp_path, capsys, args, fragment):
    root = make_root(tmp_path)
    main(["render", "--root", str(root), "--workers", "sync"])
    before = snapshot(root)
    capsys.readouterr()
    assert main(["render", "--root", str(root), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and fragment in err and err.count("\n") == 1
    assert snapshot(root) == before


def test_module_runs_as_a_command(tmp_path):
    """The console script's entry point, run as a real process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])))
    code = ("import conftest, sys; from matrix_synapse_workers.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "plan", "--root", str(make_root(tmp_path)),
                             "--preset", "minimal"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "sync-1" in result.stdout


def test_help_lists_auto_and_names_the_measured_best_as_readme_and_sizing_do(capsys):
    """--help agrees with the manual page, docs/design.md and sizing.py: auto is the
    default, minimal is the split that measured best on 2 cores."""
    from matrix_synapse_workers.cli import build_parser
    from matrix_synapse_workers.core.sizing import sized_counts
    from matrix_synapse_workers.core.catalog import PRESETS
    text = " ".join(build_parser().format_help().split())
    assert "Presets: auto (sized from this machine's cores and memory; the default)" in text
    assert "minimal (one sync worker: the split that measured best on 2 cores)" in text
    assert dict(PRESETS["minimal"].counts) == sized_counts(2, 4096)
    assert "best" not in PRESETS["small"].summary


# --- the command changes only what it is told (issue 22, deliver 2) ---------------


@pytest.fixture
def guide_deployment(tmp_path, monkeypatch):
    """A host deployed with guide-mode Redis, socket group matrixsock and no web user
    (the record the postinst writes keeps that last choice)."""
    from matrix_synapse_workers.core import paths
    from matrix_synapse_workers.render.redisconf import edit_guide_conf
    from matrix_synapse_workers.system import accounts, applied, statoverride
    monkeypatch.setattr(accounts, "user_exists", lambda name: name in (paths.SYNAPSE_USER, "www-data"))
    monkeypatch.setattr(statoverride, "get", lambda path: None)
    root = make_root(tmp_path)
    conf = root / "etc/redis/redis.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(edit_guide_conf("port 6379\nbind 127.0.0.1\n", "/run/redis/redis-server.sock"))
    assert main(["render", "--root", str(root), "--workers", "sync:2,client", "--redis", "guide",
                 "--socket-group", "matrixsock", "--web-user", ""]) == 0
    applied.write(root, applied.AppliedRecord("sync:2,client:1", "matrixsock", web_user=""))
    return root


def test_plan_with_no_options_keeps_guide_redis_socket_group_and_web_user(guide_deployment, capsys):
    capsys.readouterr()
    assert main(["plan", "--root", str(guide_deployment), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["redis"] == "guide" and data["socket_group"] == "matrixsock"
    assert data["counts"] == {"sync": 2, "client": 1}
    assert main(["plan", "--root", str(guide_deployment)]) == 0
    assert "Redis: guide; socket group: matrixsock" in capsys.readouterr().out


def test_apply_dry_run_with_no_options_changes_nothing(guide_deployment, capsys):
    before = snapshot(guide_deployment)
    capsys.readouterr()
    assert main(["apply", "--root", str(guide_deployment), "--dry-run"]) == 0, capsys.readouterr()
    assert "nothing to change" in capsys.readouterr().out
    assert snapshot(guide_deployment) == before
    # What is named changes, and only that.
    assert main(["apply", "--root", str(guide_deployment), "--dry-run", "--socket-group", "web"]) == 2
    out = capsys.readouterr().out
    assert "tmpfiles.d" in out and "redis.yaml" not in out


def test_web_user_defaults_to_the_recorded_one(guide_deployment):
    from matrix_synapse_workers.cli import _settings, build_parser
    args = build_parser().parse_args(["plan", "--root", str(guide_deployment)])
    assert _settings(args).web_user == ""
    args = build_parser().parse_args(["plan", "--root", str(guide_deployment), "--web-user", "nginx"])
    assert _settings(args).web_user == "nginx"


@pytest.mark.parametrize("root_args,fragment", [
    ([], "render needs --root DIR"),
    (["--root", "/"], "render does not write into /"),
    (["--root", "/etc/.."], "render does not write into /"),
])
def test_render_needs_an_explicit_root_other_than_slash(capsys, root_args, fragment):
    assert main(["render", "--workers", "sync", *root_args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and fragment in err and err.count("\n") == 1


def test_help_documents_deconfigure_and_restart_after_upgrade(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "deconfigure" in out and "restart-after-upgrade" in out
    with pytest.raises(SystemExit):
        main(["deconfigure", "--help"])
    assert "--dry-run" in capsys.readouterr().out


def test_deconfigure_dry_run_says_each_step_and_changes_nothing(guide_deployment, capsys):
    before = snapshot(guide_deployment)
    capsys.readouterr()
    assert main(["deconfigure", "--root", str(guide_deployment), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would move /etc/matrix-synapse/workers/sync-1.yaml aside" in out
    assert "would remove /etc/matrix-synapse/conf.d/redis.yaml" in out
    assert snapshot(guide_deployment) == before


def test_deconfigure_leaves_no_worker_file_the_generator_would_start(guide_deployment, capsys,
                                                                     monkeypatch):
    from matrix_synapse_workers import deconfigure
    monkeypatch.setattr(deconfigure, "write_atomically",
                        lambda root, rendered, chown: (root / rendered.path).write_text(rendered.content))
    assert main(["deconfigure", "--root", str(guide_deployment)]) == 0
    out = capsys.readouterr().out
    workers = guide_deployment / "etc/matrix-synapse/workers"
    assert not list(workers.glob("*.yaml")), out  # the generator's glob
    assert sorted(p.name for p in workers.iterdir()) == [
        "client-1.yaml.deconfigured", "sync-1.yaml.deconfigured", "sync-2.yaml.deconfigured"]
    assert "move /etc/matrix-synapse/workers/sync-1.yaml aside" in out and "would move" not in out
    assert not (guide_deployment / "etc/matrix-synapse/conf.d/redis.yaml").exists()
    # The prerm's removal keeps them (the generator goes with the package).
    assert main(["render", "--root", str(guide_deployment), "--workers", "sync"]) == 0
    assert main(["deconfigure", "--root", str(guide_deployment), "--package-removal"]) == 0
    assert (workers / "sync-1.yaml").is_file()
