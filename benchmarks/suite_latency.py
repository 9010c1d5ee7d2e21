"""Latency in every suite (DESIGN §4, PROTOCOL.md §4): `dynbench reproduce` times each final
model on the CPU, at batch 1 and 64, in the sparse engine (static models: as they are), on the
latency sample set of its protocol's test split, and records the sha256 of the weights it
timed. Suite tables then show p50 latency and the realization ratio against the static
backbone of the same protocol (speed-up over the backbone ÷ its MACs reduction; 1.0 = every
skipped MAC saved its share of time)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

#: short timing for suites (the latency command measures longer): per batch size
SUITE_TIMING: dict[str, Any] = {
    "batch_sizes": (1, 64), "threads": 1, "repeats": 10, "warmup_iters": 3,
    "warmup_s": 0.2, "min_time_s": 0.5, "retries": 1,
}  # fmt: skip
LATENCY_COLUMNS = ("experiment", "seed", "protocol", "model", "engine", "device", "batch_size", "p50_ms",
                   "p10_ms", "threads", "weights_sha256", "sample_set_sha256", "environment_hash")  # fmt: skip


def measure_runs(runs: Iterable[Path], data_root: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = None) -> pd.DataFrame:  # fmt: skip
    """One row per run × batch size: the selected model's p50 latency (CPU, one thread)."""
    from benchmarks.engine import load_selected_model
    from benchmarks.io import canonical_json, sha256_file
    from benchmarks.latency import LatencyConfig, latency_sample_set, measure_model
    from benchmarks.protocol import protocol_of_config
    from benchmarks.routing import is_dynamic
    from benchmarks.runs import RunFolder

    config = LatencyConfig(**SUITE_TIMING)
    samples: dict[str, Any] = {}
    rows = []
    for path in runs:
        run = RunFolder(Path(path))
        cfg = run.load_config()
        dataset, options = cfg["dataset"]["name"], cfg["dataset"].get("options") or None
        key = canonical_json([dataset, options])
        if key not in samples:
            samples[key] = latency_sample_set(dataset, data_root=data_root, options=options)
        model = load_selected_model(run)
        name = model.arch_config["name"]
        engines = ["sparse"] if is_dynamic(model) else None
        if log:
            log(f"latency: {run.path.name} (batch {', '.join(map(str, config.batch_sizes))}, CPU, 1 thread)")
        weights = sha256_file(run.checkpoint_dir / "best.safetensors")
        for m in measure_model(model, samples[key], name, config, engines=engines):
            rows.append({
                "experiment": cfg["name"], "seed": cfg["seed"], "protocol": protocol_of_config(cfg).id,
                "model": name, "engine": m.row["engine"], "device": m.row["device"],
                "batch_size": m.row["batch_size"], "p50_ms": m.row["p50_ms"], "p10_ms": m.row.get("p10_ms"),
                "threads": m.row.get("threads"), "weights_sha256": weights,
                "sample_set_sha256": m.row["sample_set_sha256"], "environment_hash": m.row["environment_hash"],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(LATENCY_COLUMNS))


def _backbone(model: str, kind: str) -> str | None:
    """The static model a dynamic or pruned model is measured against: LC-Net's `base:` tag,
    a D2NN design's `reference:` tag (its reference path trained alone), a pruned model's own
    architecture id; None where there is none."""
    from benchmarks.registry import get_model_spec, is_model

    if kind == "static" or not is_model(model):
        return None
    if kind == "pruned":
        return model
    spec = get_model_spec(model)
    return spec.base or spec.reference


def latency_columns(summary: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """`summary` (one row per experiment × split) with p50 latency and realization ratio at
    each timed batch size, averaged over seeds."""
    out = summary.copy()
    if latency is None or latency.empty:
        return out
    p50 = latency.groupby(["experiment", "batch_size"])["p50_ms"].mean()
    test = out[out["split"] == "test"]
    for batch in sorted(latency["batch_size"].unique()):
        out[f"p50_b{batch}"] = out["experiment"].map(lambda e, b=batch: p50.get((e, b)))
        ratios = {}
        for row in test.to_dict("records"):
            base = _backbone(str(row["model"]), str(row["kind"]))
            static = test[(test["kind"] == "static") & (test["model"] == base) & (test["protocol"] == row["protocol"])]
            mine = p50.get((row["experiment"], batch))
            if base is None or static.empty or mine is None:
                continue
            # the full static network: the costliest point when the static model is swept
            # (e.g. a D2NN cascade's stages 1..4)
            static = static.sort_values("macs_mean", ascending=False)
            theirs = p50.get((static["experiment"].iloc[0], batch))
            macs_reduction = float(static["macs_mean"].iloc[0]) / float(row["macs_mean"])
            if theirs is not None and macs_reduction > 0:
                ratios[row["experiment"]] = (theirs / mine) / macs_reduction
        out[f"realization_b{batch}"] = out["experiment"].map(ratios)
    return out
