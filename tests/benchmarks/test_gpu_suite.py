"""The GPU latency suite, dry-run on the CPU at small size: every setting measured, the files
written, the masked engine's MACs honest (full work), CUDA graphs reported as not run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks import gpu_suite
from benchmarks.errors import UnknownNameError


@pytest.mark.slow
def test_the_suite_measures_every_setting_and_writes_its_records(tmp_path):
    files = gpu_suite.run("cpu", tmp_path, small=True, pairs=["d2nn_cascade"], log=lambda m: None)
    assert sorted(p.name for p in files) == ["environment.json", "graphs.csv", "measurements.csv", "realization.csv"]
    rows = pd.read_csv(tmp_path / "realization.csv")
    settings = rows.groupby(["precision", "channels_last", "batch_size", "engine"]).size()
    # precision x format x (batch x engine (masked, sparse, sparse:fastest) + the oracle at batch 1)
    assert len(settings) == 2 * 2 * (2 * 3 + 1) and (settings == 1).all()
    assert set(rows[rows["engine"] == "oracle"]["batch_size"]) == {1}  # a D2NN's oracle is for one image
    at_one = rows[rows["batch_size"] == 1]
    assert at_one["oracle_realization_ratio"].notna().all()  # beside every engine's ratio
    masked = rows[rows["engine"] == "masked"]
    assert (masked["macs_reduction"] < 1.01).all()  # the masked engine computes everything: no saving claimed
    assert (rows[rows["engine"] == "sparse"]["macs_reduction"] > 1.2).all()  # centred gates skip work
    graphs = pd.read_csv(tmp_path / "graphs.csv")
    assert set(graphs["engine"]) == {"none", "masked", "oracle"}  # static, all work, a fixed pattern
    ran = graphs[graphs["note"] != "no oracle at this batch size"]
    assert ran["note"].str.contains("need a CUDA device").all()
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["finished"] and env["small"]


def test_an_unknown_pair_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(UnknownNameError, match="nope"):
        gpu_suite.run("cpu", tmp_path / "out", small=True, pairs=["nope"])
    assert not (tmp_path / "out").exists()


def test_every_pair_builds_and_its_oracle_reproduces_it():
    """Every pair of the suite builds on the sample set (the first thing a device run does)."""
    import torch

    for spec in gpu_suite.PAIRS:
        pair = gpu_suite.build_pair(spec, None, count=4)
        x = pair.samples.images[:1]
        with torch.inference_mode():
            assert pair.dynamic(x).shape == pair.static(x).shape
            assert pair.dynamic(pair.samples.images).isfinite().all(), spec[0]
            oracle = pair.dynamic.oracle(x) if hasattr(pair.dynamic, "oracle") else None
            if oracle is not None:
                torch.testing.assert_close(oracle(), pair.dynamic(x), rtol=1e-3, atol=1e-4)
