"""status for monitoring systems: the JSON schema, the plugin line and exit codes, the textfile."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from matrix_synapse_workers import status
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.status import probe as statusprobe
from matrix_synapse_workers.status.model import UnitState
from test_status import healthy

#: Where the ``status --json`` schema is documented for developers (the manual page has the keys too).
DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"
STOPPED = "matrix-synapse-worker@sync-2.service"


def degraded():
    facts = healthy()
    return replace(facts, units=dict(facts.units, **{STOPPED: UnitState("inactive", "dead")}))


def broken():
    facts = healthy()
    return replace(facts, units=dict(facts.units, **{"matrix-synapse.service": UnitState("failed")}))


def documented_schema() -> dict[str, str]:
    """The key -> type table of docs/design.md's `status --json` schema."""
    text = DESIGN.read_text(encoding="utf-8")
    table = text.split("| key | type | meaning |", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| `([a-z_\[\].]+)` \| ([a-z ]+) \|", table, re.M))


def json_type(value: object) -> str:
    return {str: "string", int: "integer", float: "number", list: "array", type(None): "null"}[type(value)]


def test_json_schema_is_the_one_the_docs_document():
    """Pinned: changing a key or a type here is a new schema_version, and docs/design.md says so."""
    data = json.loads(json.dumps(status.as_json(status.evaluate(degraded()), 0.25)))
    documented = documented_schema()
    assert data["schema_version"] == 2 == status.report.JSON_SCHEMA_VERSION
    assert set(data) == {k for k in documented if "." not in k}
    rows = data["checks"]
    assert rows and all(set(row) == {k.split(".", 1)[1] for k in documented if k.startswith("checks[].")}
                        for row in rows)
    for key, value in data.items():
        if key != "seconds":
            assert json_type(value) in documented[key], (key, value)
    assert isinstance(data["seconds"], (int, float))
    for row in rows:
        for key, value in row.items():
            assert json_type(value) in documented[f"checks[].{key}"], (key, value)
    assert {row["status"] for row in rows} <= {"ok", "info", "warn", "fail"}
    assert (data["status"], data["exit_code"]) == ("degraded", 4)


@pytest.fixture
def probed(monkeypatch):
    """status with the probe answering from recorded facts."""
    found = {"facts": healthy()}
    monkeypatch.setattr(statusprobe, "gather", lambda *a, **k: found["facts"])
    return found


@pytest.mark.parametrize("facts,code,state", [(healthy, 0, "OK"), (degraded, 1, "WARNING"),
                                              (broken, 2, "CRITICAL")])
def test_check_is_one_line_with_the_plugin_exit_code(probed, capsys, facts, code, state):
    probed["facts"] = facts()
    assert main(["status", "--check"]) == code
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"SYNAPSE WORKERS {state}: ")
    text, perfdata = out.rstrip("\n").split(" | ")
    assert re.fullmatch(r"checks=\d+;;;0 warnings=\d+;;;0 failures=\d+;;;0 time=[0-9.]+s;;;0", perfdata)
    if code == 1:
        assert "process sync-2" in text
    if code == 2:
        assert "process main: matrix-synapse.service failed" in text


def test_check_says_unknown_when_status_cannot_look_or_the_arguments_are_bad(monkeypatch, capsys):
    def fails(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/etc/matrix-synapse/conf.d")

    monkeypatch.setattr(statusprobe, "gather", fails)
    assert main(["status", "--check"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("SYNAPSE WORKERS UNKNOWN: status could not look: ") and out.count("\n") == 1
    assert main(["status", "--check", "--no-such-option"]) == 3
    with pytest.raises(SystemExit) as exc:  # without --check argparse's own 2 stays
        main(["status", "--no-such-option"])
    assert exc.value.code == 2


def parse_textfile(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of what node_exporter's textfile collector accepts from us."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind == "gauge" and name not in typed
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        match = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? ([0-9.]+)', line)
        assert match, line
        labels = tuple(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        key = (match[1], labels)
        assert match[1] in typed and key not in samples, line
        samples[key] = float(match[3])
    return samples


def test_prometheus_one_gauge_per_check_and_the_verdict(probed, capsys):
    probed["facts"] = degraded()
    rows = status.evaluate(degraded())
    assert main(["status", "--prometheus"]) == 0
    samples = parse_textfile(capsys.readouterr().out)
    checks = {dict(labels)["subject"] + "/" + dict(labels)["check"]: value
              for (name, labels), value in samples.items() if name == "matrix_synapse_workers_check"}
    assert len(checks) == len({(r.check, r.subject) for r in rows})
    assert checks["sync-2/process"] == 1 and checks["main/process"] == 0
    assert samples[("matrix_synapse_workers_status", ())] == 1


def test_prometheus_writes_the_file_atomically_into_a_directory(probed, tmp_path, monkeypatch):
    textdir = tmp_path / "node-exporter"
    textdir.mkdir()
    (textdir / "matrix-synapse-workers.prom").write_text("old\n")
    renamed = []
    original = os.replace

    def spy(src, dst):
        renamed.append((Path(src).name, Path(dst).name, Path(src).read_text()))
        return original(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert main(["status", "--prometheus", str(textdir)]) == 0
    target = textdir / "matrix-synapse-workers.prom"
    assert [name for name in os.listdir(textdir)] == [target.name]
    (src, dst, content), = renamed
    assert src.startswith(".") and not src.endswith(".prom") and dst == target.name
    assert content == target.read_text() and "matrix_synapse_workers_status 0" in content
    assert target.stat().st_mode & 0o777 == 0o644


def test_prometheus_to_a_missing_directory_is_one_error(probed, tmp_path, capsys):
    assert main(["status", "--prometheus", str(tmp_path / "nowhere" / "x.prom")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot write the textfile ") and "nowhere" in err and err.count("\n") == 1


def test_textfile_escapes_label_values():
    text = status.as_prometheus([status.Row("nginx", 'a "quoted"\\path\nx', status.WARN, "")], 0.1)
    (key, value), = [(k, v) for k, v in parse_textfile(text).items() if k[0].endswith("_check")]
    assert dict(key[1])["subject"] == 'a \\"quoted\\"\\\\path\\nx' and value == 1
