"""debconf answers -> (Selection, Settings), the way back, and the templates' lists."""

import doctest
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from debian import deb822

from matrix_synapse_workers import answers
from matrix_synapse_workers.answers import (
    CUSTOM, Q_COUNTS, Q_PRESET, Q_REDIS, Q_REDIS_LOCATION, Q_SOCKET_GROUP, Q_TYPES, Q_WEB_USER,
    InvalidAnswer, answers_from_workers, applied_record, deployed_socket_group, counts_from_workers, from_answers, normalized_counts)
from matrix_synapse_workers.catalog import PRESETS, ROLES
from matrix_synapse_workers.plan import plan_workers, worker_name
from matrix_synapse_workers.selection import select
from matrix_synapse_workers.settings import RedisMode

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "debian" / "templates"
CONFIG = REPO / "debian" / "config"

DEFAULTS = dict(preset="small", types="sync, client", counts="", socket_group="clubmatrix",
                web_user="www-data", redis="dedicated", redis_location="")


def answer(**changes):
    return from_answers(**{**DEFAULTS, **changes})


def templates() -> dict[str, deb822.Deb822]:
    with open(TEMPLATES, encoding="utf-8") as f:
        return {t["Template"]: t for t in deb822.Deb822.iter_paragraphs(f)}


def choices_c(template: deb822.Deb822) -> list[str]:
    return [c.strip() for c in template["Choices-C"].split(",")]


def test_module_examples():
    result = doctest.testmod(answers)
    assert result.attempted > 0 and result.failed == 0


# --- the templates agree with the catalog ----------------------------------


def test_preset_choices_are_the_catalog_presets_plus_custom():
    assert choices_c(templates()[Q_PRESET]) == [*PRESETS, CUSTOM]


def test_worker_type_choices_are_the_catalog_roles():
    assert choices_c(templates()[Q_TYPES]) == list(ROLES)


def test_redis_choices_are_the_modes():
    assert choices_c(templates()[Q_REDIS]) == [m.value for m in RedisMode]


def test_translated_choices_line_up_with_the_codes():
    for template in templates().values():
        if "Choices-C" not in template:
            continue
        shown = re.split(r"(?<!\\), ", template["__Choices"])
        codes = choices_c(template)
        assert len(shown) == len(codes), template["Template"]
        # Each shown choice starts with its code, so nobody picks the wrong one.
        for code, text in zip(codes, shown):
            assert text.startswith(f"{code}: "), (code, text)


def test_count_help_lists_exactly_the_roles_that_scale():
    text = " ".join(templates()[Q_COUNTS]["_Description"].split())
    listed = text.split("Types that may run several times: ")[1].rstrip(".").split(", ")
    assert listed == [r.name for r in ROLES.values() if r.scales]


def test_single_instance_help_lists_exactly_the_roles_that_do_not_scale():
    text = " ".join(templates()[Q_TYPES]["_Description"].split())
    listed = text.split("Types that can run only once: ")[1].rstrip(".").split(", ")
    assert sorted(listed) == sorted(r.name for r in ROLES.values() if not r.scales)


def test_defaults_are_valid_without_a_terminal():
    t = templates()
    default = {q: t[q].get("Default", "") for q in answers.QUESTIONS}
    selection, settings = from_answers(default[Q_PRESET], default[Q_TYPES], default[Q_COUNTS],
                                       default[Q_SOCKET_GROUP], default[Q_WEB_USER],
                                       default[Q_REDIS], default[Q_REDIS_LOCATION])
    assert selection == select(preset="small")
    assert (settings.socket_group, settings.web_user, settings.redis.mode) == (
        "clubmatrix", "www-data", RedisMode.DEDICATED)
    # The custom defaults are valid too.
    assert from_answers(CUSTOM, default[Q_TYPES], default[Q_COUNTS], "clubmatrix", "www-data",
                        "dedicated", "")[0] == select(workers="sync,client")


def test_every_question_has_a_template_and_a_translatable_description():
    t = templates()
    for question in answers.QUESTIONS:
        assert "_Description" in t[question], question
    for error in ("matrix-synapse-workers/invalid-answer", "matrix-synapse-workers/not-configured"):
        assert t[error]["Type"] == "error"
        assert "${message}" in t[error]["_Description"]


def test_the_pot_file_is_up_to_date():
    pot = (REPO / "debian/po/templates.pot").read_text(encoding="utf-8")
    for template in templates().values():
        short = template["_Description"].splitlines()[0]
        assert f'msgid "{short}"' in pot, short


# --- from_answers ------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_ignore_types_and_counts(preset):
    selection, _ = answer(preset=preset, types="bogus", counts="x")
    assert selection == select(preset=preset)


def test_custom_types_with_counts():
    selection, _ = answer(preset="custom", types="typing, sync, federation_sender",
                          counts=" sync:4 , federation_sender:2")
    assert selection.counts == {"sync": 4, "federation_sender": 2, "typing": 1}
    assert list(selection.counts) == ["sync", "federation_sender", "typing"]


