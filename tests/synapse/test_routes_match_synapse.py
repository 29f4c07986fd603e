"""The route table still matches what the installed Synapse serves on a worker.

Synapse has no machine-readable list of worker endpoints, so this asks it: the
patterns every servlet registers on a generic worker and on main
(tests/synapse/servlet_patterns.py, run in Synapse's venv) are turned into
example requests, and three things must hold for the table that applies to the
installed version:

- every request a worker serves is routed by catalog.ENDPOINTS to a worker pool,
  or its servlet is on the short list of those knowingly left on main;
- every alternative of every routed pattern still matches a request a worker serves;
- every request main serves that the table sends to a worker is one a worker
  serves with that method (otherwise a client gets a 404 or 405 from the worker).

An upgrade that adds, moves or drops an endpoint fails here instead of silently
landing on main or on a worker that cannot answer.  The last test breaks the
table on purpose and proves each check notices.

The table is the one for the Synapse version found in the venv, so pointing
MSW_SYNAPSE_PYTHON at a venv of an older Synapse checks the version-gated
entries against that release.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pytest

from hostroot import homeserver, make_root
from matrix_synapse_workers.core.catalog import Endpoints
from matrix_synapse_workers.core.facts import MAS_KEY, MAS_KEY_SINCE
from matrix_synapse_workers.core.paths import NGINX_SNIPPET
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.render.routing import READ_METHODS, endpoint_class, table_for
from matrix_synapse_workers.system.synapseversion import installed_version

try:
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # Python < 3.11
    import sre_parse  # type: ignore[no-redef]

PROBE = Path(__file__).with_name("servlet_patterns.py")
#: Servlets a worker registers that the table leaves on main on purpose: the
#: methods, the release from which it no longer applies, and the reason.
LEFT_ON_MAIN: dict[str, tuple[frozenset[str], tuple[int, int, int] | None, str]] = {
    "DeviceRestServlet": (frozenset({"PUT", "DELETE"}), (1, 135, 0),
                          "1.130 to 1.134 register changes of one device on workers, which "
                          "answer them with 500 'must be routed to main process'"),
}
#: Table classes served by other resources than the client, federation and admin ones.
OTHER_RESOURCES = {"media"}
Registration = tuple[str, str, str]          # method, regex, servlet class
Request = tuple[str, str]                    # method, path
Servlets = dict[str, list[Registration]]     # "worker" / "main" -> registrations

_MAX_EXAMPLES = 10_000


def _leaf_example(op: str, arg: object) -> str:
    """One character a single-character item matches."""
    if op == "IN":
        for kind, value in arg:  # type: ignore[attr-defined]
            if str(kind) == "RANGE":
                return chr(value[0])
            if str(kind) == "LITERAL":
                return chr(value)
            if str(kind) == "CATEGORY" and str(value) == "CATEGORY_DIGIT":
                return "1"
        return "x"
    if op == "CATEGORY" and str(arg) == "CATEGORY_DIGIT":
        return "1"
    return "x"


def _expand(pattern: str, leaf: Callable[[str, object, bool], str],
            repeat: Callable[[int, list[str]], list[str]]) -> list[str]:
    """Every alternative of a regex, spelt by ``leaf`` and ``repeat``.

    ``leaf(op, arg, repeated)`` spells one single-character item; ``repeat(low,
    bodies)`` spells a ``*``/``+``/``{n,}`` repeat of the spelt bodies.  An
    optional part (``?``) comes out both without and with it.
    """
    def walk(items, repeated: bool = False) -> list[str]:
        results = [""]
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                options = [leaf(name, arg, repeated)]
            elif name == "SUBPATTERN":
                options = walk(arg[-1], repeated)
            elif name == "BRANCH":
                options = [s for branch in arg[1] for s in walk(branch, repeated)]
            elif name in ("MAX_REPEAT", "MIN_REPEAT"):
                low, high, body = arg
                if high == 1:
                    options = ([""] if low == 0 else []) + walk(body, repeated)
                else:
                    options = repeat(low, walk(body, True))
            elif name in ("IN", "ANY", "NOT_LITERAL", "CATEGORY", "AT"):
                options = [leaf(name, arg, repeated)]
            else:
                raise ValueError(f"{pattern}: cannot spell {name}")
            results = [a + b for a, b in itertools.product(results, options)]
            if len(results) > _MAX_EXAMPLES:
                raise ValueError(f"{pattern}: more than {_MAX_EXAMPLES} alternatives")
        return results
    return walk(sre_parse.parse(pattern))


def examples(pattern: str) -> list[str]:
    """Concrete paths a servlet regex matches: every alternative, optional parts with
    and without, each repeat once.  A lone ``.`` is a dot (Synapse leaves the dots of
    names like ``im.nheko.summary`` unescaped); other wildcards are a letter."""
    def leaf(op: str, arg: object, repeated: bool) -> str:
        if op == "LITERAL":
            return chr(arg)  # type: ignore[arg-type]
        if op == "AT":
            return ""
        if op == "ANY":
            return "x" if repeated else "."
        return _leaf_example(op, arg)
    return _expand(pattern, leaf, lambda low, bodies: [b * max(low, 1) for b in bodies])


def shapes(pattern: str) -> list[re.Pattern[str]]:
    """One regex per alternative of a table pattern: alternations and optional
    parts expanded, any repeat as any text, any single-character class as any
    character.  Each is at least as wide as the alternative it stands for."""
    def leaf(op: str, arg: object, repeated: bool) -> str:
        if op == "LITERAL":
            return re.escape(chr(arg))  # type: ignore[arg-type]
        if op == "AT":
            return "$" if str(arg) == "AT_END" else ""
        return "."
    spelt = _expand(pattern, leaf, lambda low, bodies: [".*" if low == 0 else ".+"])
    return [re.compile(s) for s in dict.fromkeys(spelt)]


def requests(registrations: Iterable[Registration]) -> list[tuple[Request, str]]:
    """Example requests of registrations, each with its servlet."""
    return [((method, path), servlet) for method, pattern, servlet in registrations
            for path in examples(pattern)]


def serves(registrations: Sequence[Registration]) -> Callable[[str, str], bool]:
    compiled = [(method, re.compile(pattern)) for method, pattern, _ in registrations]
    return lambda method, path: any(m == method and r.match(path) for m, r in compiled)


def to_a_worker(table: Sequence[Endpoints], method: str, path: str) -> Endpoints | None:
    """The class that sends this request to a worker pool (while one exists), else None."""
    endpoints = endpoint_class(path, table)
    if endpoints is None:
        return None
    if endpoints.roles or (endpoints.read_roles and method in READ_METHODS):
        return endpoints
    return None


# --- the three checks, each returning what it found wrong ----------------------

def left_on_main(servlet: str, method: str, version: tuple[int, int, int]) -> bool:
    if servlet not in LEFT_ON_MAIN:
        return False
    methods, until, _ = LEFT_ON_MAIN[servlet]
    return method in methods and (until is None or version < until)


def unrouted(table: Sequence[Endpoints], servlets: Servlets,
             version: tuple[int, int, int]) -> dict[str, list[str]]:
    """Requests a worker serves that the table leaves on main."""
    found: dict[str, list[str]] = {}
    for (method, path), servlet in requests(servlets["worker"]):
        if not left_on_main(servlet, method, version) and to_a_worker(table, method, path) is None:
            found.setdefault(servlet, []).append(f"{method} {path}")
    return found


def stale(table: Sequence[Endpoints], servlets: Servlets) -> list[str]:
    """Alternatives of routed patterns that match no request a worker serves."""
    paths = [path for (_, path), _ in requests(servlets["worker"])]
    found = []
    for endpoints in table:
        if endpoints.name in OTHER_RESOURCES or not (endpoints.roles or endpoints.read_roles):
            continue
        for pattern in endpoints.patterns:
            if pattern.startswith("^/_matrix/key/"):  # the key resource: not in the probe
                continue
            for shape in shapes(pattern):
                if not any(shape.match(path) for path in paths):
                    found.append(f"{endpoints.name}: {pattern} ({shape.pattern})")
    return found


def misrouted(table: Sequence[Endpoints], servlets: Servlets) -> dict[str, list[str]]:
    """Requests main serves that the table sends to a worker which does not serve them."""
    worker_serves = serves(servlets["worker"])
    found: dict[str, list[str]] = {}
    for (method, path), servlet in requests(servlets["main"]):
        endpoints = to_a_worker(table, method, path)
        if endpoints is None or endpoints.name in OTHER_RESOURCES:
            continue
        if not worker_serves(method, path):
            found.setdefault(servlet, []).append(f"{method} {path} -> {endpoints.name}")
    return found


# --- the example generator itself -------------------------------------------------

def test_examples_match_their_pattern_and_cover_every_alternative():
    pattern = r"^/_matrix/client/(r0|v3)/rooms/(?P<room_id>[^/]*)/x(/(?P<t>[^/]+))?/im.a$"
    found = examples(pattern)
    assert sorted(found) == sorted(f"/_matrix/client/{v}/rooms/x/x{t}/im.a"
                                   for v in ("r0", "v3") for t in ("", "/x"))
    for path in found + examples("^/a/.*/b(/|$)") + examples(r"^/n/[0-9]+/\d$"):
        assert re.match(r"^/a/.*/b(/|$)|^/n/[0-9]+/\d$|" + pattern, path), path


def test_shapes_stand_for_each_alternative():
    found = [s.pattern for s in shapes("^/_matrix/client/(r0|v3)/rooms/.*/receipt(/|$)")]
    assert found == [r"/_matrix/client/r0/rooms/.*/receipt/", r"/_matrix/client/r0/rooms/.*/receipt$",
                     r"/_matrix/client/v3/rooms/.*/receipt/", r"/_matrix/client/v3/rooms/.*/receipt$"]
    assert shapes("^/a/[^/]+/b$")[0].match("/a/x/b")


# --- against the installed Synapse ----------------------------------------------------

def _probe(synapse_python: str, tmp: Path, config_paths: list[Path]) -> list[Registration]:
    r = subprocess.run([synapse_python, str(PROBE), str(tmp / "signing.key"), *map(str, config_paths)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout)]  # type: ignore[misc]


@pytest.fixture(scope="module")
def synapse_version(synapse_python) -> tuple[int, int, int]:
    """The venv's Synapse version, found as the package finds the installed one."""
    venv = Path(synapse_python).parent.parent
    version = installed_version(venv, ("lib/python3*/site-packages/matrix_synapse-*.dist-info",))
    assert version is not None, f"no Synapse metadata in {venv}"
    return version


