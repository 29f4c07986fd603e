"""The postinst's logic (debconf/maintscript.py) with a fake debconf, and the one table of
when each question is asked (debconf/questions.py) against debian/config.

The real debconf, dpkg and apply engine run it in tests/chroot and tests/booted;
here the engine is recorded, so each decision of the postinst is seen alone.
"""

import io
import re
import subprocess
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import pytest

from hostroot import make_root
from matrix_synapse_workers.core.errors import ApplyError, HostConfigError, WorkersError
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.debconf import answers, maintscript
from matrix_synapse_workers.debconf.questions import FLOW, Q_MULTI_HOST, followups
from matrix_synapse_workers.system import applied

REPO = Path(__file__).resolve().parents[2]
P = answers.PACKAGE
DEFAULTS = {answers.Q_PRESET: "small", answers.Q_TYPES: "", answers.Q_COUNTS: "",
            answers.Q_SOCKET_GROUP: "clubmatrix", answers.Q_WEB_USER: "www-data",
            answers.Q_REDIS: "dedicated", answers.Q_REDIS_LOCATION: "", answers.Q_HOST_ROLE: "main",
            answers.Q_HOST_NAME: "", answers.Q_WORKER_HOSTS: "", answers.Q_REPLICATION: "",
            answers.Q_ALLOW_PUBLIC: "false", answers.Q_METRICS: "false",
            answers.Q_SHARED_MEDIA: "false", answers.Q_HAND_MADE: "adopt",
            answers.Q_MEMORY_BUDGET: "auto", answers.Q_WEB_SERVER: "auto"}


class FakeDebconf:
    """debconf's confmodule as the postinst uses it: answers, and what the admin types
    when a question is shown (``typed``); ``interactive=False`` shows nothing."""

    def __init__(self, interactive=True, typed=None, **given):
        self.values = dict(DEFAULTS, **{f"{P}/{k.replace('_', '-')}": v for k, v in given.items()})
        self.interactive, self.typed = interactive, dict(typed or {})
        self.shown, self.pending, self.flags, self.substs, self.stopped = [], [], {}, {}, False

    def get(self, question):
        return self.values[question]

    def set(self, question, value):
        self.values[question] = value

    def subst(self, template, key, value):
        self.substs[(template, key)] = value

    def fset(self, question, flag, value):
        self.flags[(question, flag)] = value

    def forceInput(self, priority, question):
        if self.interactive:
            self.pending.append(question)
        return self.interactive

    def go(self):
        for question in self.pending:
            self.shown.append(question)
            if question in self.typed:
                self.values[question] = self.typed.pop(question)
        self.pending = []

    def stop(self):
        self.stopped = True


class Engine:
    """The apply engine, recorded; ``fail`` raises from the dry run or the real run."""

    def __init__(self, fail=None, fail_real=None, users=("www-data",)):
        self.calls, self.restarts, self.fail, self.fail_real, self.users = [], [], fail, fail_real, users
        self.facts_given, self.adopt_given = [], []

    def apply_host(self, root, selection, settings, *, dry_run=False, out=None, facts=None, adopt=True):
        self.calls.append((selection, settings, dry_run))
        self.adopt_given.append(adopt)
        self.facts_given.append(facts)
        if dry_run and self.fail:
            raise self.fail
        if not dry_run and self.fail_real:
            raise self.fail_real
        plan = Plan(plan_workers(selection)) if selection is not None else Plan(())
        # The facts the engine read (its own when none were given).
        return SimpleNamespace(plan=plan, changed=True, redis_server="redis-server", notices=[],
                               adoption=None, settings=None,
                               changes=SimpleNamespace(files_changed=True),
                               facts=facts if facts is not None else object())

    def restart(self, root, out=None):
        self.restarts.append(root)

    def __call__(self):
        return self.apply_host, self.restart, lambda user: user in self.users


def configure(root, db, engine, synapse="matrix-synapse-py3 1.163.2"):
    out = io.StringIO()
    result = maintscript.configure(db, root, out, engine=engine, synapse_version=lambda: synapse)
    return result, out.getvalue()


