"""The systemd units, drop-in and tmpfiles.d line, read and checked by systemd's own tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType


from package_helpers import parse_unit, require_tool, unit_values

UNIT_DIR = Path("usr/lib/systemd/system")
VENV_PYTHON = "/opt/venvs/matrix-synapse/bin/python"

# What the Matrix.org package's matrix-synapse.service looks like in the
# respects that matter here, so that verify can resolve the dependencies.
STANDIN_MAIN = """\
[Unit]
Description=stand-in for matrix-synapse.service, for systemd-analyze verify only

[Service]
Type=notify
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def read_unit(unpacked: Path, name: str) -> dict[str, list[tuple[str, str]]]:
    return parse_unit((unpacked / UNIT_DIR / name).read_text())


def test_worker_template(unpacked: Path, packaged_paths: ModuleType) -> None:
    unit = read_unit(unpacked, "matrix-synapse-worker@.service")
    p = packaged_paths
    workers = f"/{p.WORKERS_DIR}"
    assert unit_values(unit, "Unit", "AssertPathExists") == [f"{workers}/%i.yaml"]
    assert unit_values(unit, "Unit", "ReloadPropagatedFrom") == [p.TARGET_UNIT]
    assert unit_values(unit, "Unit", "After") == [p.MAIN_UNIT]
    assert unit_values(unit, "Unit", "Wants") == [p.MAIN_UNIT]
    assert sorted(" ".join(unit_values(unit, "Unit", "PartOf")).split()) == sorted([p.TARGET_UNIT, p.MAIN_UNIT])
    # Not Requires= nor BindsTo=: a main that fails to start and is restarted
    # by systemd would leave the workers down for good (test_deb_booted_systemd).
    assert not unit_values(unit, "Unit", "Requires")
    assert not unit_values(unit, "Unit", "BindsTo")
    service = dict(unit["Service"])
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["User"] == p.SYNAPSE_USER
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "3"
    assert service["SyslogIdentifier"] == "matrix-synapse-%i"
    assert service["ExecStart"].split() == [
        f"{p.SYNAPSE_VENV}/bin/python", "-m", "synapse.app.generic_worker",
        f"--config-path=/{p.HOMESERVER_YAML}",
        f"--config-path=/{p.CONF_D}/",
        f"--config-path={workers}/%i.yaml",
    ]
    # Enabled through the generator only: see the comment in the unit.
    assert "Install" not in unit


def test_target(unpacked: Path) -> None:
    unit = read_unit(unpacked, "matrix-synapse.target")
    assert unit_values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_main_drop_in(unpacked: Path, packaged_paths: ModuleType) -> None:
    unit = read_unit(unpacked, "matrix-synapse.service.d/matrix-synapse-workers.conf")
    target = packaged_paths.TARGET_UNIT
    assert unit_values(unit, "Unit", "PartOf") == [target]
    assert unit_values(unit, "Unit", "ReloadPropagatedFrom") == [target]
    assert unit_values(unit, "Unit", "Before") == [target]
    assert set(unit) == {"Unit"}, "a drop-in's [Install] is ignored by systemd; do not ship one"


def allowed_verify_lines() -> set[str]:
    """Complaints that are about this machine, not about the units."""
    if os.access(VENV_PYTHON, os.X_OK):
        return set()
    # Synapse's venv is not installed here; only the booted tests have it.
    return {f"matrix-synapse-worker@{name}.service: Command {VENV_PYTHON} is not executable: "
            "No such file or directory" for name in ("sync-1", "client-1")}


