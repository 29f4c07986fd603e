"""debconf answers -> (Selection, Settings), the way back, and the templates' lists."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from debian import deb822

from matrix_synapse_workers.debconf import answers
from matrix_synapse_workers.debconf.questions import FLOW, Q_MULTI_HOST
from matrix_synapse_workers.debconf.answers import (
    CUSTOM, Q_ALLOW_PUBLIC, Q_COUNTS, Q_HOST_NAME, Q_HOST_ROLE, Q_PRESET, Q_REDIS, Q_REDIS_LOCATION,
    Q_REPLICATION, Q_SHARED_MEDIA, Q_SOCKET_GROUP, Q_TYPES, Q_WEB_USER, Q_WORKER_HOSTS,
    InvalidAnswer, answers_from_workers, applied_record, counts_from_workers, from_answers, normalized_counts)
from matrix_synapse_workers.core.catalog import PRESETS, ROLES
from matrix_synapse_workers.system.hostfacts import deployed_socket_group
from matrix_synapse_workers.core.errors import SelectionError
from matrix_synapse_workers.core.facts import HostFacts
from matrix_synapse_workers.core.plan import make_plan, plan_workers, worker_name
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import RedisMode
from matrix_synapse_workers.system.machine import this_machine
from matrix_synapse_workers.core.topology import (
    DEFAULT_REDIS_PORT, DEFAULT_REPLICATION_PORT, HOST_ROLES, LABEL_RULE, Address, HostRole, Topology,
    main_topology)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "debian" / "templates"
CONFIG = REPO / "debian" / "config"

DEFAULTS = dict(preset="small", types="sync, client", counts="", socket_group="clubmatrix",
                web_user="www-data", redis="dedicated", redis_location="", host_role="main",
                host_name="", worker_hosts="", replication_address="", allow_public_address="false",
                shared_media_store="false")
# A main host with two worker hosts, as its admin would answer.
SPREAD = dict(worker_hosts="hostb 10.99.0.2 sync:2,events; hostc 10.99.0.3 federation_sender",
              replication_address="10.99.0.1")


def answer(**changes):
    return from_answers(**{**DEFAULTS, **changes})


def templates() -> dict[str, deb822.Deb822]:
    with open(TEMPLATES, encoding="utf-8") as f:
        return {t["Template"]: t for t in deb822.Deb822.iter_paragraphs(f)}


def choices_c(template: deb822.Deb822) -> list[str]:
    return [c.strip() for c in template["Choices-C"].split(",")]


# --- the templates agree with the catalog ----------------------------------


def test_preset_choices_are_auto_the_catalog_presets_and_custom():
    assert choices_c(templates()[Q_PRESET]) == ["auto", *PRESETS, CUSTOM] == list(answers.PRESET_CHOICES)


def test_worker_type_choices_are_the_catalog_roles():
    assert choices_c(templates()[Q_TYPES]) == list(ROLES)


def test_redis_choices_are_the_modes():
    assert choices_c(templates()[Q_REDIS]) == [m.value for m in RedisMode]


def test_web_server_choices_are_auto_and_each_server_by_its_debian_name():
    from matrix_synapse_workers.core.webserver import DEBCONF_CHOICES, WebServer, parse_web_server
    assert choices_c(templates()[answers.Q_WEB_SERVER]) == list(DEBCONF_CHOICES)
    assert templates()[answers.Q_WEB_SERVER]["Default"] == "auto"
    assert {parse_web_server(c) for c in DEBCONF_CHOICES[1:]} == set(WebServer)


@pytest.mark.parametrize("given,expected", [
    ("auto", None), ("", None), (" Auto ", None), ("nginx", "nginx"), ("apache2", "apache"),
    ("apache", "apache"), ("caddy", "caddy"), ("haproxy", "haproxy"), ("none", "none")])
def test_web_server_answers(given, expected):
    server = answer(web_server=given)[1].web_server
    assert (server.value if server is not None else None) == expected


def test_a_bad_web_server_names_itself_and_the_choices():
    with pytest.raises(InvalidAnswer) as caught:
        answer(web_server="lighttpd")
    assert caught.value.question == answers.Q_WEB_SERVER
    assert str(caught.value) == ("web server 'lighttpd' is not known; accepted: auto, nginx, "
                                 "apache2, caddy, haproxy, none")


def test_a_worker_host_has_no_web_server():
    assert answer(host_role="worker-host", host_name="hostb", web_server="caddy")[1].web_server is None


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
    # In the order of QUESTIONS, as the postinst and status pass them.
    selection, settings = from_answers(*(default[q] for q in answers.QUESTIONS))
    assert default[answers.Q_PRESET] == "auto"
    assert selection == select(preset="auto", machine=this_machine())  # sized from the machine the tests run on
    assert (settings.socket_group, settings.web_user, settings.redis.mode) == (
        "clubmatrix", "www-data", RedisMode.DEDICATED)
    # One machine, as before worker hosts existed.
    assert settings.topology == Topology()
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


def test_host_role_choices_are_the_topology_roles():
    assert choices_c(templates()[Q_HOST_ROLE]) == list(HOST_ROLES)
    assert templates()[Q_HOST_ROLE]["Default"] == HostRole.MAIN.value


def test_host_names_are_described_by_the_rule_topology_checks():
    for question in (Q_HOST_NAME, Q_WORKER_HOSTS):
        text = " ".join(templates()[question]["_Description"].split())
        assert LABEL_RULE in text, question


def test_ports_in_the_descriptions_are_the_ones_used():
    t = templates()
    assert f"other than {DEFAULT_REPLICATION_PORT} " in " ".join(t[Q_REPLICATION]["_Description"].split())
    assert f"Redis (port {DEFAULT_REDIS_PORT})" in " ".join(t[Q_ALLOW_PUBLIC]["_Description"].split())


def test_public_address_is_not_allowed_by_default():
    assert (templates()[Q_ALLOW_PUBLIC]["Type"], templates()[Q_ALLOW_PUBLIC]["Default"]) == (
        "boolean", "false")


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
     ["'typing'", "only once", "types that scale"]),
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


# --- several machines ---------------------------------------------------------


def test_main_without_worker_hosts_is_one_machine_whatever_the_address_says():
    """The address and the confirmation count only once worker hosts are named."""
    selection, settings = answer(replication_address="1.2.3.4", allow_public_address="true",
                                 worker_hosts=" ; ")
    assert selection == select(preset="small")
    assert settings.topology == Topology()
    assert not settings.topology.spans_hosts


def test_main_with_worker_hosts():
    selection, settings = answer(**SPREAD)
    assert selection == select(preset="small")
    topology = settings.topology
    assert topology == main_topology(SPREAD["worker_hosts"], SPREAD["replication_address"])
    assert topology.role is HostRole.MAIN
    assert topology.replication == Address("10.99.0.1", DEFAULT_REPLICATION_PORT)
    assert [(h.label, h.address, dict(h.counts)) for h in topology.worker_hosts] == [
        ("hostb", "10.99.0.2", {"sync": 2, "events": 1}),
        ("hostc", "10.99.0.3", {"federation_sender": 1})]
    assert not topology.allow_public
    # The main host's own answers are kept.
    assert (settings.socket_group, settings.web_user, settings.redis.mode) == (
        "clubmatrix", "www-data", RedisMode.DEDICATED)


@pytest.mark.parametrize("address,expected", [
    ("10.99.0.1:9094", Address("10.99.0.1", 9094)),
    (" fd00::1 ", Address("fd00::1", DEFAULT_REPLICATION_PORT)),
    ("[fd00::1]:9094", Address("fd00::1", 9094)),
])
def test_replication_address_forms(address, expected):
    assert answer(**{**SPREAD, "replication_address": address})[1].topology.replication == expected


@pytest.mark.parametrize("address", ["1.2.3.4", "0.0.0.0", "::"])
def test_public_or_wildcard_address_when_confirmed(address):
    topology = answer(**{**SPREAD, "replication_address": address,
                         "allow_public_address": "true"})[1].topology
    assert topology.replication.host == address and topology.allow_public


def test_worker_host_takes_only_its_name_and_the_socket_group():
    """The workers, Redis and the main host's questions are not looked at, even when invalid;
    the web server runs on the main host."""
    selection, settings = answer(host_role="worker-host", host_name=" hostb ", preset="huge",
                                 redis="cluster", web_user="www data", worker_hosts="garbage",
                                 replication_address="127.0.0.1", allow_public_address="maybe",
                                 socket_group="synapse-sockets")
    assert selection is None
    assert settings.topology == Topology(HostRole.WORKER_HOST, label="hostb")
    assert (settings.socket_group, settings.web_user) == ("synapse-sockets", "")


def test_empty_host_role_is_a_main_host():
    """What status passes for a question a debconf database does not have yet."""
    assert answer(host_role="", **SPREAD)[1].topology.worker_hosts


@pytest.mark.parametrize("changes,question,fragments", [
    # The worker hosts' list.
    (dict(worker_hosts="hostb 10.99.0.2"), Q_WORKER_HOSTS,
     ["'hostb 10.99.0.2'", "LABEL ADDRESS WORKERS", "';'"]),
    (dict(worker_hosts="Host_B 10.99.0.2 sync"), Q_WORKER_HOSTS, ["'Host_B'", LABEL_RULE]),
    (dict(worker_hosts="main 10.99.0.2 sync"), Q_WORKER_HOSTS, ["'main'", LABEL_RULE]),
    (dict(worker_hosts="hostb 10.99.0.2 sync; hostc 10.99.0.2 client"), Q_WORKER_HOSTS,
     ["address '10.99.0.2'", "its own address"]),
    (dict(worker_hosts="hostb 10.99.0.2 sync; hostb 10.99.0.3 client"), Q_WORKER_HOSTS,
     ["label 'hostb'", "its own label"]),
    (dict(worker_hosts="hostb 10.99.0.1 sync"), Q_WORKER_HOSTS,
     ["'hostb'", "main's own address 10.99.0.1"]),
    (dict(worker_hosts="hostb 10.99.0.2 bogus"), Q_WORKER_HOSTS, ["'bogus'", "accepted:"]),
    (dict(worker_hosts="hostb hostb.lan sync"), Q_WORKER_HOSTS, ["'hostb.lan'", "not an IP address"]),
    (dict(worker_hosts="hostb 127.0.0.2 sync"), Q_WORKER_HOSTS, ["'127.0.0.2'", "loopback"]),
    (dict(worker_hosts="hostb 1.2.3.4 sync"), Q_WORKER_HOSTS, ["'1.2.3.4'", "public"]),
    (dict(worker_hosts="hostb 10.99.0.2 sync:50"), Q_WORKER_HOSTS, ["sync worker number 50", "49"]),
    # A type Synapse runs once, on two hosts.
    (dict(worker_hosts="hostb 10.99.0.2 sync,typing", preset="custom", types="sync, typing"),
     Q_WORKER_HOSTS, ["'typing'", "main, hostb", "one host"]),
    (dict(worker_hosts="hostb 10.99.0.2 background; hostc 10.99.0.3 background"), Q_WORKER_HOSTS,
     ["'background'", "hostb, hostc"]),
    # Main's own workers must fit the port range too once ports are used.
    (dict(preset="custom", types="sync", counts="sync:50"), Q_COUNTS, ["sync worker number 50", "49"]),
    # Worker hosts reach only the dedicated Redis.
    (dict(redis="guide"), Q_REDIS, ["'guide'", "'dedicated'"]),
    (dict(redis="existing", redis_location="10.99.0.9:6379"), Q_REDIS, ["'existing'", "'dedicated'"]),
    # Main's replication address.
    (dict(replication_address=" "), Q_REPLICATION, ["no replication address", "10.0.0.1"]),
    (dict(replication_address="localhost"), Q_REPLICATION, ["'localhost'", "not an IP address"]),
    (dict(replication_address="10.99.0.1:x"), Q_REPLICATION, ["'10.99.0.1:x'", "ADDRESS:PORT"]),
    (dict(replication_address="10.99.0.1:70000"), Q_REPLICATION, ["70000", "1..65535"]),
    (dict(replication_address="127.0.0.1"), Q_REPLICATION, ["'127.0.0.1'", "loopback"]),
    # Loopback stays refused when public addresses are allowed.
    (dict(replication_address="::1", allow_public_address="true"), Q_REPLICATION, ["'::1'", "loopback"]),
    # Public or wildcard without the confirmation: the confirmation is asked.
    (dict(replication_address="1.2.3.4"), Q_ALLOW_PUBLIC,
     ["'1.2.3.4'", "public address", "private address", "allow-public-address"]),
    (dict(replication_address="0.0.0.0:9093"), Q_ALLOW_PUBLIC, ["'0.0.0.0'", "wildcard"]),
    (dict(allow_public_address="yes"), Q_ALLOW_PUBLIC, ["'yes'", "true, false"]),
    # Media workers on a worker host without the word that the media store is shared.
    (dict(worker_hosts="hostb 10.99.0.2 sync,media"), Q_SHARED_MEDIA,
     ["worker host 'hostb'", "media_store_path", "shared-media-store"]),
    (dict(worker_hosts="hostb 10.99.0.2 media", shared_media_store="yes"), Q_SHARED_MEDIA,
     ["'yes'", "true, false"]),
])
def test_bad_spread_answers_name_the_question_the_value_and_what_is_accepted(changes, question,
                                                                             fragments):
    with pytest.raises(InvalidAnswer) as caught:
        answer(**{**SPREAD, **changes})
    assert caught.value.question == question
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("changes,question,fragments", [
    (dict(host_role="cluster"), Q_HOST_ROLE, ["'cluster'", "main, worker-host"]),
    (dict(host_role="worker-host", host_name=""), Q_HOST_NAME, ["no host name", LABEL_RULE]),
    (dict(host_role="worker-host", host_name="HostB"), Q_HOST_NAME, ["'HostB'", LABEL_RULE]),
    (dict(host_role="worker-host", host_name="main"), Q_HOST_NAME, ["'main'"]),
    (dict(host_role="worker-host", host_name="hostb", socket_group="Bad Group"), Q_SOCKET_GROUP,
     ["'Bad Group'"]),
])
def test_bad_host_answers(changes, question, fragments):
    with pytest.raises(InvalidAnswer) as caught:
        answer(**changes)
    assert caught.value.question == question
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


FACTS = HostFacts(listeners=(), database_engine="psycopg2", log_config_path=None, log_config=None)


@pytest.mark.parametrize("role", [r for r in ROLES.values() if not r.scales])
def test_answers_refuse_a_single_instance_type_on_two_hosts_as_the_plan_does(role):
    """The answers' check is the plan's rule, traced to the worker hosts' question."""
    changes = dict(SPREAD, worker_hosts=f"hostb 10.99.0.2 {role.name}", preset="custom",
                   types=f"sync, {role.name}")
    with pytest.raises(InvalidAnswer) as caught:
        answer(**changes)
    assert caught.value.question == Q_WORKER_HOSTS
    topology = main_topology(changes["worker_hosts"], changes["replication_address"])
    with pytest.raises(SelectionError):
        make_plan(select(workers=f"sync,{role.name}"), FACTS, topology)
    # Elsewhere only: both agree it is fine.
    selection, settings = answer(**{**changes, "types": "sync"})
    assert make_plan(selection, FACTS, settings.topology).of_role(role.name)


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
# Records what debian/config sets and asks instead of talking to debconf.  A
# question with a line in $MSW_TYPED is shown and answered with that value;
# every other one is not shown (code 30, as debconf says below the priority).
db_version() { :; }
db_capb() { :; }
db_settitle() { :; }
db_set() {
    # As debconf's confmodule: the reply to each command is read from stdin.
    read -r _reply || :
    printf 'set %s=%s\n' "$1" "$2" >> "$MSW_LOG"
    printf '%s=%s\n' "$1" "$2" >> "$MSW_ANSWERS"
}
db_get() { RET=$(sed -n "s|^$1=||p" "$MSW_ANSWERS" | tail -n 1); }
db_input() {
    printf 'input %s %s\n' "$1" "$2" >> "$MSW_LOG"
    grep -q "^$2=" "$MSW_TYPED" || return 30
    sed -n "s|^$2=|$2=|p" "$MSW_TYPED" >> "$MSW_ANSWERS"
}
db_go() { return 0; }
db_stop() { :; }
db_fset() { :; }
db_subst() { printf 'subst %s %s=%s\n' "$1" "$2" "$3" >> "$MSW_LOG"; }
"""


def run_config(tmp_path: Path, answers_now: dict[str, str],
               typed: dict[str, str] | None = None) -> dict[str, str]:
    """The answers debian/config sets (the questions it asks: :func:`asked`)."""
    return {key: value for kind, key, value in config_log(tmp_path, answers_now, typed)
            if kind == "set"}


def asked(tmp_path: Path, answers_now: dict[str, str], typed: dict[str, str] | None = None):
    """(priority, question) for each question debian/config puts to debconf, in order."""
    return [(value, key.removeprefix("matrix-synapse-workers/"))
            for kind, key, value in config_log(tmp_path, answers_now, typed) if kind == "input"]


def config_log(tmp_path: Path, answers_now: dict[str, str],
               typed: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
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
    typed_file = tmp_path / "typed"
    typed_file.write_text("".join(f"{k}={v}\n" for k, v in (typed or {}).items()))
    subprocess.run(["sh", str(config), "configure", ""], check=True, stdin=subprocess.DEVNULL,
                   env={"PATH": os.environ["PATH"], "MSW_ROOT": str(tmp_path / "root"),
                        "MSW_LOG": str(log), "MSW_ANSWERS": str(state),
                        "MSW_TYPED": str(typed_file)})
    entries = []
    for line in log.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "set":
            key, _, value = rest.partition("=")
        else:
            value, _, key = rest.partition(" ")
        entries.append((kind, key, value))
    return entries


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
        deploy(root, [], applied=applied_record(root).format())
        assert run_config(tmp_path, {Q_PRESET: "minimal"}) == {}


@needs_sh
def test_config_takes_a_killed_apply_s_answers_not_its_half_written_files(tmp_path):
    """The issue's kill: two of fifteen worker files written, no record yet."""
    from matrix_synapse_workers.system import applied
    root = tmp_path / "root"
    deploy(root, ["sync-1", "sync-2"])
    given = {Q_PRESET: "custom", Q_TYPES: "sync, client, media", Q_COUNTS: "sync:2",
             Q_SOCKET_GROUP: "clubmatrix", answers.Q_WORKER_HOSTS: "a b; with = signs"}
    applied.begin(root, given)
    # The answers debconf has now (say, an older preseed) give way to the pending ones.
    # Worker hosts named: the deployment spans several machines (the gate's answer follows).
    assert run_config(tmp_path, {Q_PRESET: "small"}) == {**given, Q_MULTI_HOST: "true"}
    # Once recorded, the files are read back as usual again.
    applied.finish(root, applied_record(root))
    assert not (root / "var/lib/matrix-synapse-workers/applying").exists()
    assert run_config(tmp_path, {Q_PRESET: "small"}) == {}


