"""The released .debs kept as test inputs (tests/releases/): intact, one per release the
changelog names, and older than the tree, which the upgrade tests install over each."""

from __future__ import annotations


from debian.changelog import Changelog

from support.debs import REPO, deb_version, kept_releases, version_newer

PACKAGE = "matrix-synapse-workers"
# A kept .deb is a small file in git; a big one means something went into it by mistake.
MAX_BYTES = 300_000


def changelog_versions() -> list[str]:
    with open(REPO / "debian/changelog", encoding="utf-8") as handle:
        return [str(block.version) for block in Changelog(handle)]


def test_every_kept_release_matches_its_checksum_and_is_ours():
    releases = kept_releases()  # checks SHA256SUMS
    assert releases
    for deb in releases:
        assert deb.name == f"{PACKAGE}_{deb_version(deb)}_all.deb"
        assert deb.stat().st_size < MAX_BYTES, deb


def test_every_released_version_of_the_changelog_is_kept():
    """Every entry below the top one is a release the upgrade tests must start from; the
    top one is either unreleased or the release this tree is (then it is kept too)."""
    kept = {deb_version(deb) for deb in kept_releases()}
    versions = changelog_versions()
    assert set(versions[1:]) <= kept, sorted(set(versions[1:]) - kept)
    assert kept <= set(versions), sorted(kept - set(versions))


def test_the_tree_is_not_older_than_any_release():
    top = changelog_versions()[0]
    for deb in kept_releases():
        assert not version_newer(deb_version(deb), top), (deb.name, top)