def test_custom_accepts_hyphens_and_aliases_as_an_admin_would_preseed_them():
    selection, _ = answer(preset="custom", types="federation-reader, event_persister",
                          counts="events:2")
    assert selection.counts == {"federation_reader": 1, "events": 2}


def test_settings_are_passed_on():
    _, settings = answer(socket_group=" synapse-sockets ", web_user="nginx",
                         redis="existing", redis_location="unix:/run/redis/redis-server.sock")
    assert settings.socket_group == "synapse-sockets"
    assert settings.web_user == "nginx"
    assert settings.redis.mode is RedisMode.EXISTING
    assert settings.redis.synapse_config() == {"enabled": True, "path": "/run/redis/redis-server.sock"}


def test_empty_web_user_adds_nobody():
    assert answer(web_user="  ")[1].web_user == ""


@pytest.mark.parametrize("redis,location,expected", [
    ("dedicated", "ignored", {"enabled": True, "path": "/run/redis-matrix-synapse/redis-server.sock"}),
    ("guide", "", {"enabled": True, "path": "/run/redis/redis-server.sock"}),
    ("existing", "127.0.0.1:6379", {"enabled": True, "host": "127.0.0.1", "port": 6379}),
])
def test_redis_choices(redis, location, expected):
    assert answer(redis=redis, redis_location=location)[1].redis.synapse_config() == expected


@pytest.mark.parametrize("changes,question,fragments", [
    (dict(preset="huge"), Q_PRESET, ["'huge'", "minimal, small, one_of_each, busy, custom"]),
    (dict(preset="custom", types="sync, bogus"), Q_TYPES, ["'bogus'", "accepted:", "quarantined_media"]),
    (dict(preset="custom", types=""), Q_TYPES, ["no worker type chosen", "custom", "sync"]),
    # Two typing writers: Synapse allows one.
    (dict(preset="custom", types="sync, typing", counts="typing:2"), Q_COUNTS,
     ["'typing'", "only once", "roles that scale"]),
    (dict(preset="custom", types="sync", counts="sync:x"), Q_COUNTS, ["'x'", "sync:N"]),
    (dict(preset="custom", types="sync", counts="sync:0"), Q_COUNTS, ["count 0", ">= 1"]),
    (dict(preset="custom", types="sync", counts="bogus:2"), Q_COUNTS, ["'bogus'", "accepted:"]),
    (dict(preset="custom", types="sync", counts="client:2"), Q_COUNTS,
     ["'client'", "not among the chosen worker types (sync)"]),
    (dict(socket_group="Bad Group"), Q_SOCKET_GROUP, ["'Bad Group'", "lower-case"]),
    (dict(socket_group=""), Q_SOCKET_GROUP, ["socket group ''"]),
    (dict(web_user="www data"), Q_WEB_USER, ["'www data'"]),
    (dict(redis="cluster"), Q_REDIS, ["'cluster'", "dedicated, guide, existing"]),
    (dict(redis="existing", redis_location=""), Q_REDIS_LOCATION, ["''", "unix:/PATH", "HOST:PORT"]),
    (dict(redis="existing", redis_location="guide"), Q_REDIS_LOCATION, ["'guide'", "HOST:PORT"]),
    (dict(redis="existing", redis_location="unix:run/redis.sock"), Q_REDIS_LOCATION,
     ["'run/redis.sock'", "absolute"]),
    (dict(redis="existing", redis_location="localhost"), Q_REDIS_LOCATION, ["'localhost'", "HOST:PORT"]),
])
def test_bad_answers_name_the_question_the_value_and_what_is_accepted(changes, question, fragments):
    with pytest.raises(InvalidAnswer) as caught:
        answer(**changes)
    assert caught.value.question == question
    message = str(caught.value)
    assert "\n" not in message  # shown in a debconf note and as one line on stderr
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- the way back --------------------------------------------------------------


def test_answers_from_workers_round_trip():
    for counts in ({"sync": 1}, {"sync": 4, "client": 2, "typing": 1, "events": 2},
                   dict(PRESETS["busy"].counts)):
        names = [w.name for w in plan_workers(select(workers=normalized_counts(counts)))]
        back = answers_from_workers(reversed(names))
        selection, _ = answer(preset=back.preset, types=back.worker_types, counts=back.worker_counts)
        assert selection.counts == {r: counts[r] for r in ROLES if r in counts}


def test_answers_from_workers_skips_names_it_did_not_make():
    assert counts_from_workers(["sync-1", "my-own-worker", "sync-3", "bogus-1", "typing-x"]) == {"sync": 2}
    assert answers_from_workers([]) == answers.Answers("custom", "", "")


def test_normalized_counts_is_catalog_order_and_drops_zero():
    assert normalized_counts({"events": 2, "sync": 1, "client": 0}) == "sync:1,events:2"


# --- debian/config reads the files back like this module -----------------------

