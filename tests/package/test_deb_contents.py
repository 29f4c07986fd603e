"""What the .deb contains and declares."""

from __future__ import annotations

import gzip
import os
import re
import stat
import subprocess
from pathlib import Path
from types import ModuleType

from debian.copyright import Copyright
from debian.deb822 import Deb822, PkgRelation
from debian.debfile import DebFile

from package_helpers import DEBIAN_PYTHON, PACKAGE

UNIT_DIR = "usr/lib/systemd/system"
PY_DIR = "usr/lib/python3/dist-packages/matrix_synapse_workers"

EXPECTED_FILES = {
    f"{UNIT_DIR}/matrix-synapse-worker@.service",
    f"{UNIT_DIR}/matrix-synapse.target",
    f"{UNIT_DIR}/matrix-synapse.service.d/matrix-synapse-workers.conf",
    "usr/lib/tmpfiles.d/matrix-synapse-workers.conf",
    "usr/lib/systemd/system-generators/matrix-synapse-workers-generator",
    "usr/bin/matrix-synapse-workers",
    "usr/share/man/man8/matrix-synapse-workers.8.gz",
    "usr/share/man/man8/matrix-synapse-workers-generator.8.gz",
    "usr/share/doc/matrix-synapse-workers/copyright",
    "usr/share/doc/matrix-synapse-workers/changelog.gz",
    "usr/share/doc/matrix-synapse-workers/README.Debian.gz",
    "usr/share/doc/matrix-synapse-workers/NEWS.Debian.gz",
    f"{PY_DIR}/__init__.py",
    f"{PY_DIR}/core/paths.py",
    f"{PY_DIR}/cli.py",
    f"{PY_DIR}/system/__init__.py",
}

REPO_PACKAGE = Path(__file__).resolve().parents[2] / "matrix-synapse-workers"
REPO_MAN = REPO_PACKAGE.parent / "man"
REPO_EXAMPLES = REPO_PACKAGE.parent / "examples"


def members(deb: DebFile) -> dict[str, int]:
    """Path (without ./) -> mode of every file, directory and link in data.tar."""
    tar = deb.data.tgz()
    return {info.name.removeprefix("./"): info.mode | (stat.S_IFDIR if info.isdir() else 0)
            for info in tar.getmembers() if info.name not in (".", "./")}


def control(deb: DebFile) -> Deb822:
    return Deb822(deb.control.get_content("control", encoding="utf-8"))


def test_ships_the_expected_files(deb: DebFile) -> None:
    missing = EXPECTED_FILES - set(members(deb))
    assert not missing, f"missing from the .deb: {sorted(missing)}"


def test_ships_every_module_and_template_of_the_tree(deb: DebFile) -> None:
    """setup.cfg's package list and package data cover the whole source package."""
    shipped = set(members(deb))
    for source in REPO_PACKAGE.rglob("*"):
        relative = source.relative_to(REPO_PACKAGE)
        if "__pycache__" in relative.parts or not source.is_file():
            continue
        if source.suffix in (".py", ".j2"):
            assert f"{PY_DIR}/{relative}" in shipped, \
                f"{relative} is not in the .deb (if MSW_DEB is set: was it built from this tree?)"


def test_nothing_under_slash_lib_or_run(deb: DebFile) -> None:
    """Units go to /usr/lib/systemd/system from the first release on, never /lib; /run is tmpfs."""
    wrong = [name for name in members(deb) if name.split("/")[0] in ("lib", "run", "var", "etc")]
    assert not wrong, wrong


def test_modes(deb: DebFile) -> None:
    modes = members(deb)
    for name in ("usr/bin/matrix-synapse-workers",
                 "usr/lib/systemd/system-generators/matrix-synapse-workers-generator"):
        assert stat.S_IMODE(modes[name]) == 0o755, name
    for name in EXPECTED_FILES - {"usr/bin/matrix-synapse-workers",
                                  "usr/lib/systemd/system-generators/matrix-synapse-workers-generator"}:
        assert stat.S_IMODE(modes[name]) == 0o644, name


def test_control_fields(deb: DebFile) -> None:
    fields = control(deb)
    assert fields["Package"] == PACKAGE
    assert fields["Architecture"] == "all"
    assert fields["Section"] == "net"
    depends = PkgRelation.parse_relations(fields["Depends"])
    as_text = [" | ".join(f"{alt['name']} ({alt['version'][0]} {alt['version'][1]})" if alt["version"]
                          else alt["name"] for alt in group) for group in depends]
    # Matrix.org's package only: Debian's own matrix-synapse cannot run workers (no
    # txredisapi in Debian), so no alternative may let apt accept it
    # (tests/booted/test_booted_debian_synapse.py proves apt refuses it).
    assert [group for group in as_text if "synapse" in group] == ["matrix-synapse-py3 (>= 1.89.0)"]
    for name in ("python3", "python3-yaml", "python3-jinja2", "python3-redis", "python3-debconf",
                 "adduser", "redis-server | valkey-server"):
        assert name in as_text, f"Depends lacks {name}: {fields['Depends']}"
    # python-debian is the tests' library: the package itself never imports it.
    assert "python3-debian" not in as_text
    # Any one web server the routes are rendered for; apt picks nginx when none is installed.
    recommends = [[alt["name"] for alt in group]
                  for group in PkgRelation.parse_relations(fields.get("Recommends", ""))]
    assert ["nginx", "apache2", "caddy", "haproxy"] in recommends
    assert not [group for group in recommends if group != ["nginx", "apache2", "caddy", "haproxy"]
                and {"nginx", "apache2", "caddy", "haproxy"} & set(group)]


