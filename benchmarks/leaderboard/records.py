"""Leaderboard records: one JSON file per entry, validated against a versioned JSON Schema.

    results/leaderboard/entries/<entry_id>/record.json
    results/leaderboard/entries/<entry_id>/weights.safetensors   (or an http(s) URL in the record)

`make_record` writes a record from a finished run folder; `validate_record` checks one without
running its model: the schema (jsonschema, `schemas/record-v<N>.json`), the model id in the
registry, the protocol's id and split hashes, and the weights file (confined to the record's
folder, under the size limit, its sha256, and a safetensors header — weights are never
unpickled). `validate_leaderboard` also refuses duplicate entry ids. Every problem is a
`RecordError` naming the record and the field or check.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.errors import DynbenchError, OutputError, UnknownNameError
from benchmarks.io import atomic_write_json, confined_path, sha256_file

__all__ = [
    "RecordError", "Record", "SCHEMA_VERSION", "DEFAULT_MAX_WEIGHTS_BYTES", "RECORD_FILE", "WEIGHTS_FILE",
    "check_schema", "safetensors_header", "validate_record", "validate_leaderboard", "make_record",
    "make_record_from_weights", "Submission",
]  # fmt: skip

SCHEMA_VERSION = 1
#: record versions this dynbench reads -> their schema file
SCHEMA_FILES = {1: "record-v1.json"}
RECORD_FILE = "record.json"
WEIGHTS_FILE = "weights.safetensors"
#: weights above this are refused before they are read (a ResNet-50 in float32 is ~100 MB)
DEFAULT_MAX_WEIGHTS_BYTES = 512 * 2**20
#: the schema's entry id pattern (checked before an id names a folder)
ENTRY_ID = re.compile(r"[a-z0-9][a-z0-9._-]{2,79}")
#: a safetensors header larger than this is not a header (the format caps it at 100 MB)
_MAX_HEADER_BYTES = 100 * 2**20


class RecordError(DynbenchError):
    """A leaderboard record (or its weights) that fails a check; the message names it."""


@dataclass(frozen=True)
class Record:
    """A validated record: its data, its file, and where its weights are."""

    data: dict[str, Any]
    path: Path
    weights: Path | str  # a local file inside the record's folder, or an http(s) URL

    @property
    def entry_id(self) -> str:
        return self.data["entry_id"]


@cache
def _schema(version: int) -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "schemas" / SCHEMA_FILES[version]).read_text(encoding="utf-8"))


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(the record)"


def check_schema(data: Any, where: str) -> None:
    """The record's schema version is one this dynbench reads, and the record follows it."""
    import jsonschema

    if not isinstance(data, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in SCHEMA_FILES:
        known = ", ".join(map(str, SCHEMA_FILES))
        shown = "missing" if version is None else repr(version)
        raise RecordError(f"{where}: field 'schema_version': {shown} is not a schema version this dynbench reads ({known})")
    validator = jsonschema.Draft202012Validator(_schema(version))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise RecordError(f"{where}: field '{_field(error.absolute_path)}': {error.message}")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, read without loading (or unpickling) anything;
    refuses anything that is not one, with what it looks like."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            kind = "a pickle" if head[:1] == b"\x80" else "a zip archive (torch.save)"
            raise RecordError(f"{path}: not a safetensors file: it looks like {kind}; dynbench never unpickles weights "
                              "(convert with safetensors.torch.save_file)")  # fmt: skip
        if len(head) < 8:
            raise RecordError(f"{path}: not a safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise RecordError(f"{path}: not a safetensors file (header length {length} does not fit its {size} bytes)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            raise RecordError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise RecordError(f"{path}: not a safetensors file (its header is not a JSON object)")
    end = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= end):
            raise RecordError(f"{path}: not a valid safetensors file (tensor '{name}' lies outside the file)")
    return header


def _check_weights_file(path: Path, weights: dict[str, Any], max_bytes: int, where: str) -> None:
    if not path.is_file():
        raise RecordError(f"{where}: field 'weights.url': file '{weights['url']}' does not exist next to the record")
    size = path.stat().st_size
    if size > max_bytes:
        raise RecordError(f"{where}: weights file is {size:,} bytes, over the limit of {max_bytes:,} (--max-weights-mb)")
    if size != weights["size_bytes"]:
        raise RecordError(f"{where}: field 'weights.size_bytes': {weights['size_bytes']:,} but the file has {size:,} bytes")
    digest = sha256_file(path)
    if digest != weights["sha256"]:
        raise RecordError(f"{where}: field 'weights.sha256': {weights['sha256']} but the file's sha256 is {digest}")
    safetensors_header(path)


def _check_protocol(protocol: dict[str, Any], where: str) -> None:
    from benchmarks.protocol import protocol_of

    try:
        expected = protocol_of(protocol["dataset"], protocol["options"] or None)
    except DynbenchError as exc:
        raise RecordError(f"{where}: field 'protocol': {exc}") from None
    declared = protocol["split_sha256"]
    for split, digest in expected.splits.items():
        if declared.get(split) != digest:
            raise RecordError(f"{where}: field 'protocol.split_sha256.{split}': {declared.get(split)} is not the "
                              f"{expected.id} split's sha256 {digest} (splits of another protocol?)")  # fmt: skip
    extra = sorted(set(declared) - set(expected.splits))
    if extra:
        raise RecordError(f"{where}: field 'protocol.split_sha256': splits {extra} are not splits of {expected.id}")
    if protocol["id"] != expected.id:
        raise RecordError(f"{where}: field 'protocol.id': '{protocol['id']}' but dataset "
                          f"'{protocol['dataset']}' with these options is protocol '{expected.id}'")  # fmt: skip


def _check_model(model: dict[str, Any], where: str) -> None:
    from benchmarks.registry import list_models, plugin_errors

    if model["id"] not in list_models():
        try:
            raise UnknownNameError("model", model["id"], list_models())
        except UnknownNameError as exc:
            broken = plugin_errors()
            hint = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            raise RecordError(f"{where}: field 'model.id': {exc}{hint}; install the plugin that provides it") from None


def validate_record(path: str | Path, *, max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES) -> Record:
    """Everything that can be checked without running the model (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{where}: no such record") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{where}: not JSON ({exc})") from None
    check_schema(data, where)
    _check_model(data["model"], where)
    _check_protocol(data["protocol"], where)
    url = data["weights"]["url"]
    if url.startswith(("http://", "https://")):
        return Record(data, path, url)
    try:
        weights = confined_path(path.parent, url)
    except OutputError:
        raise RecordError(f"{where}: field 'weights.url': '{url}' escapes the record's folder") from None
    _check_weights_file(weights, data["weights"], max_weights_bytes, where)
    return Record(data, path, weights)


def record_paths(root: str | Path) -> list[Path]:
    """The record files of a leaderboard folder (`<root>/*/record.json`), or the file given."""
    root = Path(root)
    if root.is_file():
        return [root]
    if (root / RECORD_FILE).is_file():
        return [root / RECORD_FILE]
    return sorted(root.glob(f"*/{RECORD_FILE}"))


def validate_leaderboard(paths: list[Path], *, max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES) -> list[Record]:
    """Each record valid, and no entry id twice."""
    records: list[Record] = []
    seen: dict[str, Path] = {}
    for path in paths:
        record = validate_record(path, max_weights_bytes=max_weights_bytes)
        if record.entry_id in seen:
            raise RecordError(f"{record.path}: field 'entry_id': '{record.entry_id}' is already the id of {seen[record.entry_id]}")
        seen[record.entry_id] = record.path
        records.append(record)
    return records


def _reported(run: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.protocol import budget_or_none

    metrics = json.loads(run.metrics_file.read_text(encoding="utf-8"))
    splits = metrics["splits"]
    f1 = splits["test"].get("f1")
    return {
        "accuracy_val": round(float(splits["val"]["accuracy"]), 4),
        "accuracy_test": round(float(splits["test"]["accuracy"]), 4),
        "f1_test": None if f1 is None else round(float(f1), 4),
        "macs_mean": float(splits["test"]["macs_mean"]),
        "macs_controller_mean": float(splits["test"].get("macs_controller_mean") or 0.0),
        "params": int(metrics["params"]),
        "training_images": budget_or_none(cfg),
        "selected_on": "val",
    }


@dataclass(frozen=True)
class Submission:
    """Who and what, for a new record (`make_record`, `make_record_from_weights`)."""

    entry_id: str
    title: str
    authors: list[str]
    paper_url: str | None = None
    code_url: str | None = None


def _target(entries_root: str | Path, entry_id: str) -> Path:
    if not ENTRY_ID.fullmatch(entry_id):
        raise RecordError(f"field 'entry_id': '{entry_id}' is not 3-80 of a-z, 0-9, '.', '_', '-' (starting with a letter or digit)")
    target = Path(entries_root) / entry_id
    if target.exists():
        raise RecordError(f"field 'entry_id': '{entry_id}' already exists in {entries_root}")
    return target


def _write_entry(target: Path, submission: Submission, model: dict[str, Any], weights: Path, protocol: Any,
                 reported: dict[str, Any]) -> Path:  # fmt: skip
    """Write `<entries>/<entry_id>/` (record + weights copy) all at once, validated."""
    from benchmarks import __version__
    from benchmarks.environment import git_commit

    record = {
        "schema_version": SCHEMA_VERSION,
        "entry_id": submission.entry_id,
        "title": submission.title,
        "authors": list(submission.authors),
        "paper_url": submission.paper_url,
        "code_url": submission.code_url,
        "model": model,
        "weights": {"url": WEIGHTS_FILE, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size, "format": "safetensors"},
        "protocol": {"id": protocol.id, "dataset": protocol.dataset, "options": protocol.options, "split_sha256": protocol.splits},
        "reported": reported,
        "evaluation": None,
        "status": {"state": "pending", "reasons": []},
        "dates": {"submitted": _dt.date.today().isoformat(), "evaluated": None},
        "dynbench": {"version": __version__, "commit": git_commit()},
    }  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{submission.entry_id}-", dir=target.parent))
    try:
        shutil.copyfile(weights, staging / WEIGHTS_FILE)
        atomic_write_json(staging / RECORD_FILE, record)
        validate_record(staging / RECORD_FILE)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / RECORD_FILE


def make_record(run_dir: str | Path, entries_root: str | Path, submission: Submission) -> Path:
    """A pending record (and a copy of the selected weights) from a finished run folder,
    written as `<entries_root>/<entry_id>/` all at once; returns the record's path."""
    from benchmarks.protocol import protocol_of_config
    from benchmarks.registry import model_source
    from benchmarks.runs import RunFolder

    target = _target(entries_root, submission.entry_id)
    run = RunFolder(Path(run_dir))
    problem = run.completion_problem()
    if problem is not None:
        raise RecordError(f"{run_dir}: not a finished run folder ({problem})")
    cfg = run.load_config()
    arch = json.loads((run.checkpoint_dir / "best.json").read_text(encoding="utf-8"))["arch"]
    model = {"id": arch["name"], "kwargs": arch.get("kwargs") or {}, "provider": model_source(arch["name"])}
    return _write_entry(target, submission, model, run.checkpoint_dir / "best.safetensors", protocol_of_config(cfg),
                        _reported(run, cfg))  # fmt: skip


def make_record_from_weights(
    model_id: str,
    weights: str | Path,
    entries_root: str | Path,
    submission: Submission,
    *,
    dataset: str,
    reported: dict[str, Any],
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """A pending record from a registered model id, a safetensors file trained on `dataset`
    (with `options`) and the submitter's numbers (`accuracy_val`, `accuracy_test`,
    `macs_mean`, `macs_controller_mean`; `f1_test`, `training_images` optional). The
    constructor gets the dataset's classes and channels unless `kwargs` sets them; params are
    counted on the built model, whose keys must match the weights'."""
    from safetensors import safe_open

    from benchmarks.cost import count_params
    from benchmarks.data import dataset_info
    from benchmarks.protocol import protocol_of
    from benchmarks.registry import create_model, model_source

    target = _target(entries_root, submission.entry_id)
    weights = Path(weights)
    if not weights.is_file():
        raise RecordError(f"--weights: '{weights}' does not exist")
    safetensors_header(weights)
    try:
        protocol = protocol_of(dataset, options or None)
        info = dataset_info(dataset, options or {})
    except DynbenchError as exc:
        raise RecordError(f"--dataset: {exc}") from None
    kwargs = {"num_classes": info.num_classes, "in_chans": info.input_shape[0], **(kwargs or {})}
    try:
        built = create_model(model_id, **kwargs)
    except UnknownNameError as exc:
        raise RecordError(f"--model: {exc}") from None
    except TypeError as exc:
        raise RecordError(f"--kwargs: {exc}") from None
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
    expected = set(built.state_dict())
    if keys != expected:
        missing, unexpected = sorted(expected - keys)[:3], sorted(keys - expected)[:3]
        raise RecordError(f"--weights: the file's tensors do not fit model '{model_id}' (missing {missing}, unexpected {unexpected})")
    required = ("accuracy_val", "accuracy_test", "macs_mean", "macs_controller_mean")
    absent = [k for k in required if reported.get(k) is None]
    if absent:
        raise RecordError(f"reported numbers missing: {', '.join(absent)}")
    numbers = {"f1_test": None, "training_images": None, **reported, "params": count_params(built), "selected_on": "val"}
    model = {"id": model_id, "kwargs": kwargs, "provider": model_source(model_id)}
    return _write_entry(target, submission, model, weights, protocol, numbers)
