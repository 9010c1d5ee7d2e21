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
    assert len(settings) == 2 * 2 * 2 * 2 and (settings == 1).all()  # precision x format x batch x engine
    masked = rows[rows["engine"] == "masked"]
    assert (masked["macs_reduction"] < 1.01).all()  # the masked engine computes everything: no saving claimed
    assert (rows[rows["engine"] == "sparse"]["macs_reduction"] > 1.2).all()  # centred gates skip work
    graphs = pd.read_csv(tmp_path / "graphs.csv")
    assert graphs["note"].str.contains("need a CUDA device").all()
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["finished"] and env["small"]


def test_an_unknown_pair_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(UnknownNameError, match="nope"):
        gpu_suite.run("cpu", tmp_path / "out", small=True, pairs=["nope"])
    assert not (tmp_path / "out").exists()