def test_valid_answers_dry_run_then_apply_and_record(tmp_path):
    root = make_root(tmp_path)
    db, engine = FakeDebconf(), Engine()
    result, said = configure(root, db, engine)
    assert result is None and db.stopped
    assert [dry for _, _, dry in engine.calls] == [True, False]
    assert engine.calls[1][0].counts == {"sync": 1, "client": 1}
    # The host facts are read once, by the dry run, and handed to the real run.
    dry_facts, real_facts = engine.facts_given
    assert dry_facts is None and real_facts is not None
    record = applied.read(root)
    assert record.synapse == "matrix-synapse-py3 1.163.2" and record.socket_group == "clubmatrix"
    assert "2 workers configured (sync-1, client-1); Redis:" in said
    assert engine.restarts == []  # no record before: nothing was upgraded under the workers


def test_the_output_ends_with_what_is_left_to_do_and_is_silent_when_nothing_is(tmp_path):
    todo = "no nginx server includes /etc/nginx/snippets/matrix-synapse-workers.conf, ..."
    for left, expected in (([todo], [f"matrix-synapse-workers: left to do: {todo}"]), ([], [])):
        root = make_root(tmp_path / str(len(left)))
        out = io.StringIO()
        result = maintscript.configure(FakeDebconf(), root, out, engine=Engine(),
                                       synapse_version=lambda: "", left_to_do=lambda _: left)
        lines = out.getvalue().splitlines()
        assert result is None and "workers configured" in lines[-1 - len(expected)]
        assert lines[len(lines) - len(expected):] == expected


def test_the_answers_are_pending_exactly_while_the_engine_applies(tmp_path):
    root = make_root(tmp_path)
    seen = []

    class Watching(Engine):
        def apply_host(self, root_, selection, settings, *, dry_run=False, out=None, facts=None, adopt=True):
            seen.append((dry_run, applied.pending(root)))
            return super().apply_host(root_, selection, settings, dry_run=dry_run, out=out, facts=facts)

    db = FakeDebconf(interactive=False, preset="custom", worker_types="sync", worker_counts="sync:3")
    assert configure(root, db, Watching())[0] is None
    assert seen[0] == (True, None)  # nothing pending during the dry run
    assert seen[1][0] is False and seen[1][1][answers.Q_COUNTS] == "sync:3"
    assert set(seen[1][1]) == set(answers.QUESTIONS)
    assert applied.pending(root) is None and applied.read(root) is not None
    # An error of the engine's own (not a kill): nothing stays pending.
    configure(root, FakeDebconf(interactive=False), Engine(fail_real=ApplyError("boom")))
    assert applied.pending(root) is None


def test_an_invalid_answer_that_cannot_be_shown_fails_before_anything(tmp_path):
    root = make_root(tmp_path)
    db, engine = FakeDebconf(interactive=False, preset="huge"), Engine()
    result, said = configure(root, db, engine)
    assert result == 1 and engine.calls == [] and applied.read(root) is None
    assert "Error: unknown preset 'huge'" in said and f"question {answers.Q_PRESET}" in said


def test_an_invalid_answer_is_shown_asked_again_with_its_followups(tmp_path):
    root = make_root(tmp_path)
    db = FakeDebconf(preset="huge", typed={answers.Q_PRESET: "custom", answers.Q_TYPES: "sync",
                                           answers.Q_COUNTS: "sync:3"})
    engine = Engine()
    result, _ = configure(root, db, engine)
    assert result is None
    assert db.shown == [maintscript.INVALID, answers.Q_PRESET, answers.Q_TYPES, answers.Q_COUNTS]
    assert "unknown preset 'huge'" in db.substs[(maintscript.INVALID, "message")]
    assert engine.calls[-1][0].counts == {"sync": 3}


