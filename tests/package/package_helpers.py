"""Helpers shared by the tests of the built .deb (a name no other test directory uses)."""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGE = "matrix-synapse-workers"
# Debian's interpreter, the one the package runs under.
DEBIAN_PYTHON = "/usr/bin/python3"


def require_tool(name: str) -> str:
    """Path of the program ``name``; skip (fail under CI) when it is missing."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed"
    for flag in ("CI", "MSW_REQUIRE_PACKAGE"):
        if os.environ.get(flag):
            pytest.fail(f"{message} ({flag} is set: a missing tool is a failure)")
    pytest.skip(message)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]}.

    Enough of systemd.syntax(7) for our own files: comments, sections,
    repeated keys and backslash continuation lines.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.append((key.strip(), " ".join(value.split())))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for k, value in unit.get(section, []) if k == key]
