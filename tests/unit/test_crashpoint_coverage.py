"""Every change the package makes to the file system is a kill point.

The crash tests (tests/chroot/test_crash_consistency.py, tests/booted/test_booted_crash.py)
can kill an apply only where ``crashpoint.done`` is called.  A write without one is a state
no test ever kills in.  This reads the package's source: each call that changes the file
system (``os.replace``, ``Path.unlink``, ``shutil.rmtree``, ``open(..., "w")``...) must be
followed by a ``crashpoint.done`` in the same function, inside the same loop, before any
other such call.  The exceptions are listed below, each with its reason: the steps of a
write to a temporary file (its rename is the kill point), the clean-up of temporaries, and
the staging directory of Synapse's check.  A new write, or a new exception, fails here
until it is instrumented or listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "matrix-synapse-workers"

OS_CALLS = {"replace", "rename", "renames", "unlink", "remove", "rmdir", "removedirs", "mkdir", "makedirs",
            "chmod", "chown", "lchown", "fchmod", "fchown", "symlink", "link", "write", "truncate"}
SHUTIL_CALLS = {"rmtree", "move", "copy", "copy2", "copyfile", "copytree", "chown", "copymode", "copystat"}
PATH_CALLS = {"unlink", "rmdir", "mkdir", "write_text", "write_bytes", "chmod", "symlink_to", "rename",
              "touch", "hardlink_to", "lchmod"}

# (file, function, call): why it needs no kill point of its own.
NOT_KILL_POINTS = {
    # Synapse's check runs on copies in a temporary directory of its own.
    ("apply.py", "validate_with_synapse", "shutil.copy2"): "the check's temporary directory",
    ("apply.py", "validate_with_synapse", ".mkdir"): "the check's temporary directory",
    ("apply.py", "validate_with_synapse", ".write_text"): "the check's temporary directory",
    ("apply.py", "validate_with_synapse", "os.chown"): "the check's temporary directory",
    # The steps of writing a temporary file; its rename into place is the kill point.
    ("system/files.py", "_stage_content", "os.fchmod"): "the temporary file, before its rename",
    ("system/files.py", "_stage_content", "os.fchown"): "the temporary file, before its rename",
    ("system/files.py", "_stage_content", ".unlink"): "the temporary file, on a failure to write it",
    ("system/files.py", "_commit_or_discard", ".unlink"): "the temporary file, on a failed rename",
    ("system/files.py", "discard", ".unlink"): "temporary files never renamed into place",
    ("system/secrets.py", "ensure_generated", "os.write"): "the temporary file, before its rename",
    ("system/secrets.py", "ensure_generated", "os.fchown"): "the temporary file, before its rename",
    ("system/secrets.py", "ensure_generated", "os.fchmod"): "the temporary file, before its rename",
    ("system/secrets.py", "ensure_generated", ".unlink"): "a temporary file a killed run left",
    ("system/secrets.py", "mark_worker_host", ".write_text"): "the temporary file, before its rename",
    ("system/applied.py", "_replace", "open-write"): "the temporary file, before its rename",
    ("system/nginx.py", "_restore", ".write_bytes"): "the temporary file, before its rename",
    ("system/nginx.py", "_restore", "os.chmod"): "the temporary file, before its rename",
    # Directories made for a file written next: the file's rename is the kill point, and an
    # empty directory of ours is what every later run expects to find or make.
    ("system/files.py", "stage", ".mkdir"): "the parent of a file written next",
    ("system/secrets.py", "mark_worker_host", ".mkdir"): "the parent of a file written next",
    ("system/applied.py", "_replace", ".mkdir"): "the parent of a file written next",
    ("apply.py", "_accounts_and_overrides", ".mkdir"): "the parent of a file written next",
    ("apply.py", "_write_made_record", ".mkdir"): "the parent of a file written next",
    ("system/takeover.py", "_record", ".mkdir"): "the parent of a file written next",
    ("system/takeover.py", "_record", "open-write"): "the temporary file, before its rename",
    ("system/takeover.py", "retire", ".mkdir"): "the parent of a file moved there next",
    ("apply.py", "_ensure_writable_paths", "os.chown"): "an empty recorded media store's owner and "
                                                       "mode: a run killed before its kill point "
                                                       "leaves it empty and recorded, and the next "
                                                       "run sets both again",
    ("apply.py", "_ensure_writable_paths", ".mkdir"): "the parent of a file written next (its "
                                                      "second mkdir, the media store, is one)",
    # nginx's own temporary directories, which 'nginx -t' makes and the check takes away again:
    # not ours, and a run killed among these removals leaves empty directories that nginx
    # makes anyway when it starts; the next run cannot tell them from nginx's (the chroot crash
    # test killed there: only these directories differed).
    ("system/files.py", "removing_new_empty_directories", ".rmdir"): "nginx's directories, not ours",
    # The counter of kill points itself.
    ("system/crashpoint.py", "done", "open-write"): "the action log",
}


def mutation(call: ast.Call) -> str | None:
    """The name of a call that changes the file system, or None."""
    func = call.func
    if isinstance(func, ast.Attribute):
        base = func.value
        if isinstance(base, ast.Name) and base.id == "os":
            return f"os.{func.attr}" if func.attr in OS_CALLS else None
        if isinstance(base, ast.Name) and base.id == "shutil":
            return f"shutil.{func.attr}" if func.attr in SHUTIL_CALLS else None
        if func.attr in PATH_CALLS:
            return f".{func.attr}"
        if func.attr == "replace" and len(call.args) == 1:  # Path.replace; str.replace takes two
            return ".replace"
    if isinstance(func, ast.Name) and func.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
            return "open-write"
    return None


def is_kill_point(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr == "done"
            and isinstance(func.value, ast.Name) and func.value.id == "crashpoint")


def calls_in(function: ast.AST):
    """(position, call, innermost loop) of every call in ``function``, nested functions apart."""
    found = []

    def visit(node: ast.AST, loop: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            inner = child if isinstance(child, (ast.For, ast.While, ast.comprehension)) else loop
            if isinstance(child, ast.Call):
                found.append(((child.lineno, child.col_offset), child, loop))
            visit(child, inner)

    visit(function, None)
    return sorted(found, key=lambda item: item[0])


def uninstrumented(source: str, name: str) -> list[str]:
    """Each change in ``source`` (a file of the package called ``name``) without its kill point."""
    missing = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        calls = [(pos, call, loop, mutation(call)) for pos, call, loop in calls_in(function)]
        changes = [(pos, call, loop, kind) for pos, call, loop, kind in calls
                   if kind and (name, function.name, kind) not in NOT_KILL_POINTS]
        for index, (pos, call, loop, kind) in enumerate(changes):
            following = changes[index + 1][0] if index + 1 < len(changes) else (10**9, 0)
            if not any(pos < p < following and is_kill_point(c) and l is loop for p, c, l, _ in calls):
                missing.append(f"{name}:{pos[0]}: {kind} in {function.name}()")
    return missing


def package_files() -> list[tuple[str, str]]:
    # synapse_check.py runs inside Synapse's interpreter, on the check's own copies.
    return [(str(p.relative_to(PACKAGE)), p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))
            if p.name != "synapse_check.py"]


def test_every_change_to_the_file_system_is_a_kill_point():
    missing = [line for name, source in package_files() for line in uninstrumented(source, name)]
    assert missing == [], "changes no crash test can kill after:\n" + "\n".join(missing)


def test_every_listed_exception_is_still_in_the_code():
    """A stale entry would excuse a future write of the same name."""
    present = set()
    for name, source in package_files():
        for function in ast.walk(ast.parse(source)):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                present |= {(name, function.name, mutation(c)) for _, c, _ in calls_in(function) if mutation(c)}
    assert set(NOT_KILL_POINTS) - present == set()


@pytest.mark.parametrize("body, found", [
    ("    os.replace(a, b)\n    crashpoint.done('x')\n", []),
    ("    os.replace(a, b)\n", ["f.py:2: os.replace in f()"]),
    ("    p.unlink()\n    q.unlink()\n    crashpoint.done('x')\n", ["f.py:2: .unlink in f()"]),
    ("    for p in ps:\n        p.unlink()\n    crashpoint.done('x')\n", ["f.py:3: .unlink in f()"]),
    ("    for p in ps:\n        p.unlink()\n        crashpoint.done('x')\n", []),
    ("    with open(p, 'w') as h:\n        h.write('x')\n", ["f.py:2: open-write in f()"]),
    ("    text.replace('a', 'b')\n", []),
    ("    shutil.rmtree(d)\n    if x:\n        crashpoint.done('x')\n", []),
])
def test_the_check_finds_a_write_without_its_kill_point(body, found):
    assert uninstrumented(f"def f():\n{body}", "f.py") == found


# Programs run for their effect (systemctl, adduser, dpkg-statoverride...) go through
# system/run.py's run(), whose every uncaptured call is a kill point.  Elsewhere only programs
# that change nothing run directly.
DIRECT_PROGRAMS = {
    "apply.py": "Synapse's config check, on a temporary copy",
    "debconf/maintscript.py": "re-executes the maintainer script under debconf's frontend (exec, not a change)",
    "status/clients.py": "status asks (ss, systemctl show, systemd-analyze, debconf), never changes",
    "status/probe.py": "status asks PostgreSQL's connection limit, never changes",
    "system/run.py": "run() itself, which calls crashpoint.done after a program run for its effect",
    "system/nginx.py": "nginx -T, which only prints the configuration nginx loads (status's vhost check)",
    "system/webservers.py": "apache2ctl -t / caddy validate / haproxy -c, which only check",
    "system/synapseversion.py": "dpkg-query, which only reads",
}


def test_programs_that_change_the_system_run_through_the_kill_point():
    direct = set()
    for name, source in package_files():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id in ("subprocess", "os") and \
                    node.func.attr in ("run", "Popen", "call", "check_call", "check_output", "system",
                                       "execv", "execvp", "spawnv"):
                direct.add(name)
    assert direct == set(DIRECT_PROGRAMS)


@pytest.mark.parametrize("total, count", [(68, 8), (57, 8), (29, 8), (5, 8), (52, 6)])
def test_the_rotating_sample_kills_after_every_action_within_a_few_runs(total, count):
    from support.crashpoints import sample
    stride = -(-total // min(total, count))
    turns = [sample(total, count, turn=t) for t in range(stride)]
    assert sorted(p for chosen in turns for p in chosen) == list(range(1, total + 1))
    assert all(len(chosen) <= count + 1 for chosen in turns)