def test_media_on_a_worker_host_asks_for_the_shared_store_then_where_the_workers_go(tmp_path):
    # Refused: the confirmation is asked, and when it is not given, the worker hosts again.
    root = make_root(tmp_path)
    db = FakeDebconf(worker_hosts="hostb 10.0.0.2 sync,media", replication_address="10.0.0.1",
                     typed={answers.Q_SHARED_MEDIA: "false",
                            answers.Q_WORKER_HOSTS: "hostb 10.0.0.2 sync"})
    result, _ = configure(root, db, Engine())
    assert result is None
    assert db.shown == [maintscript.INVALID, answers.Q_SHARED_MEDIA, answers.Q_WORKER_HOSTS]
    assert "media_store_path" in db.substs[(maintscript.INVALID, "message")]
    # Confirmed: nothing else is asked.
    db = FakeDebconf(worker_hosts="hostb 10.0.0.2 sync,media", replication_address="10.0.0.1",
                     typed={answers.Q_SHARED_MEDIA: "true"})
    engine = Engine()
    assert configure(make_root(tmp_path / "b"), db, engine)[0] is None
    assert db.shown == [maintscript.INVALID, answers.Q_SHARED_MEDIA]
    assert engine.calls[-1][1].topology.shared_media


def test_a_missing_web_user_is_an_invalid_answer(tmp_path):
    db, engine = FakeDebconf(interactive=False, web_user="caddy"), Engine()
    result, said = configure(make_root(tmp_path), db, engine)
    assert result == 1 and "web server user 'caddy' does not exist" in said


def test_a_host_that_cannot_take_workers_installs_unconfigured(tmp_path):
    root = make_root(tmp_path)
    db, engine = FakeDebconf(), Engine(fail=HostConfigError("Synapse uses the 'sqlite3' database engine"))
    result, said = configure(root, db, engine)
    assert result is None  # the debhelper snippets run: the package installs
    assert db.shown == [maintscript.NOT_CONFIGURED] and len(engine.calls) == 1
    assert "workers are NOT configured: Synapse uses the 'sqlite3'" in said and applied.read(root) is None


def test_any_other_error_fails_the_postinst(tmp_path):
    db, engine = FakeDebconf(), Engine(fail_real=WorkersError("nginx -t failed"))
    result, said = configure(make_root(tmp_path), db, engine)
    assert result == 1 and "Error: nginx -t failed" in said


def test_a_synapse_upgrade_in_the_same_run_restarts_as_the_trigger_would(tmp_path):
    root = make_root(tmp_path)
    applied.write(root, applied.AppliedRecord("sync:1", "clubmatrix", "matrix-synapse-py3 1.162.0"))
    engine = Engine()
    configure(root, FakeDebconf(), engine, synapse="matrix-synapse-py3 1.163.2")
    assert engine.restarts == [root]
    configure(root, FakeDebconf(), engine, synapse="matrix-synapse-py3 1.163.2")
    assert engine.restarts == [root]  # the same version again: nothing restarts


def test_main_host_is_told_what_to_do_for_each_worker_host(tmp_path):
    db = FakeDebconf(worker_hosts="hostb 10.0.0.2 sync", replication_address="10.0.0.1")
    _, said = configure(make_root(tmp_path), db, Engine())
    assert "worker host hostb (10.0.0.2): copy /etc/matrix-synapse/cluster/" in said
    assert "host-name hostb" in said


def test_triggered_records_the_new_synapse_and_a_failed_restart_only_warns(tmp_path):
    root = make_root(tmp_path)
    applied.write(root, applied.AppliedRecord("sync:1", "clubmatrix", "matrix-synapse-py3 1.162.0"))
    out = io.StringIO()
    assert maintscript.triggered(root, out, restart=lambda r, out: None,
                                 synapse_version=lambda: "matrix-synapse-py3 1.163.2") is None
    assert applied.read(root) == applied.AppliedRecord("sync:1", "clubmatrix", "matrix-synapse-py3 1.163.2")

    def fails(root, out):
        raise WorkersError("systemctl failed")
    assert maintscript.triggered(root, out, restart=fails, synapse_version=lambda: "x") is None
    assert "warning: restarting Synapse and its workers after the Synapse upgrade failed" in out.getvalue()
    assert applied.read(root).synapse == "matrix-synapse-py3 1.163.2"