@needs_sh
def test_config_reads_the_applied_record_as_system_applied_parses_it(tmp_path):
    """system/applied.py's AppliedRecord is the one definition of the record's format.
    debian/config reads it with sed (sh: at preconfigure it runs before python3 may be
    unpacked); for records AppliedRecord.format writes, and lines appended by hand, its
    ``applied KEY`` gives what AppliedRecord.parse gives ('' for a key not recorded)."""
    from dataclasses import fields
    from matrix_synapse_workers.system.applied import AppliedRecord
    function = re.search(r"(?ms)^applied\(\) \{\n.*?^\}\n", CONFIG.read_text())
    assert function, "debian/config has no applied() function"
    records = [
        AppliedRecord("sync:2,client:1", "clubmatrix", "matrix-synapse-py3 1.163.2+standin", "true"),
        AppliedRecord("media:1", "web.sockets-1", None, "false"),
        AppliedRecord(None, "a=b/c&d\\1 .*[", "x y", None),
        AppliedRecord(),
    ]
    texts = [r.format() for r in records] + [
        records[0].format() + "workers=sync:3\nmetrics=false\n",  # the last line of a key wins
        "# a comment\nworkersX=1\n workers=2\nsocket_group=\n",  # only key= at a line's start
    ]
    path = tmp_path / "applied"
    for text in texts:
        path.write_text(text)
        parsed = AppliedRecord.parse(text)
        for key in (f.name for f in fields(AppliedRecord)):
            script = f'{function.group(0)}APPLIED={path}\nprintf "[%s]" "$(applied {key})"\n'
            got = subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True).stdout
            assert got == f"[{getattr(parsed, key) or ''}]", (text, key)


