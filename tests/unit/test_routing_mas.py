"""Routes with the Matrix Authentication Service (MAS) handling logins.

Since Synapse 1.136 ``matrix_authentication_service`` turns it on
(``experimental_features.msc3861`` before; refused from 1.157).  Synapse then
registers no login, logout or refresh servlet and only appservice
registration; MAS serves /login, /logout and /refresh, through the admin's own
nginx location.  The package reads the setting and leaves those requests
unmatched, so that location wins wherever the admin put it; MAS's calls into
Synapse (/_synapse/mas/) go to main.  Real nginx decides here, with stand-ins
answering with their names.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from hostroot import homeserver, make_root
from loopback import free_port, wait_listening
from nginx_standins import get, nginx_conf, nginx_test, socket_standins, stop, tcp_standin
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.catalog import ENDPOINTS
from matrix_synapse_workers.core.errors import HostConfigError
from matrix_synapse_workers.core.facts import MAS_KEY, AuthService, auth_service
from matrix_synapse_workers.core.plan import make_plan
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.render import routing
from matrix_synapse_workers.render.files import nginx_files, render
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.system.hostfacts import read_host_facts
from support.plans import plan_of

STABLE = {MAS_KEY: {"enabled": True, "endpoint": "http://127.0.0.1:8080/", "secret_path": "/x"}}
EXPERIMENTAL = {"experimental_features": {"msc3861": {"enabled": True,
                                                      "issuer": "https://auth.example.org/"}}}
LOGIN = "/_matrix/client/v3/login"


# --- reading the setting ---------------------------------------------------------------

@pytest.mark.parametrize("config, version, setting", [
    (STABLE, (1, 136, 0), MAS_KEY),
    (STABLE, (1, 163, 2), MAS_KEY),
    (STABLE, None, MAS_KEY),
    (EXPERIMENTAL, (1, 89, 0), "experimental_features.msc3861"),
    (EXPERIMENTAL, (1, 156, 9), "experimental_features.msc3861"),
    (EXPERIMENTAL, None, "experimental_features.msc3861"),
    ({**EXPERIMENTAL, **STABLE}, (1, 140, 0), MAS_KEY),
])
def test_either_spelling_turns_mas_on_where_synapse_reads_it(config, version, setting):
    assert auth_service(config, version).setting == setting


@pytest.mark.parametrize("config", [
    {}, {MAS_KEY: None}, {MAS_KEY: {"enabled": False, "secret": "x"}}, {MAS_KEY: {}},
    {"experimental_features": {"msc3861": {"enabled": False}}},
    {"experimental_features": {"msc3575_enabled": True}},
])
def test_mas_is_off_unless_enabled(config):
    assert auth_service(config, (1, 150, 0)) is None


def test_the_stable_key_on_a_synapse_that_ignores_it_is_one_clear_error():
    with pytest.raises(HostConfigError, match=r"matrix_authentication_service .* 1\.135\.0 .*"
                                              r"ignores .* 1\.136\.0.*msc3861"):
        auth_service(STABLE, (1, 135, 0))


def test_the_experimental_key_on_a_synapse_that_refuses_it_is_one_clear_error():
    with pytest.raises(HostConfigError, match=r"msc3861 .* 1\.157\.0 .*refuses to start.*"
                                              r"matrix_authentication_service"):
        auth_service({"experimental_features": {"msc3861": {"enabled": False}}}, (1, 157, 0))


def test_the_setting_is_read_from_conf_d_too(tmp_path):
    root = make_root(tmp_path, conf_d={"mas.yaml": STABLE})
    assert read_host_facts(root).auth_service == AuthService(MAS_KEY, "http://127.0.0.1:8080/")
    plain = make_root(tmp_path / "plain")
    assert read_host_facts(plain).auth_service is None


# --- which classes are left to MAS -------------------------------------------------------

#: Requests MAS serves (its compat layer) or Synapse drops with MAS: none may reach a worker.
MAS_OWNS = [("GET", LOGIN), ("POST", LOGIN), ("POST", "/_matrix/client/r0/login"),
            ("POST", "/_matrix/client/v3/logout"), ("POST", "/_matrix/client/v3/logout/all"),
            ("POST", "/_matrix/client/v3/refresh"), ("GET", "/_matrix/client/v3/login/sso/redirect"),
            ("POST", "/_matrix/client/v3/register"), ("GET", "/_matrix/client/v3/register/available"),
            ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity"),
            ("POST", "/_matrix/client/v3/account/deactivate")]


@pytest.mark.parametrize("method, path", MAS_OWNS)
def test_with_mas_nothing_of_login_or_registration_reaches_a_worker(method, path):
    plan = plan_of("sync:2,client:2,initial_sync")
    assert routing.destination(plan, path, method, mas=True) == ("main", ())
    assert routing.endpoint_class(path, routing.table_for(None, mas=True)) is None


def test_without_mas_login_and_registration_stay_on_client_workers():
    plan = plan_of("client")
    for path in (LOGIN, "/_matrix/client/v3/register", "/_matrix/client/v3/register/available"):
        assert routing.destination(plan, path, "POST")[0] == "client", path


def test_only_login_classes_are_left_to_mas_and_the_rest_routes_as_before():
    left = ["sso", "password_auth", "account_deactivate"]
    assert [e.name for e in ENDPOINTS.values() if e.left_to_mas] == left
    plan = plan_of("sync:2,client")
    for version in (None, (1, 140, 0)):
        without = [r for r in routing.route_table(plan, version) if r["endpoints"] not in left]
        with_mas = routing.route_table(plan, version, mas=True)
        assert [r for r in with_mas if r["endpoints"] != "auth_metadata"] == without


def test_auth_metadata_goes_to_a_client_worker_with_mas_only():
    plan = plan_of("client")
    path = "/_matrix/client/v1/auth_metadata"
    assert routing.destination(plan, path, "GET", mas=True)[0] == "client"
    assert routing.destination(plan, path, "GET")[0] == "main"
    assert routing.destination(plan, path, "GET", (1, 135, 0), mas=True)[0] == "main"


def test_no_worker_type_is_refused_with_mas(tmp_path):
    """Synapse refuses SSO with MAS, and the catalog has no SSO-only worker type (SSO
    stays on main): every preset plans on a MAS homeserver."""
    root = make_root(tmp_path, homeserver(tmp_path, **STABLE))
    facts = read_host_facts(root)
    for preset in ("minimal", "small", "one_of_each", "busy"):
        assert make_plan(select(preset=preset), facts).workers
    assert not ENDPOINTS["sso"].roles and not ENDPOINTS["sso"].read_roles


# --- the rendered files ----------------------------------------------------------------------

def test_the_files_follow_the_homeserver(tmp_path):
    root = make_root(tmp_path, homeserver(tmp_path, **STABLE))
    facts = read_host_facts(root)
    plan = make_plan(select(workers="sync,client"), facts)
    files = {f.path: f.content for f in render(plan, facts, Settings())}
    snippet = files[paths.NGINX_SNIPPET]
    assert "/login$" not in snippet and "/register$" not in snippet
    assert 'location ~ "^/_synapse/mas/"' in snippet
    _, plain = nginx_files(plan)
    assert "/login$" in plain.content and "/_synapse/mas/" not in plain.content


@pytest.mark.parametrize("spec", ["sync", "sync:2,client,initial_sync"])
def test_nginx_accepts_the_mas_files(tmp_path, spec):
    http, snippet = nginx_files(plan_of(spec), mas=True)
    r = nginx_test(tmp_path, http.content, snippet.content)
    assert r.returncode == 0, r.stderr


# --- real nginx: the admin's MAS location before or after the include -------------------

def _conf(tmp_path: Path, http: str, snippet: str, listen: int, mas_port: int, mas_first: bool) -> Path:
    """Debian's layout, with the server block MAS's documentation suggests: its compat
    location (a regex) beside our include, before or after it."""
    mas = (f"    location ~ ^/_matrix/client/(.*)/(login|logout|refresh) {{\n"
           f"      proxy_pass http://127.0.0.1:{mas_port};\n    }}\n")
    return nginx_conf(tmp_path, http, snippet, listen, beside=mas, beside_first=mas_first)


@contextlib.contextmanager
def _nginx(conf: Path, tmp_path: Path, listen: int) -> Iterator[None]:
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", listen, nginx, "nginx")
        yield
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


@pytest.mark.parametrize("mas_first", [True, False], ids=["mas-location-first", "include-first"])
def test_login_reaches_mas_and_sync_sticks_per_token(tmp_path, mas_first):
    http, snippet = nginx_files(plan_of("sync:3,client:2"), mas=True)
    mas, mas_port = tcp_standin("mas")
    try:
        with socket_standins(http.content, tmp_path) as moved:
            listen = free_port()
            conf = _conf(tmp_path, moved, snippet.content, listen, mas_port, mas_first)
            with _nginx(conf, tmp_path, listen):
                for path in (LOGIN, "/_matrix/client/r0/login", "/_matrix/client/v3/logout",
                             "/_matrix/client/v3/refresh"):
                    assert get(listen, path) == "mas", path
                assert get(listen, "/_synapse/mas/query_user?localpart=a") == "main"
                assert get(listen, "/_matrix/client/v3/register/available?username=a") == "main"
                assert get(listen, "/_matrix/client/v3/profile/@a:x").startswith("client-")
                # MAS's compat tokens (mct_) name no user: each token keeps its sync worker.
                workers = set()
                for n in range(12):
                    token = {"Authorization": f"Bearer mct_{n:04d}abcdefghijklmnopqrs_0ab1c2"}
                    seen = {get(listen, "/_matrix/client/v3/sync?since=s1", token) for _ in range(3)}
                    assert len(seen) == 1 and next(iter(seen)).startswith("sync-"), seen
                    workers |= seen
                assert len(workers) > 1
    finally:
        stop(mas)


# --- the sandbox: every process asks MAS about client tokens ---------------------------------

def test_confined_workers_may_reach_mas_and_nothing_more(tmp_path):
    from test_sandbox import _dropins, _socket_root, _values
    workers, _ = _dropins(_socket_root(tmp_path, **STABLE), "sync")
    assert _values(workers["sync-1"], "IPAddressAllow") == ["localhost"]
    assert _values(workers["sync-1"], "RestrictAddressFamilies")[-1] == "AF_UNIX AF_INET AF_INET6"
    elsewhere = {MAS_KEY: {**STABLE[MAS_KEY], "endpoint": "http://10.0.0.7:8080/"}}
    workers, _ = _dropins(_socket_root(tmp_path / "b", **elsewhere), "sync")
    assert _values(workers["sync-1"], "IPAddressAllow") == ["localhost 10.0.0.7"]
    by_name = {MAS_KEY: {**STABLE[MAS_KEY], "endpoint": "https://auth.example.org/"}}
    workers, _ = _dropins(_socket_root(tmp_path / "c", **by_name), "sync")
    assert not _values(workers["sync-1"], "IPAddressDeny")
    assert "auth.example.org is a host name" in workers["sync-1"]
    plain, _ = _dropins(_socket_root(tmp_path / "d"), "sync")
    assert _values(plain["sync-1"], "RestrictAddressFamilies")[-1] == "AF_UNIX"
