"""Monitoring on a booted system: Debian's real prometheus scraping every Synapse process.

One container (from a cached layer with bookworm's prometheus and
prometheus-node-exporter installed) for every monitoring check: the package
installed with metrics on, Prometheus reading our file_sd targets and the
node_exporter textfile that ``status --prometheus`` writes, ``status --check``,
a worker's lines in the journal and in its rotated file under
/var/log/matrix-synapse (the stand-in's log.yaml is Synapse's generated one,
as matrix-synapse-py3 ships it), and purge removing the targets.
"""

from __future__ import annotations

import functools
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

import harness
from booted_config import container_name
from harness import Container, http_unix, login, register_user
from test_booted_status import VHOST
from test_scenarios import assert_all_healthy, install_workers, poll, preseed

SOCKETS = "/run/matrix-synapse"
TARGETS = "/var/lib/matrix-synapse-workers/prometheus-targets.yaml"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
WORKERS = ["client-1", "sync-1"]
PROMETHEUS_PACKAGES = ("prometheus", "prometheus-node-exporter")
PROMETHEUS_YML = f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: synapse
    metrics_path: /_synapse/metrics
    file_sd_configs:
      - files: [{TARGETS}]
        refresh_interval: 1s
  - job_name: node
    static_configs:
      - targets: ['127.0.0.1:9100']
"""


def download_debs(base_root: Path, packages: tuple[str, ...], dest: Path) -> list[Path]:
    """The .debs of ``packages`` and what they need beyond ``base_root``, from the host's mirror.

    apt resolves against the root's own dpkg status, so exactly the missing
    dependencies come down; the root itself is not touched.
    """
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["apt-get", "install", "-y", "--download-only", "--no-install-recommends",
                        "-o", f"Dir::State::status={base_root}/var/lib/dpkg/status",
                        "-o", f"Dir::Cache::archives={dest}", "-o", "Debug::NoLocking=1",
                        *packages], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"downloading {packages} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}", pytrace=False)
    return sorted(dest.glob("*.deb"))


def install_prometheus(c: Container, debs: tuple[Path, ...]) -> None:
    """Debian's prometheus and node exporter, as an admin installs them (enabled, running)."""
    c.install_debs(debs)


