"""Each release has its debian/changelog entry, and the package reports that version."""

from pathlib import Path

from debian.changelog import Changelog

from matrix_synapse_workers import __version__

REPO = Path(__file__).resolve().parents[2]


def test_top_changelog_entry_is_the_version_the_package_reports():
    with open(REPO / "debian" / "changelog", encoding="utf-8") as handle:
        top = Changelog(handle)[0]
    # A native package: the whole Debian version is the upstream one.
    assert str(top.version) == __version__, (
        f"debian/changelog's top entry is {top.version} but the package reports {__version__}: "
        "a release changes both (matrix-synapse-workers/__init__.py)")
    assert top.distributions in ("unstable", "UNRELEASED")
    assert any(line.strip().startswith("*") for line in top.changes())
