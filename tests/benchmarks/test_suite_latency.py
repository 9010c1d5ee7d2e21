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


def test_a_d2nn_design_is_timed_against_the_full_static_network_of_its_reference_path():
    summary = pd.DataFrame([{"experiment": e, "model": m, "kind": k, "macs_mean": macs, "protocol": P, "split": "test"}
                            for e, m, k, macs in [("casc--lam0.9", "d2nn_cascade", "dynamic", 100_000),
                                                  ("static--stages2", "d2nn_cascade_static", "static", 50_000),
                                                  ("static--stages4", "d2nn_cascade_static", "static", 400_000)]])  # fmt: skip
    latency = pd.DataFrame([{"experiment": "casc--lam0.9", "batch_size": 1, "p50_ms": 1.0},
                            {"experiment": "static--stages2", "batch_size": 1, "p50_ms": 0.5},
                            {"experiment": "static--stages4", "batch_size": 1, "p50_ms": 2.0}])  # fmt: skip
    out = latency_columns(summary, latency).set_index("experiment")
    # 2x faster than stages 1..4 (the `reference:` tag's costliest point) for 4x fewer MACs
    assert out.loc["casc--lam0.9", "realization_b1"] == pytest.approx(0.5)
