"""Routes proven by requests: every endpoint a worker takes answers as main would.

The route check in tests/synapse proves that a worker registers a servlet, not
that its handlers can answer (issue 12: receipts and other users' presence
answered 500 from a client worker).  Here, in one booted container per Synapse
version, the package is installed with every worker type, then reconfigured to
each preset people get; for each deployment differential_driver.py (run
inside the container) makes a real request for every endpoint class of the
route table through nginx and the same request straight to main's socket, each
in a fresh user or room of its own when it writes.  Status, errcode and body
shape (key paths and types, not values) must be equal; a difference names the
case, the request and the workers the route table sends it to.

Where the route table sends a request to a worker that took a job away from
main (a stream's writer, the media repository), main can no longer answer it
(it is not the writer; it has no media repository): the reference is then the
same request made to the same Synapse before the package was installed, one
process doing everything.

Federation, signed and real: a second homeserver (the stand-in Synapse under
another server name, in a container of its own joined by a private link, TLS
with a self-signed certificate as both sides allow here) has a user of its own
query profiles, directories and keys on ours, download our media, join a room,
backfill its history, send into it and receive from it, and accept an invite.
Those cases are compared with the same scenario against the single process.
Unsigned federation requests are cases of their own too (both sides must
refuse them alike).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

import harness
from booted_config import NGINX, OUR_FED_ADDRESS, REMOTE_FED_ADDRESS, REMOTE_SERVER_NAME, SERVER_NAME, \
    STANDIN_MAIN_URL, VHOST
from support.standin import build_standin
from harness import Container
from twohost import PrivateLink
from test_scenarios import SOCKETS, assert_all_healthy, install_workers, preseed, reconfigure, \
    workers_on_disk

from matrix_synapse_workers.core import sizing
from matrix_synapse_workers.core.catalog import PRESETS, ROLES, Version
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.render import routing

DRIVER = Path(__file__).with_name("differential_driver.py")
DRIVER_IN_CONTAINER = "/root/differential_driver.py"
NEWEST = "1.163.2"
#: The oldest Synapse the package supports (catalog.MIN_SYNAPSE_VERSION).
OLDEST = "1.89.0"
#: Every deployment with its debconf answers: the every-type deployment first, then
#: what people get (auto's answers on 2 and on 8 cores, given as the counts it picks).
EVERY_TYPE = ("one_of_each", preseed("one_of_each"))


def _auto(cores: int) -> tuple[str, str]:
    counts = sizing.sized_counts(cores, 16 * 1024)
    return (f"auto on {cores} cores",
            preseed("custom", ", ".join(counts), ",".join(f"{k}:{v}" for k, v in counts.items())))


def every_type_known_to(version: str) -> str:
    """Every stable worker type the given Synapse knows (one_of_each less the newer ones)."""
    v = tuple(int(x) for x in version.split("."))
    types = [r.name for r in ROLES.values() if not r.experimental and (r.since is None or r.since <= v)]
    return preseed("custom", ", ".join(types), ",".join(f"{t}:1" for t in types))


#: The experimental writer no preset has, beside the media workers and their quarantine writer.
EXPERIMENTAL = ("media, quarantine and thread subscription writers",
                preseed("custom", "sync, client, media, quarantined_media, thread_subscriptions",
                        "media:2"))
DEPLOYMENTS = [EVERY_TYPE, ("small", preseed("small")), _auto(2), _auto(8), ("busy", preseed("busy")),
               EXPERIMENTAL]
#: The admin's vhost: Matrix, and the admin API through the package's admin snippet.
ADMIN_VHOST = VHOST.replace("    include snippets/matrix-synapse-workers.conf;\n",
                            "    include snippets/matrix-synapse-workers.conf;\n"
                            "    include snippets/matrix-synapse-workers-admin.conf;\n")
#: The thread subscription servlets exist only with this experimental flag.
EXPERIMENTAL_YAML = "experimental_features: {msc4306_enabled: true}\n"
#: busy runs 28 processes: with cp_max 5 each they may want 140 connections, and a stock
#: PostgreSQL (100, 3 reserved) refused them under this test's load (500s).  The package
#: warns about it (test_booted_dblimit); the admin's answer, made here once at the start
#: (PostgreSQL and main restarted before anything else), is a higher limit.
MAX_CONNECTIONS = 200


def plan_of(answers: str) -> Plan:
    """The plan the package makes from these answers (the same pure code it runs)."""
    fields = {}
    for line in answers.strip().splitlines():
        _, question, _, value = (line + " ").split(" ", 3)
        fields[question] = value.strip()
    preset = fields["matrix-synapse-workers/preset"].strip()
    if preset != "custom":
        return Plan(plan_workers(select(preset=preset)))
    types = fields.get("matrix-synapse-workers/worker-types", "").replace(" ", "").split(",")
    counts = dict(c.split(":") for c in fields.get("matrix-synapse-workers/worker-counts", "").split(",") if c)
    return Plan(plan_workers(select(workers=",".join(f"{t}:{counts.get(t, 1)}" for t in types))))


def drive(c: Container, proxy: str, main: str, run: str, only: list[str] | None = None,
          **more: Any) -> dict[str, Any]:
    args = {"proxy": proxy, "main": main, "secret": harness.TEST_SHARED_SECRET, "server": SERVER_NAME,
            "run": run, "only": only or [], **more}
    r = c.run(["python3", DRIVER_IN_CONTAINER, json.dumps(args)], check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


# --- a second homeserver ------------------------------------------------------------------

#: What both homeservers' admins set for a test network: certificates are self-signed,
#: the peers' addresses are private ones (Synapse refuses those by default), and no
#: notary other than the peer itself (matrix.org is out of reach).
FEDERATION_YAML = f"""federation_verify_certificates: false
ip_range_whitelist: ["{OUR_FED_ADDRESS.rsplit('.', 1)[0]}.0/24"]
trusted_key_servers: []
"""
HOSTS = f"{OUR_FED_ADDRESS} {SERVER_NAME}\n{REMOTE_FED_ADDRESS} {REMOTE_SERVER_NAME}\n"


def federation_vhost(name: str, address: str, locations: str) -> str:
    """Port 8448 for federation (and clients), and 443 only to delegate to it (.well-known)."""
    tls = (f"    server_name {name};\n    ssl_certificate /etc/nginx/test-federation.crt;\n"
           f"    ssl_certificate_key /etc/nginx/test-federation.key;\n")
    return (f"server {{\n    listen {address}:8448 ssl;\n{tls}{locations}}}\n"
            f"server {{\n    listen {address}:443 ssl;\n{tls}"
            f"    location = /.well-known/matrix/server {{\n"
            f"        default_type application/json;\n"
            f"        return 200 '{{\"m.server\": \"{name}:8448\"}}';\n    }}\n}}\n")


#: Before our package: nginx sends everything to the single process.
TO_MAIN = ("    location / {\n        proxy_pass http://127.0.0.1:8008;\n"
           "        proxy_set_header Host $host;\n"
           "        proxy_set_header X-Forwarded-For $remote_addr;\n    }\n")
OUR_SNIPPET = "    include snippets/matrix-synapse-workers.conf;\n"


def serve_federation(c: Container, name: str, address: str, locations: str) -> None:
    c.write_file("/etc/hosts", "127.0.0.1 localhost\n" + HOSTS)
    c.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
           "-keyout", "/etc/nginx/test-federation.key", "-out", "/etc/nginx/test-federation.crt"])
    c.write_file("/etc/nginx/sites-enabled/matrix-federation", federation_vhost(name, address, locations))
    c.run(["systemctl", "reload-or-restart", "nginx.service"])
    c.write_file("/etc/matrix-synapse/conf.d/test-federation.yaml", FEDERATION_YAML)


@pytest.fixture(scope="module")
def remote_root(base_root: Path, standin_deb: Path) -> Path:
    """The stand-in Synapse as another homeserver (REMOTE_SERVER_NAME), cached as a layer."""
    setup = functools.partial(harness.install_standin_synapse, deb=standin_deb,
                              server_name=REMOTE_SERVER_NAME)
    return harness.ensure_derived_root(
        "standin-synapse-remote", base_root, setup,
        inputs=[inspect.getsource(harness.synapse_setup), repr(harness.synapse_settings()),
                harness._SYNAPSE_SETUP_PY, STANDIN_MAIN_URL, REMOTE_SERVER_NAME])


class Remote:
    """The other homeserver, booted and linked to ours; federate() drives its user."""

    def __init__(self, c: Container) -> None:
        self.c = c
        c.write_file(DRIVER_IN_CONTAINER, DRIVER.read_text())
        serve_federation(c, REMOTE_SERVER_NAME, REMOTE_FED_ADDRESS, TO_MAIN)
        c.run(["systemctl", "restart", "matrix-synapse.service"], timeout=180)
        harness.wait_for_http(c, STANDIN_MAIN_URL, "/health")

    def federate(self, ours: Container, proxy: str, main: str, run: str) -> dict[str, Any]:
        """Our side's room, user and media (made as the other cases' setup is), then the scenario."""
        prep = drive(ours, proxy, main, run, mode="fed-prep")
        args = {"proxy": STANDIN_MAIN_URL, "main": STANDIN_MAIN_URL, "secret": harness.TEST_SHARED_SECRET,
                "server": REMOTE_SERVER_NAME, "run": run, "mode": "fed-remote",
                "ours": f"https://{SERVER_NAME}:8448", "prep": prep}
        r = self.c.run(["python3", DRIVER_IN_CONTAINER, json.dumps(args)], check=False, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        return json.loads(r.stdout)


def differences(report: dict[str, Any], plan: Plan, reference: dict[str, dict[str, Any]],
                federation: bool = False) -> list[str]:
    """Each case whose answer through nginx is not main's, naming where nginx sent it."""
    version: Version = tuple(report["version"])  # type: ignore[assignment]
    wrong = []
    for row in report["results"]:
        path = row["proxy_path"]
        role, workers = routing.destination(plan, path, row["method"], version)
        main = row["main"]
        if not federation and role in ROLES and (ROLES[role].stream or role == "media"):
            main = reference[row["case"]]  # main is no longer the writer, or has no media
        got = row["proxy"]
        if (got["status"], got["errcode"], got["shape"], got.get("facts")) == \
                (main["status"], main["errcode"], main["shape"], main.get("facts")):
            continue
        only_proxy = sorted(set(got["shape"]) - set(main["shape"]))[:8]
        only_main = sorted(set(main["shape"]) - set(got["shape"]))[:8]
        wrong.append(f"{row['case']}: {row['method']} {path.split('?')[0]} via nginx to "
                     f"{', '.join(workers) or 'main'} ({role}): {got['status']} {got['errcode']} "
                     f"against main's {main['status']} {main['errcode']}; "
                     f"only via nginx {only_proxy}, only from main {only_main}"
                     + (f"; facts {got.get('facts')} against {main.get('facts')}"
                        if got.get("facts") != main.get("facts") else ""))
    return wrong


