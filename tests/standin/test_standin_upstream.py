"""The stand-in against Matrix.org's own packaging: the same facts, or a listed difference.

tests/standin/upstream-debian/facts.json holds the facts of element-hq/synapse's debian/
folder at a dated commit (read by packaging_facts.py, which reads the stand-in's files the
same way).  A new setting upstream (a ``RuntimeDirectory=`` in the unit, which would remove
the socket directory whenever main stops, say), a changed question or a changed postinst
step shows here as a difference, and fails until the stand-in follows it or the difference
is listed in DIFFERENCES with its reason (and in tests/standin/README.md).  Reading files
only: no root, no network.
"""

from __future__ import annotations

import json

import pytest

from packaging_facts import UPSTREAM, standin_facts

# (fact path): reason the stand-in differs.  Empty: every compared fact agrees.  The
# differences that are not among these facts (the venv's extras, the Perl helper, comments
# and question texts, libpq5, no interpreter triggers) are listed in the README.
DIFFERENCES: dict[str, str] = {}


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """{"unit/Service/Type": ["notify"], ...}: one entry per leaf, so a difference names its place."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}/{key}" if prefix else key))
        return out
    return {prefix: value}


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads(UPSTREAM.read_text(encoding="utf-8"))


def test_the_upstream_extract_says_where_and_when_it_comes_from(upstream):
    assert len(upstream["commit"]) == 40 and upstream["date"][:2] == "20"
    assert "element-hq/synapse" in upstream["source"] and "license" in upstream


def test_the_standin_has_every_fact_of_matrix_orgs_packaging_or_a_listed_difference(upstream):
    theirs, ours = flatten(upstream["facts"]), flatten(standin_facts())
    differ = {path: (theirs.get(path), ours.get(path)) for path in sorted(set(theirs) | set(ours))
              if theirs.get(path) != ours.get(path)}
    unlisted = {path: values for path, values in differ.items() if path not in DIFFERENCES}
    assert unlisted == {}, ("the stand-in differs from Matrix.org's packaging at "
                            f"{upstream['commit'][:12]} ({upstream['date']}): (upstream, stand-in) {unlisted}")
    assert set(DIFFERENCES) <= set(differ), "listed differences that are gone: " + \
        ", ".join(sorted(set(DIFFERENCES) - set(differ)))


@pytest.mark.parametrize("setting", ["RuntimeDirectory=/run/matrix-synapse", "RestartSec=5"])
def test_a_change_upstream_would_be_caught(upstream, setting):
    """The comparison is not blind: one more or one changed unit setting upstream differs."""
    key, _, value = setting.partition("=")
    changed = json.loads(json.dumps(upstream["facts"]))
    changed["unit"]["Service"][key] = [value]
    assert flatten(changed) != flatten(standin_facts())
