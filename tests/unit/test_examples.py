"""The examples installed in /usr/share/doc/matrix-synapse-workers/examples/.

The nginx vhosts pass ``nginx -t`` without a warning, with the package's
rendered files included as Debian's layout includes them, on the host's real
nginx: the example written for its version passes, and the other one fails
(bookworm's 1.22 does not know ``http2 on;``) or warns (1.26 deprecates
``listen ... http2``), so each file is right for one release only, as it says.
The trixie example on trixie's own nginx: tests/package/test_deb_examples.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from matrix_synapse_workers.cli import build_parser
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.status import report
from support.plans import plan_of
from support.vhosts import EXAMPLES, VHOSTS, nginx_version, problems, release_for, write_tree

PLAN = "sync:2,client,federation_reader,events"


def host_nginx() -> str:
    nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not nginx:
        if os.environ.get("CI") or os.environ.get("MSW_REQUIRE_PACKAGE"):
            pytest.fail("nginx is not installed (scripts/test installs it)")
        pytest.skip("nginx is not installed")
    return nginx


def nginx_t(tmp_path: Path, release: str) -> subprocess.CompletedProcess[str]:
    conf = write_tree(tmp_path, PurePosixPath(tmp_path), (EXAMPLES / VHOSTS[release]).read_text(),
                      plan_of(PLAN), root_user=os.geteuid() == 0)
    return subprocess.run([host_nginx(), "-t", "-c", str(conf), "-p", str(tmp_path)],
                          capture_output=True, text=True, check=False)


def this_release() -> str:
    done = subprocess.run([host_nginx(), "-v"], capture_output=True, text=True, check=True)
    return release_for(nginx_version(done.stderr + done.stdout))


def test_the_vhost_for_this_nginx_passes_without_a_warning(tmp_path: Path) -> None:
    done = nginx_t(tmp_path, this_release())
    assert done.returncode == 0 and not problems(done.stderr), done.stderr


def test_the_vhost_for_the_other_release_does_not_pass_cleanly_here(tmp_path: Path) -> None:
    other = "trixie" if this_release() == "bookworm" else "bookworm"
    done = nginx_t(tmp_path, other)
    if other == "trixie":
        assert done.returncode != 0 and 'unknown directive "http2"' in done.stderr, done.stderr
    else:
        assert "deprecated" in done.stderr, done.stderr


def test_the_vhosts_differ_only_in_how_they_turn_on_http2() -> None:
    def body(release: str) -> list[str]:
        text = (EXAMPLES / VHOSTS[release]).read_text()
        return [re.sub(r" http2(?=[ ;])", "", line) for line in text.splitlines()
                if not line.startswith("#") and line.strip() != "http2 on;"]
    assert body("bookworm") == body("trixie")


def test_the_vhosts_include_the_snippet_and_no_matrix_location_of_their_own() -> None:
    for name in VHOSTS.values():
        text = (EXAMPLES / name).read_text()
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert f"    include snippets/{PurePosixPath(paths.NGINX_SNIPPET).name};" in code
        assert not [line for line in code if "location" in line and "_matrix" in line], name
        for needed in ("listen 8448 ssl", "/.well-known/matrix/server", "/.well-known/matrix/client"):
            assert needed in text, (name, needed)


def test_prometheus_example_scrapes_the_targets_file_the_package_writes() -> None:
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    [synapse] = [job for job in config["scrape_configs"] if job["job_name"] == "synapse"]
    assert synapse["metrics_path"] == "/_synapse/metrics"
    assert synapse["file_sd_configs"] == [{"files": [f"/{paths.PROMETHEUS_TARGETS}"]}]
    text = (EXAMPLES / "prometheus.yml").read_text()
    assert "matrix_synapse_workers_status" in text and report.TEXTFILE_NAME in text


def test_monitoring_examples_run_the_commands_the_cli_has() -> None:
    """status --check and status --prometheus DIR, as cli.py parses them."""
    parser = build_parser()
    for name in ("nagios-command.cfg", "icinga2-command.conf"):
        assert "matrix-synapse-workers status --check" in (EXAMPLES / name).read_text() or \
            '"status", "--check"' in (EXAMPLES / name).read_text(), name
    assert parser.parse_args(["status", "--check"]).check
    service = (EXAMPLES / "matrix-synapse-workers-textfile.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", service, re.M)
    argv = exec_start.split()
    assert argv[0] == "/usr/bin/matrix-synapse-workers"
    assert parser.parse_args(argv[1:]).prometheus == report.TEXTFILE_DIRECTORY
    timer = (EXAMPLES / "matrix-synapse-workers-textfile.timer").read_text()
    assert "OnUnitActiveSec=" in timer and "WantedBy=timers.target" in timer


def test_the_packaging_installs_every_example() -> None:
    assert (Path(__file__).resolve().parents[2] / "debian/matrix-synapse-workers.examples"
            ).read_text().split() == ["examples/*"]