def test_systemd_analyze_verify(unpacked: Path, generator: Path, tmp_path: Path) -> None:
    """systemd's own loader accepts the units, the drop-in and the generated links.

    The units and a stand-in main unit are put in one directory, the
    generator writes its links there too (so the target's .wants/ sits next to
    it), and verify loads all of it as systemd would.
    """
    analyze = require_tool("systemd-analyze")
    units = tmp_path / "units"
    shutil.copytree(unpacked / UNIT_DIR, units)
    (units / "matrix-synapse.service").write_text(STANDIN_MAIN)
    root = tmp_path / "root"
    (root / "etc/matrix-synapse/workers").mkdir(parents=True)
    for name in ("sync-1", "client-1"):
        (root / f"etc/matrix-synapse/workers/{name}.yaml").write_text("worker_app: synapse.app.generic_worker\n")
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "lib/systemd/system/matrix-synapse.service").write_text(STANDIN_MAIN)
    subprocess.run([str(generator), str(units), str(tmp_path / "early"), str(tmp_path / "late")],
                   env=dict(os.environ, MSW_ROOT=str(root)), check=True)
    assert sorted(p.name for p in (units / "matrix-synapse.target.wants").iterdir()) == [
        "matrix-synapse-worker@client-1.service", "matrix-synapse-worker@sync-1.service",
        "matrix-synapse.service"]

    targets = ["matrix-synapse.target", "matrix-synapse.service",
               "matrix-synapse-worker@sync-1.service", "matrix-synapse-worker@client-1.service"]
    # --man=no: verify would run man(1), which a fresh machine may lack;
    # test_documentation_man_pages_are_shipped checks those references.
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0")
    done = subprocess.run([analyze, "verify", "--man=no", *(str(units / t) for t in targets)], env=env,
                          capture_output=True, text=True, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if line not in allowed_verify_lines()]
    assert not unexpected, "\n".join(lines)
    if not lines:
        assert done.returncode == 0


def test_documentation_man_pages_are_shipped(unpacked: Path) -> None:
    for unit in ("matrix-synapse-worker@.service", "matrix-synapse.target"):
        docs = " ".join(unit_values(read_unit(unpacked, unit), "Unit", "Documentation")).split()
        pages = [d.removeprefix("man:") for d in docs if d.startswith("man:")]
        assert pages, f"{unit} names no manual page"
        for page in pages:
            name, _, section = page.rstrip(")").partition("(")
            assert (unpacked / f"usr/share/man/man{section}/{name}.{section}.gz").is_file(), page


def test_verify_catches_a_broken_unit(unpacked: Path, tmp_path: Path) -> None:
    """The verify test above can fail: a misspelt directive is reported."""
    analyze = require_tool("systemd-analyze")
    units = tmp_path / "units"
    shutil.copytree(unpacked / UNIT_DIR, units)
    target = units / "matrix-synapse.target"
    target.write_text(target.read_text().replace("After=", "Aftre="))
    done = subprocess.run([analyze, "verify", "--man=no", str(target)], capture_output=True, text=True,
                          check=False)
    assert "Aftre" in done.stdout + done.stderr


def write_accounts(root: Path, groups: list[str]) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "matrix-synapse:x:990:990::/var/lib/matrix-synapse:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nmatrix-synapse:x:990:\n"
                                    + "".join(f"{g}:x:{991 + i}:\n" for i, g in enumerate(groups)))


def test_tmpfiles_creates_the_socket_directory(unpacked: Path, packaged_paths: ModuleType,
                                               tmp_path: Path) -> None:
    tmpfiles = require_tool("systemd-tmpfiles")
    p = packaged_paths
    conf = unpacked / "usr/lib/tmpfiles.d/matrix-synapse-workers.conf"
    write_accounts(tmp_path, [p.DEFAULT_SOCKET_GROUP])
    subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(conf)], check=True)
    made = tmp_path / str(p.SOCKET_DIR).lstrip("/")
    info = made.stat()
    assert made.is_dir()
    assert info.st_mode & 0o7777 == p.SOCKET_DIR_MODE
    assert (info.st_uid, info.st_gid) == (990, 991)


def test_tmpfiles_needs_the_group_first(unpacked: Path, tmp_path: Path) -> None:
    """Why debhelper's tmpfiles snippet is left out: before the group exists it fails."""
    tmpfiles = require_tool("systemd-tmpfiles")
    conf = unpacked / "usr/lib/tmpfiles.d/matrix-synapse-workers.conf"
    write_accounts(tmp_path, [])
    done = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(conf)], capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0
    assert "clubmatrix" in done.stderr