def test_applied_record_spelling(tmp_path):
    root = tmp_path / "root"
    deploy(root, ["sync-2", "typing-1", "sync-1", "mine"], group="web")
    assert applied_record(root).format() == (
        "workers=sync:2,typing:1\nsocket_group=web\nmetrics=false\nmemory_budget=auto\n")
    assert deployed_socket_group(tmp_path) == "clubmatrix"


@needs_sh
def test_config_reads_files_back_when_nothing_was_recorded(tmp_path):
    deploy(tmp_path / "root", ["sync-1", "client-1"])
    assert run_config(tmp_path, {}) == {
        Q_PRESET: "custom", Q_TYPES: "sync, client", Q_COUNTS: "", Q_SOCKET_GROUP: "clubmatrix",
        answers.Q_METRICS: "false"}


@needs_sh
def test_config_reads_metrics_back_only_when_the_files_differ_from_the_record(tmp_path):
    root = tmp_path / "root"
    deploy(root, ["sync-1"])
    shared = root / "etc/matrix-synapse/conf.d/workers.yaml"
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.write_text("# Generated by matrix-synapse-workers\nenable_metrics: true\n")
    recorded = applied_record(root)
    assert recorded.metrics == "true"
    deploy(root, [], applied=recorded.format())
    assert run_config(tmp_path, {answers.Q_METRICS: "false"}) == {}  # a newer answer wins
    shared.write_text("# Generated by matrix-synapse-workers\n")  # switched off by hand
    assert run_config(tmp_path, {answers.Q_METRICS: "true"}) == {answers.Q_METRICS: "false"}
    # A record from before the question: the answer stands.
    deploy(root, [], applied="workers=sync:1\nsocket_group=clubmatrix\n")
    assert run_config(tmp_path, {answers.Q_METRICS: "true"}) == {}