#: Stream writers with endpoints, and the release that first accepts them.
WRITERS = {"typing": None, "to_device": None, "account_data": None, "receipts": None,
           "presence": None, "push_rules": (1, 105, 0), "device_lists": (1, 135, 0),
           "thread_subscriptions": (1, 135, 0), "quarantined_media": (1, 159, 0)}
#: Servlets Synapse registers only under an experimental flag that the table routes.
EXPERIMENTAL = {(1, 135, 0): {"msc4306_enabled": True}}


@pytest.fixture(scope="module")
def servlets(synapse_python, synapse_version, tmp_path_factory) -> Servlets:
    """What main and a generic worker register, with every stream that has endpoints
    written by a worker (so every servlet a worker may register is there)."""
    tmp = tmp_path_factory.mktemp("routes")
    root = make_root(tmp)
    writers = [w for w, since in WRITERS.items() if since is None or synapse_version >= since]
    spec = ",".join(["client", "federation_reader", "media", *writers])
    assert main(["render", "--root", str(root), "--workers", spec]) == 0
    etc = root / "etc/matrix-synapse"
    flags = {k: v for since, more in EXPERIMENTAL.items() if synapse_version >= since
             for k, v in more.items()}
    (etc / "conf.d" / "test-experimental.yaml").write_text(
        json.dumps({"experimental_features": flags}) + "\n")
    shared = [etc / "homeserver.yaml", etc / "conf.d"]
    worker: set[Registration] = set()
    for role in spec.split(","):
        name = f"{role.replace('_', '-')}-1"
        worker.update(_probe(synapse_python, tmp, shared + [etc / "workers" / f"{name}.yaml"]))
    found = {"worker": sorted(worker), "main": sorted(set(_probe(synapse_python, tmp, shared)))}
    assert len(found["worker"]) > 100 and len(found["main"]) > len(found["worker"])
    return found