def test_version_agrees_with_python_package(deb: DebFile, unpacked: Path) -> None:
    text = (unpacked / PY_DIR / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    assert match, "no __version__ in __init__.py"
    assert control(deb)["Version"] == match.group(1)


def test_copyright_is_machine_readable_and_dfsg(unpacked: Path) -> None:
    text = (unpacked / "usr/share/doc/matrix-synapse-workers/copyright").read_text()
    parsed = Copyright(text.splitlines(keepends=True))
    paragraph = parsed.find_files_paragraph("matrix-synapse-workers/cli.py")
    assert paragraph is not None
    assert paragraph.license.synopsis == "Expat"
    assert "matrix-synapse-workers developers" in paragraph.copyright
    assert parsed.header.format.startswith("https://www.debian.org/doc/packaging-manuals/copyright-format/1.0")
    texts = [p.license.text for p in parsed.all_license_paragraphs() if p.license.synopsis == "Expat"]
    assert texts and "Permission is hereby granted, free of charge" in texts[0]


def test_command_runs_from_the_package(unpacked: Path, deb: DebFile) -> None:
    """The installed console script finds its module and metadata."""
    env = dict(os.environ, PYTHONPATH=str(unpacked / "usr/lib/python3/dist-packages"))
    script = unpacked / "usr/bin/matrix-synapse-workers"
    assert script.read_text().startswith("#!/usr/bin/python3\n")
    done = subprocess.run([DEBIAN_PYTHON, str(script), "--version"], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert control(deb)["Version"] in done.stdout + done.stderr


def test_manual_pages_are_the_hand_written_ones(unpacked: Path) -> None:
    for page in REPO_MAN.glob("*.8"):
        shipped = unpacked / f"usr/share/man/man8/{page.name}.gz"
        assert gzip.decompress(shipped.read_bytes()).decode() == page.read_text(), page.name
    assert not (unpacked / "usr/share/man/man1").exists(), "a section 1 page is left over"


def test_docs_and_examples_are_installed(unpacked: Path, packaged_paths: ModuleType) -> None:
    """Everything the package's advice points at is installed, examples uncompressed."""
    assert (unpacked / packaged_paths.README_DEBIAN).is_file()
    doc = unpacked / "usr/share/doc/matrix-synapse-workers"
    for example in REPO_EXAMPLES.iterdir():
        assert (doc / "examples" / example.name).read_text() == example.read_text(), example.name
    readme = gzip.decompress((doc / "README.Debian.gz").read_bytes()).decode()
    for name in (f.name for f in REPO_EXAMPLES.iterdir()):
        if name.startswith("nginx-vhost-"):
            assert name in readme, f"README.Debian does not name {name}"


def test_tmpfiles_line_matches_paths(unpacked: Path, packaged_paths: ModuleType) -> None:
    lines = [line.split() for line in
             (unpacked / "usr/lib/tmpfiles.d/matrix-synapse-workers.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    p = packaged_paths
    assert lines == [["d", str(p.SOCKET_DIR), f"{p.SOCKET_DIR_MODE:04o}", p.SYNAPSE_USER,
                      p.DEFAULT_SOCKET_GROUP, "-"]]


def test_debhelper_never_starts_or_restarts_synapse(deb: DebFile) -> None:
    """debhelper's snippets enable the target but leave starting and restarting to the postinst.

    Restarting matrix-synapse.target restarts main and every worker, which an
    upgrade of this package must not do unasked.  Only the blocks debhelper
    generated are looked at: the postinst's own code may restart what it must.
    """
    generated = []
    for script in ("preinst", "postinst", "prerm", "postrm"):
        if not deb.control.has_file(script):
            continue
        text = deb.control.get_content(script, encoding="utf-8")
        generated += re.findall(r"# Automatically added by dh_\S+\n(.*?)# End automatically added section",
                                text, re.S)
    joined = "\n".join(generated)
    assert "deb-systemd-helper enable 'matrix-synapse.target'" in joined
    assert not re.search(r"deb-systemd-invoke\s+(start|restart|try-restart|stop)", joined), joined
    assert "systemd-tmpfiles" not in joined, "the postinst creates the socket directory after the group"