@needs_sh
def test_config_takes_the_web_server_the_command_applied_since_the_postinst(tmp_path):
    from matrix_synapse_workers.system.applied import AppliedRecord
    root = tmp_path / "root"
    postinst = AppliedRecord(web_server="nginx", debconf_web_server="nginx")
    deploy(root, [], applied=postinst.format())
    # A newer preseed wins over what the postinst applied.
    assert run_config(tmp_path, {answers.Q_WEB_SERVER: "caddy"}) == {}
    # 'matrix-synapse-workers apply --web-server apache' since: that is the answer now.
    deploy(root, [], applied=AppliedRecord(web_server="apache", debconf_web_server="nginx").format())
    assert run_config(tmp_path, {answers.Q_WEB_SERVER: "nginx"}) == {answers.Q_WEB_SERVER: "apache2"}
    deploy(root, [], applied=AppliedRecord(web_server="none", debconf_web_server="nginx").format())
    assert run_config(tmp_path, {answers.Q_WEB_SERVER: "auto"}) == {answers.Q_WEB_SERVER: "none"}


@needs_sh
def test_config_reads_the_memory_budget_back_from_the_shared_file(tmp_path):
    root = tmp_path / "root"
    deploy(root, ["sync-1"])
    shared = root / "etc/matrix-synapse/conf.d/workers.yaml"
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.write_text("# Generated by matrix-synapse-workers\n# memory-budget: 3072\n")
    assert run_config(tmp_path, {})[answers.Q_MEMORY_BUDGET] == "3072"
    assert applied_record(root).memory_budget == "3072"
    deploy(root, [], applied=applied_record(root).format())
    assert answers.Q_MEMORY_BUDGET not in run_config(tmp_path, {answers.Q_MEMORY_BUDGET: "auto"})


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


