"""Golden routing of tiny seeded D2NNs on real digits: decisions, per-sample MACs and
predictions must not drift (results/expected/d2nn_routing.json).

Regenerate after an intended change with `python -m tests.reference_impls.test_d2nn_golden`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import load_split
from benchmarks.routing import trace
from tests.reference_impls.test_d2nn_graph import DESIGNS, centred

GOLDEN = Path(__file__).resolve().parents[2] / "results" / "expected" / "d2nn_routing.json"


def golden_record() -> dict[str, Any]:
    images = load_split("digits", "test").images[:32]
    record: dict[str, Any] = {
        "inputs": "digits test[:32]",
        "models": "width 4, torch.manual_seed(0), Q-heads centred on the inputs (see centred())",
        "designs": {},
    }
    for name in DESIGNS:
        model = centred(name, images).set_engine("sparse")
        with torch.no_grad(), trace() as t:
            run = model(images, return_run=True)
        record["designs"][name] = {
            "decisions": run.decisions(),
            "macs_executed": t.macs_executed.tolist(),
            "macs_controller": t.macs_controller.tolist(),
            "predictions": run.output.argmax(1).tolist(),
        }
    return record


def test_routing_of_tiny_seeded_models_matches_the_golden_values():
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    actual = golden_record()
    for name, values in expected["designs"].items():
        got = actual["designs"][name]
        assert got["decisions"] == values["decisions"], f"{name}: routing decisions drifted"
        assert got["macs_executed"] == values["macs_executed"], f"{name}: per-sample MACs drifted"
        assert got["macs_controller"] == values["macs_controller"], f"{name}: controller MACs drifted"
        assert got["predictions"] == values["predictions"], f"{name}: predictions drifted"
    assert set(actual["designs"]) == set(expected["designs"])


def test_the_golden_models_really_route():
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for name, values in expected["designs"].items():
        taken = {a for actions in values["decisions"].values() for a in actions if a >= 0}
        assert len(taken) > 1, f"{name}: every sample took the same action"
        assert len(set(values["macs_executed"])) > 1, f"{name}: every sample cost the same"


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(golden_record(), indent=1) + "\n", encoding="utf-8")
    print(GOLDEN)
