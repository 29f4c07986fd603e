"""The pure floors (core/, render/) decide; they never reach the system edge.

A module there that imports the edge (system/, status/, debconf/, apply, cli),
a module of the standard library that talks to the system, or calls a file
or process function, fails this test: move the reading to system/ and hand
the result in as an argument.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "matrix-synapse-workers"
PURE = sorted(p for floor in ("core", "render") for p in (PACKAGE / floor).glob("*.py"))
#: Subpackages and modules of this package that act on or look at the system.
EDGE = {"system", "status", "debconf", "apply", "cli", "synapse_check"}
#: Standard-library modules that reach the system.
SYSTEM_MODULES = {"os", "subprocess", "socket", "shutil", "pwd", "grp", "glob", "tempfile",
                  "urllib.request", "http.client", "sys", "threading", "concurrent.futures"}
#: Calls that read or write files.
FILE_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "glob", "rglob",
              "exists", "is_file", "is_dir", "iterdir", "stat", "mkdir", "unlink"}


def imported(tree: ast.AST, module: Path) -> set[str]:
    """Every module the file imports, as a dotted name relative to the package or absolute."""
    floor = module.parent.name
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
                continue
            base = [floor] if node.level == 1 else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
            found |= {f"{target}.{alias.name}".lstrip(".") for alias in node.names}
    return found


@pytest.mark.parametrize("module", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_does_not_reach_the_system(module):
    tree = ast.parse(module.read_text(encoding="utf-8"))
    names = imported(tree, module)
    edge = sorted(n for n in names if n.split(".")[0] in EDGE)
    assert not edge, f"{module.name} imports the system edge: {edge}"
    system = sorted(n for n in names if any(n == m or n.startswith(f"{m}.") for m in SYSTEM_MODULES))
    assert not system, f"{module.name} imports modules that reach the system: {system}"
    calls = sorted({node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                    for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and ((isinstance(node.func, ast.Attribute) and node.func.attr in FILE_CALLS)
                         or (isinstance(node.func, ast.Name) and node.func.id in FILE_CALLS))})
    assert not calls, f"{module.name} reads or writes files: {calls}"


def test_the_check_sees_an_edge_import(tmp_path):
    """The test above can fail: a pure module importing system/ is caught."""
    bad = tmp_path / "core" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from ..system import netprobe\nfrom .plan import Plan\nimport os\n")
    names = imported(ast.parse(bad.read_text()), bad)
    assert "system.netprobe" in names and "os" in names and "core.plan" in names


def test_pure_floors_are_not_empty():
    assert len(PURE) >= 10


def layout_sections() -> str:
    """Every "## Layout" section: README's, and those of docs/*.md (a branch that adds
    modules names them in its own docs file until the layout text is merged)."""
    found = []
    for doc in [PACKAGE.parent / "README.md", *sorted((PACKAGE.parent / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
        if "## Layout" in text:
            start = text.index("## Layout")
            end = text.find("\n## ", start + 1)
            found.append(text[start:end if end > 0 else len(text)])
    return "\n".join(found)


def test_readme_layout_names_every_module():
    """README's Layout section matches the code: every module of the package is named there."""
    layout = layout_sections()
    missing = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.name != "__init__.py" and p.name not in layout)
    assert not missing, f"README's Layout does not name: {missing}"
    for floor in ("core/", "render/", "debconf/", "system/", "status/"):
        assert floor in layout