# --- debian/config asks what the host's role needs ----------------------------

# The order a single-host admin thinks in: workers, Redis, the web server, metrics; then
# whether other machines take part.
MAIN_FLOW = [("high", "preset"), ("medium", "redis"), ("low", "socket-group"), ("medium", "web-server"),
             ("medium", "web-user"), ("medium", "metrics"), ("medium", "multi-host"),
             ("low", "hand-made"), ("low", "memory-budget")]


@needs_sh
def test_config_on_one_machine_asks_the_workers_first_and_nothing_about_other_machines(tmp_path):
    (tmp_path / "root").mkdir()
    assert asked(tmp_path, {}) == MAIN_FLOW
    # A plain install shows only questions of priority high and above.
    assert [q for p, q in asked(tmp_path, {}) if p in ("high", "critical")] == ["preset"]
    # Saying yes asks this host's role, then the other machines.
    assert asked(tmp_path, {}, typed={Q_MULTI_HOST: "true"}) == MAIN_FLOW[:-2] + [
        ("medium", "host-role"), ("medium", "worker-hosts"), ("low", "hand-made"),
        ("low", "memory-budget")]


@needs_sh
def test_config_saying_one_machine_forgets_the_other_machines(tmp_path):
    (tmp_path / "root").mkdir()
    spread = {Q_WORKER_HOSTS: "hostb 10.99.0.2 sync"}
    # (set before asking: the named hosts make the gate's default yes; the admin's no follows)
    assert run_config(tmp_path, spread, typed={Q_MULTI_HOST: "false"}) == {
        Q_MULTI_HOST: "true", Q_WORKER_HOSTS: ""}
    assert run_config(tmp_path, {Q_HOST_ROLE: "worker-host"}, typed={Q_MULTI_HOST: "false"}) == {
        Q_MULTI_HOST: "true", Q_HOST_ROLE: "main"}
    # Yes: nothing is forgotten.
    assert run_config(tmp_path, spread, typed={Q_MULTI_HOST: "true"}) == {Q_MULTI_HOST: "true"}


