"""`dynbench check record|verify` on bundled experiments: exit 0 / 1 / 2, JUnit XML, and bad
golden files refused with one message and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import main


def _run(args: list[str]) -> int:
    """Exit status of `dynbench ARGS` run in-process (output stays captured for the test)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    goldens = tmp_path_factory.mktemp("goldens")
    assert _run(["check", "record", "quick/digits_cnn", "lcnet/digits_resnet20_lc", "--goldens", str(goldens)]) == 0
    return goldens


def test_record_then_verify_holds_and_writes_junit(recorded, tmp_path, capsys):
    names = sorted(p.name for p in recorded.iterdir())
    assert "digits_cnn.json" in names and "digits_resnet20_lc.safetensors" in names
    report = tmp_path / "goldens.xml"
    assert _run(["check", "verify", "--goldens", str(recorded), "--junit-xml", str(report)]) == 0
    assert "2 golden(s) hold" in capsys.readouterr().out
    assert 'tests="2"' in report.read_text() and 'failures="0"' in report.read_text()


def test_verify_fails_with_a_diff_when_a_number_moved(recorded, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in recorded.iterdir():
        (moved / path.name).write_bytes(path.read_bytes())
    doc = json.loads((moved / "digits_cnn.json").read_text())
    doc["engines"]["sparse"]["macs_executed"][3] += 1
    (moved / "digits_cnn.json").write_text(json.dumps(doc))
    assert _run(["check", "verify", "quick/digits_cnn", "--goldens", str(moved)]) == 1
    err = capsys.readouterr().err
    assert "digits_cnn" in err and "sparse sample 3 macs_executed" in err and "exact given the decisions" in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: {**d, "schema": 2}, "has schema version 2; this dynbench reads version 1"),
        (lambda d: "{ this is not json", "is not valid JSON"),
        (lambda d: {**d, "kind": "something else"}, "is not a dynbench inference golden"),
    ],
)
def test_bad_golden_files_exit_2_and_write_nothing(recorded, tmp_path, capsys, edit, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((recorded / "digits_cnn.json").read_text())
    edited = edit(doc)
    (bad / "digits_cnn.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    report = tmp_path / "report.xml"
    before = sorted(tmp_path.rglob("*"))
    assert _run(["check", "verify", "--goldens", str(bad), "--junit-xml", str(report)]) == 2
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_record_refuses_bad_input_before_writing(tmp_path, capsys):
    goldens = tmp_path / "g"
    assert _run(["check", "record", "quick/digits_cnn", "no/such_config", "--goldens", str(goldens)]) == 2
    assert "unknown config 'no/such_config'" in capsys.readouterr().err
    assert _run(["check", "record", "x", "--config-dir", str(tmp_path / "missing"), "--goldens", str(goldens)]) == 2
    assert "--config-dir" in capsys.readouterr().err
    assert not goldens.exists()


def test_a_golden_naming_a_file_outside_its_folder_is_refused(recorded, tmp_path, capsys):
    bad = tmp_path / "escape"
    bad.mkdir()
    doc = json.loads((recorded / "digits_cnn.json").read_text())
    doc["weights"]["file"] = "../../../etc/passwd"
    (bad / "digits_cnn.json").write_text(json.dumps(doc))
    (bad / "digits_cnn.inputs.safetensors").write_bytes((recorded / "digits_cnn.inputs.safetensors").read_bytes())
    assert _run(["check", "verify", "--goldens", str(bad)]) == 2
    assert "is outside the goldens folder" in capsys.readouterr().err