def federation_differences(report: dict[str, Any], plan: Plan, reference: dict[str, Any]) -> list[str]:
    """The other homeserver's answers against the same scenario with the single process."""
    ref = {row["case"]: row["proxy"] for row in reference["results"]}
    rows = [{**row, "main": ref[row["case"]]} for row in report["results"]]
    # Every case must have worked in the reference, or the comparison proves nothing.
    broken = [f"{c}: {a['status']} {a['errcode']} {a.get('facts')}" for c, a in ref.items()
              if a["status"] != 200 or not all(a.get("facts", {}).values())]
    assert not broken, f"federation with the single process did not work: {broken}"
    return differences({**report, "results": rows}, plan, {}, federation=True)


def uncovered(report: dict[str, Any]) -> list[str]:
    """Classes of the route table for this version that no case requested."""
    version: Version = tuple(report["version"])  # type: ignore[assignment]
    table = routing.table_for(version)
    hit = {routing.endpoint_class(row["proxy_path"].split("?")[0], table).name
           for row in report["results"] if routing.endpoint_class(row["proxy_path"].split("?")[0], table)}
    return sorted(e.name for e in table if e.name not in hit)


def synapse_root_of(version: str, base_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synapse_root (conftest) for another Synapse version: its own stand-in .deb and layer."""

    deb = build_standin(version, tmp_path_factory.mktemp(f"standin-{version}"))
    setup = functools.partial(harness.install_standin_synapse, deb=deb, server_name=SERVER_NAME)
    return harness.ensure_derived_root(
        f"standin-synapse-{version}", base_root, setup,
        inputs=[inspect.getsource(harness.synapse_setup), repr(harness.synapse_settings()),
                harness._SYNAPSE_SETUP_PY, STANDIN_MAIN_URL, version])


class Deployment:
    """One container for one Synapse version; deploy() reconfigures it in place."""

    def __init__(self, c: Container, deb: Path, remote: Remote | None = None) -> None:
        self.c, self.deb, self.installed, self.runs, self.remote = c, deb, False, 0, remote
        c.write_file(DRIVER_IN_CONTAINER, DRIVER.read_text())
        if remote:
            serve_federation(c, SERVER_NAME, OUR_FED_ADDRESS, TO_MAIN)
        c.run(["runuser", "-u", "postgres", "--", "psql", "-qc",
               f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}"])
        c.run(["systemctl", "restart", "postgresql.service"], timeout=120)
        c.write_file("/etc/matrix-synapse/conf.d/test-experimental.yaml", EXPERIMENTAL_YAML)
        c.run(["systemctl", "restart", "matrix-synapse.service"], timeout=180)
        harness.wait_for_http(c, STANDIN_MAIN_URL, "/health")
        # Before the package: one process doing everything.  The reference where
        # a worker takes a job away from main (a stream's writer, the media repository).
        self.reference = {row["case"]: row["main"]
                          for row in drive(c, STANDIN_MAIN_URL, STANDIN_MAIN_URL, "ref")["results"]}
        if remote:
            self.fed_reference = remote.federate(c, STANDIN_MAIN_URL, STANDIN_MAIN_URL, "fref")

    def deploy(self, answers: str) -> None:
        if not self.installed:
            install_workers(self.c, self.deb, answers)
            assert ADMIN_VHOST != VHOST
            self.c.write_file("/etc/nginx/sites-enabled/matrix-test", ADMIN_VHOST)
            if self.remote:
                self.c.write_file("/etc/nginx/sites-enabled/matrix-federation",
                                  federation_vhost(SERVER_NAME, OUR_FED_ADDRESS, OUR_SNIPPET))
            self.c.run(["systemctl", "reload-or-restart", "nginx.service"])
            self.installed = True
        else:
            reconfigure(self.c, answers)
        assert_all_healthy(self.c, workers_on_disk(self.c))
        harness.wait_for_http(self.c, NGINX, "/_matrix/client/versions", timeout=60)

    def check(self, answers: str) -> dict[str, Any]:
        self.deploy(answers)
        self.runs += 1
        report = drive(self.c, NGINX, f"{SOCKETS}/main.sock", f"r{self.runs}")
        assert not uncovered(report), f"endpoint classes no case requests: {uncovered(report)}"
        wrong = differences(report, plan_of(answers), self.reference)
        if self.remote:
            fed = self.remote.federate(self.c, NGINX, f"{SOCKETS}/main.sock", f"f{self.runs}")
            wrong += federation_differences(fed, plan_of(answers), self.fed_reference)
        assert not wrong, "answered differently through nginx than by main:\n" + "\n".join(wrong)
        return report


@pytest.fixture(scope="module")
def newest(synapse_root: Path, remote_root: Path, package_deb: Path) -> Iterator[Deployment]:
    deb = Path(os.environ.get("MSW_PACKAGE_DEB") or package_deb)
    with Container(synapse_root, name="differential") as c, \
            Container(remote_root, name="differential-remote") as rc, \
            PrivateLink(c, rc, OUR_FED_ADDRESS, REMOTE_FED_ADDRESS):
        yield Deployment(c, deb, Remote(rc))


@pytest.mark.parametrize("name,answers", DEPLOYMENTS, ids=[d[0] for d in DEPLOYMENTS])
def test_every_endpoint_answers_through_nginx_as_main_would(newest: Deployment, name: str, answers: str):
    newest.check(answers)


def test_the_oldest_supported_synapse_answers_alike_with_every_type(
        base_root: Path, package_deb: Path, tmp_path_factory: pytest.TempPathFactory):
    root = synapse_root_of(OLDEST, base_root, tmp_path_factory)
    deb = Path(os.environ.get("MSW_PACKAGE_DEB") or package_deb)
    with Container(root, name="differential-oldest") as c:
        report = Deployment(c, deb).check(every_type_known_to(OLDEST))
        assert tuple(report["version"]) == tuple(int(x) for x in OLDEST.split("."))


def test_the_deployments_are_the_presets_people_get():
    """The list above follows the catalog: a new preset must be added here."""
    named = {n for n, _ in DEPLOYMENTS}
    assert set(PRESETS) - named <= {"minimal"}  # minimal is auto's answer on 2 cores
    assert plan_of(_auto(2)[1]).workers == Plan(plan_workers(select(preset="minimal"))).workers
