"""Leaderboard records: a submission made from a finished run validates, and each crafted bad
submission is refused with one message naming the field or check, nothing written and no
code of the submitter's run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.cli import main
from benchmarks.config import resolve_config
from benchmarks.engine import Trainer
from benchmarks.evaluation import finalize_run
from benchmarks.io import sha256_file
from benchmarks.leaderboard import RecordError, make_record, validate_leaderboard, validate_record
from benchmarks.leaderboard.records import Submission, record_paths, safetensors_header
from benchmarks.protocol import protocol_of

TINY = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16], "depth": 1}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
}


def _cli(capsys, *args: str) -> tuple[int, str]:
    """`dynbench ARGS` in this process: its exit status and its output (stdout + stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def _record(weights: Path, entry_id: str = "tiny-digits") -> dict:
    protocol = protocol_of("digits")
    return {
        "schema_version": 1,
        "entry_id": entry_id,
        "title": "A tiny CNN on digits",
        "authors": ["A. Submitter"],
        "paper_url": None,
        "code_url": "https://example.org/code",
        "model": {"id": "digits_cnn", "kwargs": {"widths": [8, 16], "depth": 1}, "provider": "dynbench"},
        "weights": {"url": weights.name, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size, "format": "safetensors"},
        "protocol": {"id": protocol.id, "dataset": "digits", "options": {}, "split_sha256": dict(protocol.splits)},
        "reported": {"accuracy_val": 90.0, "accuracy_test": 89.5, "f1_test": None, "macs_mean": 12345.0,
                     "macs_controller_mean": 0.0, "params": 1000, "training_images": 3500, "selected_on": "val"},
        "evaluation": None,
        "status": {"state": "pending", "reasons": []},
        "dates": {"submitted": "2026-11-30", "evaluated": None},
        "dynbench": {"version": "0.1.0", "commit": None},
    }  # fmt: skip


def _entry(root: Path, entry_id: str = "tiny-digits", edit=None, weights_bytes: bytes | None = None) -> Path:
    """An entry folder with a (possibly edited) record and its weights; returns record.json."""
    folder = root / entry_id
    folder.mkdir(parents=True)
    weights = folder / "weights.safetensors"
    if weights_bytes is None:
        save_file({"conv.weight": torch.zeros(8, 1, 3, 3)}, str(weights))
    else:
        weights.write_bytes(weights_bytes)
    record = _record(weights, entry_id)
    if edit is not None:
        edit(record)
    path = folder / "record.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_a_valid_record_validates(tmp_path):
    record = validate_record(_entry(tmp_path))
    assert record.entry_id == "tiny-digits"
    assert record.weights == tmp_path / "tiny-digits" / "weights.safetensors"


def _set(path: str, value):
    def edit(record: dict) -> None:
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


_DELETE = object()
_FMNIST_SPLITS = dict(protocol_of("fashion-mnist").splits)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("weights.sha256", "0" * 64), "field 'weights.sha256': " + "0" * 64 + " but the file's sha256 is"),
        (_set("reported", _DELETE), "field '(the record)': 'reported' is a required property"),
        (_set("reported.accuracy_test", "89.5"), "field 'reported.accuracy_test': '89.5' is not of type 'number'"),
        (_set("weights.sha256", "not-a-hash"), "field 'weights.sha256': 'not-a-hash' does not match"),
        (_set("schema_version", 2), "field 'schema_version': 2 is not a schema version this dynbench reads (1)"),
        (_set("schema_version", _DELETE), "field 'schema_version': missing is not a schema version"),
        (_set("protocol.split_sha256", _FMNIST_SPLITS), "field 'protocol.split_sha256.test'"),
        (_set("protocol.id", "digits-8px-0000"), "field 'protocol.id': 'digits-8px-0000' but dataset 'digits'"),
        (_set("weights.url", "../outside.safetensors"), "field 'weights.url': '../outside.safetensors' escapes the record's folder"),
        (_set("weights.url", "/etc/passwd"), "field 'weights.url': '/etc/passwd' escapes the record's folder"),
        (_set("weights.url", "missing.safetensors"), "field 'weights.url': file 'missing.safetensors' does not exist"),
        (_set("weights.size_bytes", 7), "field 'weights.size_bytes': 7 but the file has"),
        (_set("weights.format", "pt"), "field 'weights.format': 'safetensors' was expected"),
        (_set("model.id", "resnet_nonexistent"), "field 'model.id': unknown model 'resnet_nonexistent'"),
        (_set("reported.selected_on", "test"), "field 'reported.selected_on': 'val' was expected"),
        (_set("entry_id", "Bad Id"), "field 'entry_id': 'Bad Id' does not match"),
        (_set("status.state", "accepted"), "field 'status.state': 'accepted' is not one of"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_record_is_refused_naming_its_field(tmp_path, edit, message):
    path = _entry(tmp_path, edit=edit)
    with pytest.raises(RecordError) as info:
        validate_record(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


class _RunsCode:
    """A pickle payload whose unpickling writes a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_renamed_safetensors_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"state_dict": _RunsCode(marker)})
    assert payload[:1] == b"\x80"
    path = _entry(tmp_path, weights_bytes=payload)
    with pytest.raises(RecordError, match="it looks like a pickle; dynbench never unpickles weights"):
        validate_record(path)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it would have left the marker
    assert marker.exists()


def test_a_torch_save_archive_renamed_safetensors_is_refused(tmp_path):
    buffer = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, buffer)
    path = _entry(tmp_path, weights_bytes=buffer.read_bytes())
    with pytest.raises(RecordError, match=r"it looks like a zip archive \(torch.save\)"):
        validate_record(path)


def test_a_truncated_safetensors_file_is_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(64)}, str(good))
    path = _entry(tmp_path, weights_bytes=good.read_bytes()[:-16])
    with pytest.raises(RecordError, match="tensor 'w' lies outside the file"):
        validate_record(path)
    assert safetensors_header(good)["w"]["shape"] == [64]


def test_weights_over_the_size_limit_are_refused_before_they_are_hashed(tmp_path, monkeypatch):
    path = _entry(tmp_path)
    import benchmarks.leaderboard.records as records

    monkeypatch.setattr(records, "sha256_file", lambda p: pytest.fail("hashed a file over the limit"))
    with pytest.raises(RecordError, match=r"over the limit of 100 \(--max-weights-mb\)"):
        validate_record(path, max_weights_bytes=100)


def test_a_duplicate_entry_id_is_refused(tmp_path):
    first = _entry(tmp_path, "tiny-digits")
    second = _entry(tmp_path, "tiny-digits-copy", edit=_set("entry_id", "tiny-digits"))
    with pytest.raises(RecordError, match=f"field 'entry_id': 'tiny-digits' is already the id of {first}"):
        validate_leaderboard(record_paths(tmp_path))
    assert second.is_file()


def test_submit_makes_a_record_from_a_finished_run_that_validates(tmp_path, capsys):
    trainer = Trainer(resolve_config(TINY), 0, runs_root=tmp_path / "runs", device="cpu", progress=False, log=lambda m: None)
    trainer.fit()
    finalize_run(trainer.run)
    entries = tmp_path / "entries"
    submit = ["leaderboard", "submit", str(trainer.run.path), "--id", "tiny-cnn", "--title", "Tiny CNN",
              "--author", "A. Submitter", "--entries", str(entries)]  # fmt: skip
    code, output = _cli(capsys, *submit)
    assert code == 0, output
    record = validate_record(entries / "tiny-cnn").data
    metrics = json.loads(trainer.run.metrics_file.read_text())
    assert record["reported"]["accuracy_test"] == pytest.approx(metrics["splits"]["test"]["accuracy"], abs=1e-4)
    assert record["weights"]["sha256"] == sha256_file(trainer.run.checkpoint_dir / "best.safetensors")
    assert record["status"] == {"state": "pending", "reasons": []}
    assert record["reported"]["training_images"] > 0

    code, output = _cli(capsys, *submit)
    assert code == 2
    assert "field 'entry_id': 'tiny-cnn' already exists" in output
    assert sorted(p.name for p in entries.iterdir()) == ["tiny-cnn"]  # no partial folder left

    code, output = _cli(capsys, "leaderboard", "validate", str(entries))
    assert code == 0 and "1 record(s) valid" in output


def test_submit_refuses_an_unfinished_run_and_a_bad_id_writing_nothing(tmp_path):
    entries = tmp_path / "entries"
    with pytest.raises(RecordError, match="not a finished run folder"):
        make_record(tmp_path, entries, Submission("x-run", "X run", ["A"]))
    with pytest.raises(RecordError, match="field 'entry_id': '../escape'"):
        make_record(tmp_path, entries, Submission("../escape", "X run", ["A"]))
    assert not entries.exists()


def test_validate_cli_exits_2_with_one_line(tmp_path, capsys):
    path = _entry(tmp_path, edit=_set("weights.sha256", "f" * 64))
    code, output = _cli(capsys, "leaderboard", "validate", str(path.parent))
    assert code == 2
    assert "field 'weights.sha256'" in output and len(output.strip().splitlines()) == 1
    code, output = _cli(capsys, "leaderboard", "validate", str(tmp_path / "nothing"))
    assert code == 2 and "no record.json under" in output


def test_the_schema_file_is_valid_json_schema():
    import jsonschema

    from benchmarks.leaderboard.records import _schema

    jsonschema.Draft202012Validator.check_schema(_schema(1))


def test_submit_from_a_model_id_and_a_weights_file(tmp_path, capsys):
    from benchmarks.registry import create_model

    torch.manual_seed(0)
    weights = tmp_path / "mine.safetensors"
    save_file(create_model("digits_cnn", num_classes=10, in_chans=1).state_dict(), str(weights))
    entries = tmp_path / "entries"

    def submit(entry_id: str, weights_file: Path, *numbers: str) -> tuple[int, str]:
        return _cli(capsys, "leaderboard", "submit", "--id", entry_id, "--title", "My CNN", "--author", "A. Submitter",
                    "--entries", str(entries), "--model", "digits_cnn", "--weights", str(weights_file),
                    "--dataset", "digits", *numbers)  # fmt: skip

    numbers = ("--accuracy-val", "95.1", "--accuracy-test", "94.7", "--macs", "378176", "--controller-macs", "0")
    code, output = submit("my-cnn", weights, *numbers)
    assert code == 0, output
    record = validate_record(entries / "my-cnn").data
    assert record["model"] == {"id": "digits_cnn", "kwargs": {"num_classes": 10, "in_chans": 1}, "provider": "dynbench"}
    assert record["reported"]["params"] > 0 and record["protocol"]["id"] == protocol_of("digits").id

    other = tmp_path / "other.safetensors"
    save_file({"not.a.key": torch.zeros(2)}, str(other))
    code, output = submit("other-cnn", other, *numbers)
    assert code == 2 and "the file's tensors do not fit model 'digits_cnn'" in output
    code, output = submit("third-cnn", weights)
    assert code == 2 and "reported numbers missing: accuracy_val, accuracy_test, macs_mean, macs_controller_mean" in output
    assert sorted(p.name for p in entries.iterdir()) == ["my-cnn"]
