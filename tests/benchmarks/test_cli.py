"""The command line: help, the quick main job, and one clear message per kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks.cli import COMMANDS


def dynbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_every_command():
    result = dynbench("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_unknown_command_suggests_the_closest():
    result = dynbench("reproduse", "quick")
    assert result.returncode == 2 and "reproduce" in result.stderr


def test_unknown_model_in_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": {"name": "digits_cn"}, "dataset": {"name": "digits"}, "train": {"epochs": 1}}))
    result = dynbench("train", str(cfg), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "unknown model 'digits_cn'" in result.stderr and "digits_cnn" in result.stderr
    assert not (tmp_path / "out").exists(), "bad input must leave no partial output"


def test_unknown_dataset_in_config_suggests_names(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": {"name": "digits_cnn"}, "dataset": {"name": "fashion_mnist"}, "train": {"epochs": 1}}))
    result = dynbench("train", str(cfg), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "fashion-mnist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_names_file_and_line(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: x\ntrain: [epochs: 1\n")
    result = dynbench("train", str(cfg))
    assert result.returncode == 2 and str(cfg) in result.stderr and "line" in result.stderr


def test_bad_key_in_yaml_names_key_and_expectation(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "model": {"name": "digits_cnn"}, "dataset": {"name": "digits"}, "train": {"epochs": "ten"}}))
    result = dynbench("train", str(cfg))
    assert result.returncode == 2 and "key 'train.epochs' must be a positive integer, got 'ten'" in result.stderr


def test_unknown_suite_is_named(tmp_path):
    result = dynbench("reproduce", "quik", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "unknown suite 'quik'" in result.stderr and "quick" in result.stderr


def test_unwritable_output_folder_is_one_clear_line(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    result = dynbench("reproduce", "quick", "--out", str(blocker / "results"))
    assert result.returncode == 2 and "cannot create output folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_reproduce_quick_writes_runs_and_tables_then_reuses_them(tmp_path):
    first = dynbench("reproduce", "quick", "--out", str(tmp_path / "results"))
    assert first.returncode == 0, first.stderr
    table = tmp_path / "results" / "tables" / "quick.csv"
    assert str(Path("results") / "tables" / "quick.md") in first.stdout or "quick.md" in first.stdout
    rows = pd.read_csv(table)
    assert set(rows["split"]) == {"val", "test"}
    test_acc = rows.loc[(rows["model"] == "digits_cnn") & (rows["split"] == "test"), "accuracy"].item()
    assert test_acc > 85.0, f"digits_cnn should learn digits (got {test_acc:.1f}%)"
    second = dynbench("reproduce", "quick", "--out", str(tmp_path / "results"))
    assert second.returncode == 0 and "0 run(s) trained" in second.stdout
    pd.testing.assert_frame_equal(pd.read_csv(table), rows)
    # every final model was timed (batch 1 and 64), with the sha256 of the weights it timed
    from benchmarks.io import sha256_file

    latency = pd.read_csv(tmp_path / "results" / "tables" / "quick_latency.csv")
    assert sorted(set(latency["batch_size"])) == [1, 64] and set(latency["experiment"]) == set(rows["experiment"])
    for run_dir in rows["run_dir"].unique():
        name = Path(run_dir).name
        timed = latency[latency["experiment"] == name.rsplit("-s", 1)[0]]
        assert set(timed["weights_sha256"]) == {sha256_file(Path(run_dir) / "checkpoints" / "best.safetensors")}
    assert "p50 b1 (ms, CPU 1 thread)" in (tmp_path / "results" / "tables" / "quick.md").read_text()


def test_models_lists_a_kind_or_a_family_by_name(capsys):
    from tests.benchmarks.fixtures_data import run_cli

    code, out, _ = run_cli(["models", "dynamic"], capsys)
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and {"d2nn_cascade", "lcnet_lc_cifar_resnet56", "early_exit_cifar_resnet56"} <= set(names)
    assert all(" dynamic " in line for line in out.splitlines())
    code, out, _ = run_cli(["models", "early-exit"], capsys)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == [
        "early_exit_cifar_resnet110", "early_exit_cifar_resnet20", "early_exit_cifar_resnet56"]
