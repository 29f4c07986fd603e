"""The manual pages (man/*.8, written by hand) describe every subcommand and option of
the command's parser, every worker type and preset, and render without a groff warning.

The parser is the truth: an option added to cli.py without its paragraph in
matrix-synapse-workers(8) fails here, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from matrix_synapse_workers.cli import build_parser
from matrix_synapse_workers.core import paths
from matrix_synapse_workers.core.catalog import PRESETS, ROLES
from matrix_synapse_workers.core.selection import AUTO

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "man"
COMMAND_PAGE = MAN / "matrix-synapse-workers.8"
GENERATOR_PAGE = MAN / "matrix-synapse-workers-generator.8"
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO")


def plain(page: Path) -> str:
    """The page's text with the troff escapes that matter for words undone."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\(aq", "'").replace("\\c", "")
    return text


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def documented_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string a user may type, except the ones argparse hides."""
    return [option for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings]


def section_text(text: str, name: str) -> str:
    start = text.index(f'.SH {name}\n') if f'.SH {name}\n' in text else text.index(f'.SH "{name}"\n')
    end = text.find("\n.SH ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_every_subcommand_has_its_paragraph_and_synopsis() -> None:
    text = plain(COMMAND_PAGE)
    commands = section_text(text, "COMMANDS")
    synopsis = section_text(text, "SYNOPSIS")
    for name in subcommands():
        assert re.search(rf"^\.(B|BI) \"?{re.escape(name)}\b", commands, re.M), f"COMMANDS lacks {name}"
        assert re.search(rf"^\.B {re.escape(name)}$", synopsis, re.M), f"SYNOPSIS lacks {name}"


def undescribed(page_text: str) -> list[str]:
    """The parser's options that are not the tag of a paragraph (.TP, then a line naming
    the option) in the page's OPTIONS."""
    options = section_text(page_text, "OPTIONS").splitlines()
    tags = [line for previous, line in zip(options, options[1:]) if previous == ".TP"]
    missing = []
    for name, sub in {"": build_parser(), **subcommands()}.items():
        for option in documented_options(sub):
            if not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", tag) for tag in tags):
                missing.append(f"{name or 'top level'}: {option}")
    return missing


def test_every_option_of_every_subcommand_is_described() -> None:
    missing = undescribed(plain(COMMAND_PAGE))
    assert not missing, f"matrix-synapse-workers(8) OPTIONS lacks: {missing}"


def test_an_option_without_its_paragraph_is_caught() -> None:
    """The check above can fail: the page without the --dry-run paragraph (the tag
    --dry-run only; --dry-run in other paragraphs' text does not count)."""
    text = plain(COMMAND_PAGE)
    assert ".TP\n.B --dry-run\n" in text
    assert undescribed(text.replace(".TP\n.B --dry-run\n", ".PP\n")) == [
        "apply: --dry-run", "deconfigure: --dry-run"]


def test_every_worker_type_and_preset_is_named() -> None:
    options = section_text(plain(COMMAND_PAGE), "OPTIONS")
    for name in [*ROLES, *PRESETS, AUTO]:
        assert re.search(rf"^\.BR? {re.escape(name)}\b", options, re.M), f"OPTIONS does not name {name}"


def test_the_pages_have_the_sections_an_admin_looks_for() -> None:
    for page in (COMMAND_PAGE, GENERATOR_PAGE):
        text = page.read_text(encoding="utf-8")
        for name in SECTIONS:
            if page == GENERATOR_PAGE and name == "OPTIONS":
                continue
            assert f".SH {name}\n" in text or f'.SH "{name}"\n' in text, f"{page.name} lacks {name}"
        assert re.search(r"^\.TH [A-Z-]+ 8 ", text, re.M), f"{page.name} is not in section 8"


def test_files_named_in_the_page_are_the_packages_paths() -> None:
    text = plain(COMMAND_PAGE)
    for path in (paths.SHARED_CONF, paths.REDIS_CONF_D, paths.NGINX_HTTP_CONF, paths.NGINX_SNIPPET,
                 paths.PROMETHEUS_TARGETS, paths.TMPFILES_OVERRIDE, paths.MAIN_SANDBOX_DROPIN,
                 paths.README_DEBIAN):
        assert f"/{path}" in text, f"{path} is not in matrix-synapse-workers(8)"


def test_the_packaging_installs_the_pages() -> None:
    listed = (REPO / "debian/matrix-synapse-workers.manpages").read_text().split()
    assert sorted(listed) == sorted(str(p.relative_to(REPO)) for p in MAN.glob("*.8"))
    assert "help2man" not in (REPO / "debian/control").read_text()
    assert "help2man" not in (REPO / "debian/rules").read_text()


@pytest.mark.parametrize("page", [COMMAND_PAGE, GENERATOR_PAGE], ids=lambda p: p.name)
def test_groff_renders_the_page_without_a_warning(page: Path) -> None:
    """What lintian runs (man --warnings), at its width; man-db comes with every Debian."""
    man = shutil.which("man")
    if man is None:
        if os.environ.get("CI") or os.environ.get("MSW_REQUIRE_PACKAGE"):
            pytest.fail("man (man-db) is not installed")
        pytest.skip("man (man-db) is not installed")
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    done = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
