"""Architecture goldens: the exact MACs and parameter count of every registered static or
pruned model at its first dataset's resolution (`results/expected/architectures.json`).
Counting is analytic, from shapes, so these hold exactly on any CPU."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from benchmarks.goldens.report import Mismatch

SCHEMA = 1
KIND = "dynbench-architecture-golden"


def architecture_counts(models: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """{"<model>@<dataset>": {kind, macs, params}} for registered static/pruned models."""
    from benchmarks.registry import get_model_spec, is_model, list_models
    from benchmarks.tables import count_architecture

    out = {}
    names = list(models) if models is not None else list_models()
    for name in names:
        if not is_model(name):  # compare() reports a pinned model that disappeared
            continue
        spec = get_model_spec(name)
        if spec.kind == "dynamic" or not spec.datasets:
            continue
        dataset = spec.datasets[0]
        macs, params = count_architecture(name, dataset)
        out[f"{name}@{dataset}"] = {"kind": spec.kind, "macs": int(macs), "params": int(params)}
    return out


def document(counts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": KIND, "architectures": counts}


def read(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    from benchmarks.goldens.report import read_golden_file

    doc = read_golden_file(path, KIND, SCHEMA, "dynbench architecture golden", "count them with `python -m benchmarks.goldens record --architectures`")
    return doc["architectures"]


def compare(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> tuple[list[Mismatch], list[str]]:
    """(mismatches, notes): a pinned model that vanished or moved is a mismatch; a model
    registered since is a note (pin it with `python -m benchmarks.goldens record`)."""
    mismatches, notes = [], []
    for key in sorted(set(expected) | set(got)):
        if key not in got:
            mismatches.append(Mismatch(f"arch {key}", "registered", "yes", "no", "model removed or renamed?"))
        elif key not in expected:
            notes.append(f"architecture {key} is not pinned yet (python -m benchmarks.goldens record --architectures)")
        else:
            for metric in ("macs", "params"):
                if expected[key][metric] != got[key][metric]:
                    mismatches.append(Mismatch(f"arch {key}", metric, expected[key][metric], got[key][metric], "exact"))
    return mismatches, notes