@needs_sh
def test_config_asks_the_address_and_confirmation_only_with_worker_hosts(tmp_path):
    (tmp_path / "root").mkdir()
    flow = asked(tmp_path, {Q_WORKER_HOSTS: "hostb 10.99.0.2 sync", Q_PRESET: "custom",
                            Q_REDIS: "existing"})
    assert flow == [("high", "preset"), ("high", "worker-types"), ("medium", "worker-counts"),
                    ("medium", "redis"), ("high", "redis-location"), ("low", "socket-group"),
                    ("medium", "web-server"), ("medium", "web-user"), ("medium", "metrics"), ("medium", "multi-host"),
                    ("medium", "host-role"), ("medium", "worker-hosts"),
                    ("high", "replication-address"), ("low", "allow-public-address"),
                    ("low", "shared-media-store"), ("low", "hand-made"), ("low", "memory-budget")]
    # Blanks and separators alone name no host.
    assert asked(tmp_path, {Q_WORKER_HOSTS: " ; "}) == MAIN_FLOW
    # Typed in this run: the next questions follow from the new answer.
    assert ("high", "replication-address") in asked(
        tmp_path, {}, typed={Q_MULTI_HOST: "true", Q_WORKER_HOSTS: "hostb 10.99.0.2 sync"})


@needs_sh
def test_config_on_a_worker_host_asks_its_name_and_reads_nothing_back(tmp_path):
    # Files that would be read back on a main host, and no record of an apply.
    deploy(tmp_path / "root", ["sync-1", "sync-2", "sync-1-hostb"], group="synapse-sockets")
    answers_now = {Q_HOST_ROLE: "worker-host", Q_PRESET: "custom", Q_WORKER_HOSTS: "hostb 10.99.0.2 sync"}
    assert asked(tmp_path, answers_now) == [("low", "socket-group"), ("medium", "multi-host"),
                                            ("medium", "host-role"), ("high", "host-name"),
                                            ("low", "memory-budget")]
    assert run_config(tmp_path, answers_now) == {Q_MULTI_HOST: "true"}  # the gate follows the role
    # Chosen in this run (a first install): the name is asked after the role.
    assert asked(tmp_path, {}, typed={Q_MULTI_HOST: "true", Q_HOST_ROLE: "worker-host"})[-5:] == [
        ("medium", "metrics"), ("medium", "multi-host"), ("medium", "host-role"), ("high", "host-name"),
        ("low", "memory-budget")]