# --- the one table of when a question is asked ------------------------------------


def config_states() -> list[tuple[str, str, str]]:
    """(priority, question, condition) of each state of debian/config, in order."""
    text = (REPO / "debian/config").read_text()
    states = []
    for body in re.findall(r"^        (\d+)\)\n(.*?)^            ;;", text, re.M | re.S):
        number, block = body
        asked = re.search(r"db_input (\w+) matrix-synapse-workers/([\w-]+)", block)
        condition = re.search(r"^            if (.+); then$", block, re.M)
        states.append((int(number), asked[1], f"{P}/{asked[2]}", condition[1] if condition else ""))
    assert [n for n, *_ in states] == list(range(1, len(states) + 1))
    return [tuple(s[1:]) for s in states]


def test_debian_config_follows_the_table():
    assert config_states() == [(q.priority, q.name, q.sh) for q in FLOW]


SH_HELPERS = r'''
PKG=matrix-synapse-workers
db_get() { eval "RET=\$(printf '%s' \"\$A_$(printf '%s' "${1#$PKG/}" | tr - _)\")"; }
'''


def sh_functions() -> str:
    """debian/config's own is, main_host and spans_hosts."""
    text = (REPO / "debian/config").read_text()
    return "\n".join(re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.M | re.S)[0]
                     for name in ("is", "main_host", "multi_host", "spans_hosts"))


def test_the_table_s_conditions_mean_what_debian_config_s_do():
    cases = list(product(["main", "worker-host"], ["small", "custom"], ["", " ; ", "hostb 10.0.0.2 sync"],
                         ["dedicated", "existing"], ["true", "false"]))
    script = SH_HELPERS + sh_functions()
    for role, preset, hosts, redis, multi in cases:
        given = {answers.Q_HOST_ROLE: role, answers.Q_PRESET: preset, answers.Q_WORKER_HOSTS: hosts,
                 answers.Q_REDIS: redis, Q_MULTI_HOST: multi}
        env = {f"A_{q.split('/')[1].replace('-', '_')}": v for q, v in given.items()}
        for question in FLOW:
            if not question.sh:
                continue
            done = subprocess.run(["sh", "-c", f"{script}\nif {question.sh}; then echo yes; fi"],
                                  env=env, capture_output=True, text=True)
            assert (done.stdout.strip() == "yes") == question.when(given), (question.name, given)


def test_followups_of_a_new_answer():
    main = dict(DEFAULTS)
    assert followups(answers.Q_PRESET, dict(main, **{answers.Q_PRESET: "custom"})) == \
        [answers.Q_TYPES, answers.Q_COUNTS]
    assert followups(answers.Q_REDIS, dict(main, **{answers.Q_REDIS: "existing"})) == [answers.Q_REDIS_LOCATION]
    assert followups(answers.Q_HOST_ROLE, dict(main, **{answers.Q_HOST_ROLE: "worker-host"})) == \
        [answers.Q_HOST_NAME]
    named = dict(main, **{answers.Q_WORKER_HOSTS: "hostb 10.0.0.2 sync"})
    assert followups(answers.Q_WORKER_HOSTS, named) == [answers.Q_REPLICATION]
    assert followups(answers.Q_WORKER_HOSTS, dict(named, **{answers.Q_REPLICATION: "10.0.0.1"})) == []
    assert followups(answers.Q_ALLOW_PUBLIC, named) == [answers.Q_REPLICATION]
    assert followups(answers.Q_ALLOW_PUBLIC, dict(named, **{answers.Q_ALLOW_PUBLIC: "true"})) == []
    assert followups(answers.Q_SHARED_MEDIA, named) == [answers.Q_WORKER_HOSTS]
    assert followups(answers.Q_SHARED_MEDIA, dict(named, **{answers.Q_SHARED_MEDIA: "true"})) == []


# --- auto is decided once (issue 22, deliver 4) -------------------------------------


