"""Latency columns of suite tables: p50 per batch size and the realization ratio against the
static backbone of the same protocol."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.suite_latency import latency_columns

P = "digits-8px-a826"


def _summary():
    rows = [
        ("static", "cifar_resnet20", "static", 2_000_000),
        ("pruned", "cifar_resnet20", "pruned", 1_000_000),
        ("lc", "lcnet_lc_cifar_resnet20", "dynamic", 1_000_000),
        ("d2nn", "d2nn_cascade", "dynamic", 10_000),
    ]
    return pd.DataFrame([{"experiment": e, "model": m, "kind": k, "macs_mean": macs, "protocol": P, "split": split}
                         for e, m, k, macs in rows for split in ("val", "test")])  # fmt: skip


def test_realization_is_speedup_over_the_static_backbone_divided_by_the_macs_reduction():
    latency = pd.DataFrame([
        {"experiment": "static", "batch_size": 1, "p50_ms": 2.0}, {"experiment": "pruned", "batch_size": 1, "p50_ms": 1.0},
        {"experiment": "lc", "batch_size": 1, "p50_ms": 1.6}, {"experiment": "lc", "batch_size": 1, "p50_ms": 2.4},
        {"experiment": "d2nn", "batch_size": 1, "p50_ms": 0.5},
    ])  # fmt: skip
    out = latency_columns(_summary(), latency).set_index(["experiment", "split"])
    assert out.loc[("pruned", "test"), "realization_b1"] == pytest.approx(1.0)  # 2x faster for 2x fewer MACs
    assert out.loc[("lc", "test"), "p50_b1"] == pytest.approx(2.0)  # mean over seeds
    assert out.loc[("lc", "test"), "realization_b1"] == pytest.approx(0.5)  # as fast as static for half the MACs
    assert pd.isna(out.loc[("d2nn", "test"), "realization_b1"])  # no static backbone: no ratio
    assert pd.isna(out.loc[("static", "test"), "realization_b1"])


def test_a_backbone_of_another_protocol_is_not_used():
    summary = _summary()
    summary.loc[summary["experiment"] == "static", "protocol"] = "digits-32px-051b"
    latency = pd.DataFrame([{"experiment": "static", "batch_size": 1, "p50_ms": 2.0}, {"experiment": "pruned", "batch_size": 1, "p50_ms": 1.0}])
    assert pd.isna(latency_columns(summary, latency).set_index(["experiment", "split"]).loc[("pruned", "test"), "realization_b1"])