@needs_sh
def test_config_asks_again_for_the_confirmation_when_the_address_changes(tmp_path):
    (tmp_path / "root").mkdir()
    confirmed = {Q_WORKER_HOSTS: "hostb 10.99.0.2 sync", Q_REPLICATION: "1.2.3.4",
                 Q_ALLOW_PUBLIC: "true"}
    confirmed[Q_MULTI_HOST] = "true"
    # The same address (preseeded with its confirmation, or typed again): kept.
    assert run_config(tmp_path, confirmed) == {}
    assert run_config(tmp_path, confirmed, typed={Q_REPLICATION: "1.2.3.4"}) == {}
    # Another address: the confirmation was for the old one.
    assert run_config(tmp_path, confirmed, typed={Q_REPLICATION: "5.6.7.8"}) == {
        Q_ALLOW_PUBLIC: "false"}


def test_media_workers_on_a_worker_host_with_the_shared_store_confirmed():
    selection, settings = answer(**{**SPREAD, "worker_hosts": "hostb 10.99.0.2 sync,media",
                                    "shared_media_store": "true"})
    assert settings.topology.shared_media
    # Media on main alone: the answer is not needed and not recorded.
    selection, settings = answer(**SPREAD, shared_media_store="true")
    assert not settings.topology.shared_media