@pytest.fixture(scope="module")
def table(synapse_version) -> tuple[Endpoints, ...]:
    """The classes that apply to the Synapse in the venv."""
    return table_for(synapse_version)


def test_every_endpoint_a_worker_serves_is_routed_to_a_worker(table, servlets, synapse_version):
    found = unrouted(table, servlets, synapse_version)
    assert not found, ("endpoints a worker serves that the route table sends to main; add them "
                       "to catalog.ENDPOINTS (or LEFT_ON_MAIN with the reason): "
                       + json.dumps(found, indent=1))


def test_every_routed_pattern_is_still_served_by_a_worker(table, servlets):
    found = stale(table, servlets)
    assert not found, f"routed patterns (or alternatives of them) no worker servlet serves: {found}"


def test_nothing_main_alone_serves_is_sent_to_a_worker(table, servlets):
    found = misrouted(table, servlets)
    assert not found, ("requests only main can answer that the route table sends to a worker: "
                       + json.dumps(found, indent=1))


def test_each_check_fails_on_a_broken_table(table, servlets, synapse_version):
    """The checks can fail: drop a class, add a dead pattern, widen one onto main's ground."""
    by_name = {e.name: e for e in table}
    without_rooms = tuple(e for e in table if e.name != "room")
    assert "RoomMessageListRestServlet" in unrouted(without_rooms, servlets, synapse_version)

    dead = replace(by_name["client"], patterns=by_name["client"].patterns
                   + (r"^/_matrix/client/v3/no_such_servlet$", r"^/_matrix/client/(v3|r1)/versions$"))
    found = stale([dead if e.name == "client" else e for e in table], servlets)
    assert any("no_such_servlet" in f for f in found) and any("r1" in f for f in found), found

    wide = replace(by_name["client"], patterns=by_name["client"].patterns
                   + (r"^/_matrix/client/(r0|v3)/rooms/[^/]+/forget$", r"^/_matrix/client/v3/pushers"))
    found_main = misrouted([wide if e.name == "client" else e for e in table], servlets)
    assert {"RoomForgetRestServlet", "PushersRestServlet"} <= set(found_main), found_main