def test_auto_is_kept_across_an_upgrade_on_a_bigger_machine_and_resized_by_reconfigure(
        tmp_path, monkeypatch):
    root = make_root(tmp_path)
    monkeypatch.delenv("DEBCONF_RECONFIGURE", raising=False)
    monkeypatch.setattr(answers, "this_machine", lambda: (2, 4096))
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False, preset="auto"), engine)[0] is None
    assert engine.calls[-1][0].counts == {"sync": 1}
    assert applied.read(root).auto == "sync:1"
    # The VM grew to 8 cores; an unattended upgrade (postinst configure) keeps the workers.
    monkeypatch.setattr(answers, "this_machine", lambda: (8, 32768))
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False, preset="auto"), engine)[0] is None
    assert [call[0].counts for call in engine.calls] == [{"sync": 1}, {"sync": 1}]
    assert applied.read(root).auto == "sync:1"
    # The admin reconfigures: auto is sized for this machine again, and kept from then on.
    monkeypatch.setenv("DEBCONF_RECONFIGURE", "1")
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False, preset="auto"), engine)[0] is None
    assert engine.calls[-1][0].counts == {"sync": 4, "client": 2}
    assert applied.read(root).auto == "sync:4,client:2"


def test_a_killed_apply_s_auto_decision_is_what_the_recovery_applies(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    monkeypatch.delenv("DEBCONF_RECONFIGURE", raising=False)
    applied.begin(root, {answers.Q_PRESET: "auto", answers.AUTO_KEY: "sync:2,client:1"})
    monkeypatch.setattr(answers, "this_machine", lambda: (2, 4096))
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False, preset="auto"), engine)[0] is None
    assert engine.calls[-1][0].counts == {"sync": 2, "client": 1}
    assert applied.read(root).auto == "sync:2,client:1" and applied.pending(root) is None


def test_a_record_from_before_auto_was_kept_keeps_the_deployed_workers(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    monkeypatch.delenv("DEBCONF_RECONFIGURE", raising=False)
    applied.write(root, applied.AppliedRecord("sync:1", "clubmatrix"))
    monkeypatch.setattr(answers, "this_machine", lambda: (8, 32768))
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False, preset="auto"), engine)[0] is None
    assert engine.calls[-1][0].counts == {"sync": 1}


def test_other_presets_record_no_auto(tmp_path):
    root = make_root(tmp_path)
    assert configure(root, FakeDebconf(interactive=False, preset="small"), Engine())[0] is None
    assert applied.read(root).auto is None


# --- one rule for refusals (issue 22, deliver 3) -------------------------------------


@pytest.mark.parametrize("fail", ["fail", "fail_real"])
def test_a_refusal_exits_0_and_is_kept_for_status(tmp_path, fail):
    """Found by the dry run (SQLite, no server name) or by Synapse's check in the real run
    (PostgreSQL's max_connections too small): the same end, and the reason on disk."""
    root = make_root(tmp_path)
    why = HostConfigError("5 Synapse processes open at least 25 database connections")
    result, said = configure(root, FakeDebconf(interactive=False), Engine(**{fail: why}))
    assert result is None and "workers are NOT configured: 5 Synapse processes" in said
    assert "nothing was changed" in said and applied.pending(root) is None
    assert applied.refusal(root) == "5 Synapse processes open at least 25 database connections"
    applied.clear_refusal(root)
    assert applied.refusal(root) is None


# --- the web server in front (issue 27) ------------------------------------------


