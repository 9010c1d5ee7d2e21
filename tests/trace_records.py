"""Everything a trace reports, as plain data: what tests compare between two ways of running
the same forward pass (replayed and intercepted counts, the D2NN walks)."""

from __future__ import annotations

from benchmarks.routing import Trace


def trace_record(t: Trace, *, margins: bool = True) -> dict:
    """Per-sample MACs, MACs by kind, other ops, units, kept channels and (unless `margins` is
    False) decision margins."""
    record = {
        "executed": t.macs_executed.tolist(), "theoretical": t.macs_theoretical.tolist(),
        "controller": t.macs_controller.tolist(), "by_kind": t.macs_by_kind,
        "other": {k: v.tolist() for k, v in t.other_ops.items()},
        "units": {k: v.tolist() for k, v in t.units_executed.items()},
        "channels": {k: v.tolist() for k, v in t.channels_kept.items()},
    }  # fmt: skip
    if margins:
        record["margins"] = {k: v.tolist() for k, v in t.decision_margins.items()}
    return record