# --- with the Matrix Authentication Service handling logins ----------------------------

#: Servlets a worker registers with MAS on that the MAS table leaves off the workers.
LEFT_ON_MAIN_WITH_MAS = {
    "RegisterAppServiceOnlyRestServlet": "with MAS /register takes only appservice "
                                         "registrations: main answers them, and an admin "
                                         "location for registration wins over no match",
}


#: Patterns of shared classes whose servlet Synapse drops with MAS (main and workers
#: alike answer 404, so where they go does not matter), by class.
DROPPED_WITH_MAS = {
    "device_lists": "^/_matrix/client/(r0|v3|unstable)/delete_devices$",
}


def _mas_config(version: tuple[int, int, int]) -> dict[str, object]:
    """Synapse's setting that hands logins to MAS, in the spelling this version reads
    (password login off: Synapse refuses both at once)."""
    if version >= MAS_KEY_SINCE:
        auth: dict[str, object] = {MAS_KEY: {"enabled": True, "endpoint": "http://127.0.0.1:8080",
                                             "secret": "a-shared-secret"}}
    else:
        auth = {"experimental_features": {"msc3861": {
            "enabled": True, "issuer": "https://auth.example.org/", "client_id": "synapse",
            "client_auth_method": "client_secret_basic", "client_secret": "x", "admin_token": "y"}}}
    return {**auth, "password_config": {"enabled": False}}


@pytest.fixture(scope="module")
def mas_servlets(synapse_python, synapse_version, tmp_path_factory) -> Servlets:
    """What main and a client worker register on a homeserver that hands logins to MAS,
    rendered by the package from that homeserver.yaml (so it reads the setting itself)."""
    tmp = tmp_path_factory.mktemp("mas-routes")
    config = _mas_config(synapse_version)
    # The experimental servlets the table routes, as in the probe without MAS (in the same
    # key as msc3861 before 1.136: a second file would replace it, not add to it).
    experimental = config.setdefault("experimental_features", {})
    assert isinstance(experimental, dict)
    experimental.update({k: v for since, more in EXPERIMENTAL.items() if synapse_version >= since
                         for k, v in more.items()})
    root = make_root(tmp, homeserver(tmp, **config))
    assert main(["render", "--root", str(root), "--workers", "client"]) == 0
    etc = root / "etc/matrix-synapse"
    snippet = (root / str(NGINX_SNIPPET).lstrip("/")).read_text()
    assert "/login$" not in snippet and "/_synapse/mas/" in snippet
    shared = [etc / "homeserver.yaml", etc / "conf.d"]
    return {"worker": sorted(set(_probe(synapse_python, tmp, shared + [etc / "workers/client-1.yaml"]))),
            "main": sorted(set(_probe(synapse_python, tmp, shared)))}


def test_with_mas_synapse_drops_what_the_table_leaves_to_mas(mas_servlets, synapse_version):
    """Neither main nor a worker serves login, logout or refresh with MAS on: they are MAS's."""
    for kind in ("worker", "main"):
        served = serves(mas_servlets[kind])
        for path in ("/_matrix/client/v3/login", "/_matrix/client/v3/logout",
                     "/_matrix/client/v3/refresh"):
            assert not any(served(m, path) for m in ("GET", "POST")), (kind, path)
    table = table_for(synapse_version, mas=True)
    assert endpoint_class("/_matrix/client/v3/login", table) is None


def test_with_mas_every_endpoint_a_worker_serves_is_routed_and_none_misrouted(mas_servlets,
                                                                             synapse_version):
    table = table_for(synapse_version, mas=True)
    found = {servlet: requests for servlet, requests
             in unrouted(table, mas_servlets, synapse_version).items()
             if servlet not in LEFT_ON_MAIN_WITH_MAS}
    assert not found, json.dumps(found, indent=1)
    found_stale = [f for f in stale(table, mas_servlets)
                   if not any(f.startswith(f"{name}: {pattern}")
                              for name, pattern in DROPPED_WITH_MAS.items())]
    assert not found_stale, found_stale
    assert not misrouted(table, mas_servlets)