@pytest.fixture
def servers(tmp_path, monkeypatch):
    """A root where the servers made by ``install(NAME)`` are installed (their directory
    under the root, a binary on the PATH webservers searches), and no other."""
    from matrix_synapse_workers.system import webservers
    root = make_root(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setattr(webservers, "_PATH", str(bin_dir))
    monkeypatch.delenv("DEBCONF_RECONFIGURE", raising=False)

    def install(server):
        etc, binary, _, _ = webservers.SERVERS[server]
        (root / etc).mkdir(parents=True, exist_ok=True)
        (bin_dir / binary).write_text("#!/bin/sh\n")
        (bin_dir / binary).chmod(0o755)
    return root, install


def web_server_applied(engine):
    return [call[1].web_server.value for call in engine.calls]


def test_auto_is_detected_at_install_kept_at_upgrade_and_detected_again_by_reconfigure(
        servers, monkeypatch):
    from matrix_synapse_workers.core.webserver import WebServer
    root, install = servers
    install(WebServer.APACHE)
    engine = Engine()
    assert configure(root, FakeDebconf(interactive=False), engine)[0] is None
    assert web_server_applied(engine) == ["apache", "apache"]  # the dry run and the apply agree
    assert applied.read(root).web_server == "apache"
    # nginx comes in later (another site): an upgrade keeps what auto decided.
    install(WebServer.NGINX)
    engine = Engine()
    configure(root, FakeDebconf(interactive=False), engine)
    assert web_server_applied(engine) == ["apache", "apache"]
    # The admin reconfigures with auto: detected again (of two, none serving: nginx first).
    monkeypatch.setenv("DEBCONF_RECONFIGURE", "1")
    engine = Engine()
    configure(root, FakeDebconf(interactive=False), engine)
    assert web_server_applied(engine) == ["nginx", "nginx"]
    assert applied.read(root).web_server == "nginx"


def test_auto_detects_again_once_the_server_kept_is_gone(servers):
    import shutil
    from matrix_synapse_workers.core.webserver import WebServer
    root, install = servers
    install(WebServer.CADDY)
    configure(root, FakeDebconf(interactive=False), Engine())
    shutil.rmtree(root / "etc/caddy")
    install(WebServer.HAPROXY)
    engine = Engine()
    configure(root, FakeDebconf(interactive=False), engine)
    assert web_server_applied(engine) == ["haproxy", "haproxy"]


@pytest.mark.parametrize("answer,expected", [("none", "none"), ("apache2", "apache"), ("caddy", "caddy")])
def test_a_chosen_server_is_applied_and_kept_for_later_commands(servers, answer, expected):
    from matrix_synapse_workers.core.webserver import WebServer
    from matrix_synapse_workers.deployment import deployed_settings
    root, install = servers
    install(WebServer.NGINX)  # installed, and served first by auto: not the one chosen
    if expected != "none":
        install(WebServer(expected))
    engine = Engine()
    configure(root, FakeDebconf(interactive=False, web_server=answer), engine)
    assert web_server_applied(engine) == [expected, expected]
    assert applied.read(root).web_server == applied.read(root).debconf_web_server == expected
    # What a later command (apply, status, the trigger's refresh) takes as deployed.
    assert deployed_settings(root).web_server is WebServer(expected)
    # An upgrade with auto keeps it, none included (no file shows none).
    engine = Engine()
    configure(root, FakeDebconf(interactive=False), engine)
    assert web_server_applied(engine) == [expected, expected]


def test_a_bad_preseeded_web_server_fails_naming_it_before_anything(tmp_path):
    root = make_root(tmp_path)
    engine = Engine()
    result, said = configure(root, FakeDebconf(interactive=False, web_server="lighttpd"), engine)
    assert result == 1 and engine.calls == [] and applied.read(root) is None
    assert "Error: web server 'lighttpd' is not known; accepted: auto, nginx, apache2, caddy, " \
           "haproxy, none" in said
    assert f"question {answers.Q_WEB_SERVER}" in said


def test_a_bad_web_server_is_asked_again_when_debconf_can_show_it(tmp_path):
    root = make_root(tmp_path)
    db, engine = FakeDebconf(web_server="lighttpd", typed={answers.Q_WEB_SERVER: "none"}), Engine()
    assert configure(root, db, engine)[0] is None
    assert answers.Q_WEB_SERVER in db.shown
    assert web_server_applied(engine) == ["none", "none"]


def test_a_worker_host_records_no_web_server(tmp_path):
    root = make_root(tmp_path)
    engine = Engine()
    configure(root, FakeDebconf(interactive=False, host_role="worker-host", host_name="hostb",
                                web_server="caddy"), engine)
    assert engine.calls[-1][1].web_server is None and applied.read(root).web_server is None
