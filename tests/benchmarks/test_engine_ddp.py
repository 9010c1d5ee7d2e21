"""DDP through torchrun on CPU (gloo): two ranks train one run, rank 0 writes it."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml


@pytest.mark.slow
def test_torchrun_gloo_two_ranks_train_and_checkpoint(tmp_path):
    cfg = {
        "name": "ddp",
        "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16], "depth": 1}},
        "dataset": {"name": "digits"},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "benchmarks.cli", "train", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-eval"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 1
    log = pd.read_csv(runs[0] / "metrics.csv")
    assert list(log["epoch"]) == [1, 2]
    assert log["val_accuracy"].iloc[-1] > 20.0
    env_record = yaml.safe_load((runs[0] / "environment.json").read_text())
    assert env_record["world_size"] == 2
    assert (runs[0] / "checkpoints" / "best.safetensors").is_file()