STUB_CONFMODULE = r"""
# Records what debian/config sets instead of talking to debconf.
db_version() { :; }
db_capb() { :; }
db_settitle() { :; }
db_set() { printf 'set %s=%s\n' "$1" "$2" >> "$MSW_LOG"; }
db_get() { RET=$(sed -n "s|^$1=||p" "$MSW_ANSWERS" | tail -n 1); }
db_input() { return 30; }
db_go() { return 0; }
db_stop() { :; }
db_fset() { :; }
"""


def run_config(tmp_path: Path, answers_now: dict[str, str]) -> dict[str, str]:
    stub = tmp_path / "confmodule"
    stub.write_text(STUB_CONFMODULE)
    config = tmp_path / "config"
    text = CONFIG.read_text()
    assert text.count(". /usr/share/debconf/confmodule") == 1
    config.write_text(text.replace(". /usr/share/debconf/confmodule", f". {stub}"))
    log = tmp_path / "log"
    log.write_text("")
    state = tmp_path / "answers"
    state.write_text("".join(f"{k}={v}\n" for k, v in answers_now.items()))
    subprocess.run(["sh", str(config), "configure", ""], check=True,
                   env={"PATH": os.environ["PATH"], "MSW_ROOT": str(tmp_path / "root"),
                        "MSW_LOG": str(log), "MSW_ANSWERS": str(state)})
    sets = {}
    for line in log.read_text().splitlines():
        key, _, value = line.removeprefix("set ").partition("=")
        sets[key] = value
    return sets


def deploy(root: Path, names, group: str | None = None, applied: str | None = None) -> None:
    workers = root / "etc/matrix-synapse/workers"
    workers.mkdir(parents=True, exist_ok=True)
    for name in names:
        (workers / f"{name}.yaml").write_text("# Generated by matrix-synapse-workers\n")
    if group:
        tmpfiles = root / "etc/tmpfiles.d"
        tmpfiles.mkdir(parents=True, exist_ok=True)
        (tmpfiles / "matrix-synapse-workers.conf").write_text(
            f"# Generated by matrix-synapse-workers\n# comment\nd /run/matrix-synapse 2750 matrix-synapse {group} -\n")
    if applied is not None:
        state = root / "var/lib/matrix-synapse-workers"
        state.mkdir(parents=True, exist_ok=True)
        (state / "applied").write_text(applied)


needs_sh = pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")


@needs_sh
def test_config_reads_hand_made_workers_back_as_python_does(tmp_path):
    names = ["sync-1", "sync-2", "sync-5", "federation-sender-1", "federation-sender-2", "typing-1",
             "quarantined-media-1", "push-rules-1", "pusher-1", "my-worker", "bogus-1", "sync-x"]
    deploy(tmp_path / "root", names, group="synapse-sockets",
           applied="workers=sync:1,client:1\nsocket_group=clubmatrix\n")
    (tmp_path / "root/etc/matrix-synapse/workers/sync-9.yml").write_text("")  # not read by Synapse
    expected = answers_from_workers(names)
    assert run_config(tmp_path, {}) == {
        Q_PRESET: "custom", Q_TYPES: expected.worker_types, Q_COUNTS: expected.worker_counts,
        Q_SOCKET_GROUP: "synapse-sockets"}


@needs_sh
def test_config_keeps_answers_when_files_are_what_was_applied(tmp_path):
    """A newer preseed wins: files unchanged since the last apply say nothing new."""
    names = [w.name for w in plan_workers(select(preset="busy"))]
    for group in (None, "synapse-sockets"):
        root = tmp_path / "root"
        shutil.rmtree(root, ignore_errors=True)
        deploy(root, names, group=group)
        deploy(root, [], applied=applied_record(root))
        assert run_config(tmp_path, {Q_PRESET: "minimal"}) == {}


def test_applied_record_spelling(tmp_path):
    root = tmp_path / "root"
    deploy(root, ["sync-2", "typing-1", "sync-1", "mine"], group="web")
    assert applied_record(root) == "workers=sync:2,typing:1\nsocket_group=web\n"
    assert deployed_socket_group(tmp_path) == "clubmatrix"


@needs_sh
def test_config_reads_files_back_when_nothing_was_recorded(tmp_path):
    deploy(tmp_path / "root", ["sync-1", "client-1"])
    assert run_config(tmp_path, {}) == {
        Q_PRESET: "custom", Q_TYPES: "sync, client", Q_COUNTS: "", Q_SOCKET_GROUP: "clubmatrix"}


@needs_sh
def test_config_sets_nothing_on_a_fresh_host(tmp_path):
    (tmp_path / "root").mkdir()
    assert run_config(tmp_path, {}) == {}


@needs_sh
def test_config_role_list_is_the_catalog(tmp_path):
    """config knows the role names to tell our files from an admin's own."""
    names = [worker_name(role, 1) for role in ROLES.values()]
    deploy(tmp_path / "root", names)
    assert run_config(tmp_path, {})[Q_TYPES] == ", ".join(ROLES)