@pytest.fixture(scope="module")
def prometheus_root(base_root: Path, synapse_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    debs = download_debs(base_root, PROMETHEUS_PACKAGES, tmp_path_factory.mktemp("prometheus-debs"))
    assert any(d.name.startswith("prometheus_") for d in debs), debs
    setup = functools.partial(install_prometheus, debs=tuple(debs))
    return harness.ensure_derived_root("prometheus", synapse_root, setup)


@pytest.fixture(scope="module")
def monitored(prometheus_root: Path, package_deb: Path):
    """The shared container: our package with metrics on, Prometheus scraping it."""
    with Container(prometheus_root, name=container_name("monitoring")) as c:
        answers = preseed("custom", "sync, client") + \
            "matrix-synapse-workers matrix-synapse-workers/metrics boolean true\n"
        install_workers(c, package_deb, answers)
        assert_all_healthy(c, WORKERS)
        # The admin includes the routing snippet in their vhost, as README.Debian shows.
        c.write_file("/etc/nginx/sites-enabled/matrix", VHOST)
        c.run(["systemctl", "reload", "nginx"])
        c.write_file("/etc/prometheus/prometheus.yml", PROMETHEUS_YML)
        c.run(["systemctl", "restart", "prometheus", "prometheus-node-exporter"])
        yield c


def query(c: Container, promql: str) -> list[dict[str, Any]]:
    url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(promql)
    r = c.run(["curl", "-sS", "--max-time", "5", url], check=False)
    if r.returncode != 0:
        return []
    data = json.loads(r.stdout)
    return data["data"]["result"] if data.get("status") == "success" else []


def by_instance(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("instance", ""): float(r["value"][1]) for r in results}


def test_prometheus_scrapes_every_process_and_a_workers_counter_rises(monitored: Container) -> None:
    c = monitored
    targets = json.loads(c.run(["python3", "-c", "import json, sys, yaml; "
                                "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", TARGETS]).stdout)
    assert sorted(g["labels"]["instance"] for g in targets) == sorted(["main", *WORKERS])
    processes = {"main", *WORKERS}
    poll(lambda: {i for i, v in by_instance(query(c, 'up{job=~"master|sync|client"}')).items()
                  if v == 1} == processes, 60, f"Prometheus sees every process up: {processes}")
    ups = query(c, 'up{job=~"master|sync|client"}')
    assert {(r["metric"]["job"], r["metric"]["index"]) for r in ups} == {
        ("master", "1"), ("sync", "1"), ("client", "1")}
    # Every metrics listener is on loopback, none on a wildcard address.
    listening = c.run(["ss", "-Hltn"]).stdout
    for port in [t["targets"][0].rsplit(":", 1)[1] for t in targets]:
        assert f"127.0.0.1:{port} " in listening and f"0.0.0.0:{port} " not in listening, listening

    counter = 'sum by (instance) (synapse_http_server_requests_received_total{instance="sync-1"})'

    def seen() -> float:
        return by_instance(query(c, counter)).get("sync-1", 0.0)

    poll(lambda: "sync-1" in by_instance(query(c, counter)), 30, "sync-1's request counter scraped")
    before = seen()
    register_user(c, f"{SOCKETS}/main.sock", "mona", "mona-password-1")
    token = login(c, f"{SOCKETS}/client-1.sock", "mona", "mona-password-1")["access_token"]
    for _ in range(3):
        synced = http_unix(c, f"{SOCKETS}/sync-1.sock", "GET", "/_matrix/client/v3/sync?timeout=0", None,
                           {"Authorization": f"Bearer {token}"})
        assert synced.status == 200, synced.text
    poll(lambda: seen() >= before + 3, 30, f"sync-1's request counter rises from {before}")


def journal(c: Container, unit: str) -> str:
    return c.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout


def provoke_warning(c: Container, socket: str, marker: str) -> None:
    """A multipart POST, which Synapse refuses before routing with a WARNING naming the path."""
    c.run(["curl", "-sS", "--max-time", "5", "--unix-socket", socket, "-X", "POST",
           "-H", "Content-Type: multipart/form-data; boundary=x", "--data-binary", "--x--",
           f"http://localhost/_matrix/client/v3/{marker}"], check=False)


def test_a_workers_lines_in_the_journal_and_in_its_rotated_file(monitored: Container) -> None:
    c = monitored
    unit, log = "matrix-synapse-worker@sync-1.service", "/var/log/matrix-synapse/sync-1.log"
    # Its own file, rotated by Synapse's handler as the admin's log.yaml says, held open by the worker.
    config = yaml_of(c, "/etc/matrix-synapse/worker-logs/sync-1.yaml")
    file_handler = config["handlers"]["file"]
    assert (file_handler["class"], file_handler["when"], file_handler["backupCount"],
            file_handler["filename"]) == ("logging.handlers.TimedRotatingFileHandler", "midnight", 3, log)
    assert c.run(["stat", "-c", "%U", log]).stdout.strip() == "matrix-synapse"
    pid = c.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip()
    open_files = c.run(["sh", "-c", f"readlink /proc/{pid}/fd/*"], check=False).stdout.split()
    assert log in open_files, open_files
    # The journal: the startup banner (WARNING), not the INFO lines, which are in the file.
    started = journal(c, unit)
    assert "***** STARTING SERVER *****" in started and "generic_worker" in started, started
    assert "Server hostname:" not in started, started
    assert "Server hostname:" in c.run(["cat", log]).stdout
    # A warning it logs reaches both, once; and still after systemctl reload (Synapse rebuilds
    # its log handlers on SIGHUP, with sys.stderr pointed into its own logging by then).
    for marker in ("msw-log-probe-before-reload", "msw-log-probe-after-reload"):
        if marker.endswith("after-reload"):
            c.run(["systemctl", "reload", unit])
            poll(lambda: "Reloaded log config" in c.run(["cat", log]).stdout, 30, "sync-1 reloaded")
        provoke_warning(c, f"{SOCKETS}/sync-1.sock", marker)
        poll(lambda: marker in journal(c, unit), 30, f"{marker} in {unit}'s journal")
        lines = [line for line in journal(c, unit).splitlines() if marker in line]
        assert len(lines) == 1 and " - WARNING - " in lines[0], lines
        assert marker in c.run(["cat", log]).stdout
    assert "logging during logging" not in journal(c, unit)


def yaml_of(c: Container, path: str) -> Any:
    return json.loads(c.run(["python3", "-c", "import json, sys, yaml; "
                             "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", path]).stdout)


def test_status_for_monitoring_on_the_real_system(monitored: Container) -> None:
    c = monitored
    check = c.run(["matrix-synapse-workers", "status", "--check"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("SYNAPSE WORKERS OK: ") and check.stdout.count("\n") == 1
    data = json.loads(c.run(["matrix-synapse-workers", "status", "--json"]).stdout)
    assert data["schema_version"] == 2 and data["exit_code"] == 0
    # node_exporter's textfile collector takes the file: Prometheus sees the verdict.
    c.run(["matrix-synapse-workers", "status", "--prometheus", TEXTFILE_DIR])
    poll(lambda: by_instance(query(c, "matrix_synapse_workers_status")) != {}, 30,
         "node_exporter serves matrix_synapse_workers_status")
    assert set(by_instance(query(c, "matrix_synapse_workers_status")).values()) == {0.0}
    assert len(query(c, "matrix_synapse_workers_check")) == len(data["checks"])
    assert query(c, "node_textfile_scrape_error") and \
        set(by_instance(query(c, "node_textfile_scrape_error")).values()) == {0.0}
    # One worker down: WARNING from the plugin, and Prometheus sees its target down.
    c.run(["systemctl", "stop", "matrix-synapse-worker@client-1.service"])
    check = c.run(["matrix-synapse-workers", "status", "--check"], check=False)
    assert check.returncode == 1 and check.stdout.startswith("SYNAPSE WORKERS WARNING: "), check.stdout
    poll(lambda: by_instance(query(c, 'up{instance="client-1"}')).get("client-1") == 0, 30,
         "client-1's target down")
    c.run(["systemctl", "start", "matrix-synapse-worker@client-1.service"])


def test_purge_removes_the_targets(monitored: Container) -> None:
    c = monitored
    assert c.run(["test", "-f", TARGETS], check=False).returncode == 0
    c.run(["dpkg", "--purge", "matrix-synapse-workers"], timeout=600)
    assert c.run(["test", "-e", TARGETS], check=False).returncode != 0