def test_the_preset_question_shows_what_auto_gives_this_machine_now(tmp_path):
    """debian/config fills ${machine} before asking the preset (python3 asks sizing.py; the
    package is not importable here, as at preconfigure: the fallback text)."""
    entries = config_log(tmp_path, {"matrix-synapse-workers/preset": "auto"})
    substs = [i for i, (kind, _, value) in enumerate(entries)
              if kind == "subst" and value == "matrix-synapse-workers/preset"]
    inputs = [i for i, (kind, key, _) in enumerate(entries)
              if kind == "input" and key == "matrix-synapse-workers/preset"]
    assert substs and inputs and substs[0] < inputs[0], entries
    assert entries[substs[0]][1] == "machine=(known once the package is unpacked)"
    from matrix_synapse_workers.debconf.answers import auto_now
    assert auto_now((8, 32768)) == "8 cores, 32768 MiB: sync:4, client:2"
    assert "${machine}" in (REPO / "debian/templates").read_text()


def test_every_asked_question_has_a_template_and_the_gate_defaults_to_one_machine():
    t = templates()
    for question in FLOW:
        assert "_Description" in t[question.name], question.name
    assert (t[Q_MULTI_HOST]["Type"], t[Q_MULTI_HOST]["Default"]) == ("boolean", "false")


def test_the_socket_group_and_the_guide_mode_are_explained_where_they_are_asked():
    t = templates()
    group = " ".join(t[Q_SOCKET_GROUP]["_Description"].split())
    assert '"clubmatrix"' in group and "web server" in group and "matrix-synapse user" in group
    redis = " ".join(t[Q_REDIS]["_Description"].split())
    assert '"Worker-based setup" guide' in redis
    for step in ('"port 0"', '"unixsocket"', '"unixsocketperm 770"', "group redis", "/etc/redis/redis.conf"):
        assert step in redis, step
