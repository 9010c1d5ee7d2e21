"""`dynbench data list | prepare | verify`, run in-process as the console script runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.data.cifar import Cifar10
from tests.benchmarks.fixtures_data import make_cifar, run_cli, use_source

SPLIT_LINE = re.compile(r"^  (train|val|test)\s+([\d,]+)\s+sha256 ([0-9a-f]{64})", re.M)


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    raw, recipe = make_cifar(tmp_path)
    use_source(monkeypatch, Cifar10(recipe=recipe))
    return tmp_path, raw


def test_list_shows_every_dataset_and_how_to_get_missing_ones(capsys, tmp_path):
    code, out, _ = run_cli(["data", "list", "--data-root", str(tmp_path)], capsys)
    assert code == 0
    for name in ("digits", "fashion-mnist", "cifar10", "cifar100", "imagenet", "ilsvrc10", "lfw-b"):
        assert re.search(rf"^{re.escape(name)}\s", out, re.M), name
    assert re.search(r"^cifar10\s+10\s+3x32x32\s+45000 / 5000 / 10000\s+accuracy\s+not found", out, re.M)
    assert re.search(r"^lfw-b\s+2\s+3x32x32\s+112563 / 11000 / 22000\s+f1", out, re.M)
    assert "https://image-net.org" in out  # how to get imagenet


def test_prepare_then_verify_a_fixture_copy(capsys, cifar_root):
    root, raw = cifar_root
    code, out, _ = run_cli(["data", "list", "--data-root", str(root)], capsys)
    assert f"source at {raw}; run `dynbench data prepare cifar10 --data-root {root}`" in out

    code, out, err = run_cli(["data", "prepare", "cifar10", "--data-root", str(root), "--no-download"], capsys)
    assert code == 0, err
    prepared = dict((m[0], m[2]) for m in SPLIT_LINE.findall(out))
    assert set(prepared) == {"train", "val", "test"}

    code, out, err = run_cli(["data", "verify", "cifar10", "--data-root", str(root)], capsys)
    assert code == 0, err
    assert f"folder    {root / 'cifar10'}" in out
    assert re.search(r"^  ok\s+data_batch_3  md5 [0-9a-f]{32}$", out, re.M)
    assert dict((m[0], m[2]) for m in SPLIT_LINE.findall(out)) == prepared
    assert "passed the check" in out

    code, out, _ = run_cli(["data", "list", "--data-root", str(root)], capsys)
    assert re.search(rf"^cifar10\s.*\s{re.escape(str(root / 'cifar10'))}$", out, re.M)


def test_verify_fails_on_a_corrupt_file(capsys, cifar_root):
    root, raw = cifar_root
    assert run_cli(["data", "prepare", "cifar10", "--data-root", str(root), "--no-download"], capsys)[0] == 0
    (raw / "test_batch").write_bytes((raw / "test_batch").read_bytes()[:-10])
    code, out, err = run_cli(["data", "verify", "cifar10", "--data-root", str(root)], capsys)
    assert code == 2
    assert re.search(r"^  MISMATCH test_batch  md5 [0-9a-f]{32}$", out, re.M)
    assert re.search(r"^  ok\s+data_batch_1", out, re.M)
    assert f"error: dataset 'cifar10': {raw / 'test_batch'} has md5" in err


def test_bad_names_and_missing_data(capsys, tmp_path):
    code, _, err = run_cli(["data", "verify", "cifar-10"], capsys)
    assert code == 2 and "Did you mean: cifar10" in err
    code, _, err = run_cli(["data", "verify", "imagenet", "--data-root", str(tmp_path)], capsys)
    assert code == 2
    assert str(tmp_path / "imagenet" / "manifest.json") in err and "image-net.org" in err
    code, _, err = run_cli(["data", "prepare", "lfw-b", "--data-root", str(tmp_path), "--no-download"], capsys)
    assert code == 2 and str(tmp_path / "lfw") in err and "not downloaded automatically" in err


def test_verify_digits_full(capsys):
    code, out, err = run_cli(["data", "verify", "digits", "--full"], capsys)
    assert code == 0, err
    assert re.search(r"^  ok\s+digits.csv.gz  sha256 [0-9a-f]{64}$", out, re.M)
    assert [m[1] for m in SPLIT_LINE.findall(out)] == ["1,167", "270", "360"]


@pytest.mark.fashion_mnist
def test_verify_fashion_mnist_twice_gives_the_same_hashes(capsys):
    runs = []
    for _ in range(2):
        code, out, err = run_cli(["data", "verify", "fashion-mnist"], capsys)
        assert code == 0, err
        assert "folder    /usr/share/datasets/fashion-mnist" in out
        assert out.count("  ok  ") == 4
        runs.append(SPLIT_LINE.findall(out))
    assert runs[0] == runs[1] and [m[1] for m in runs[0]] == ["55,000", "5,000", "10,000"]


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_verify_fashion_mnist_console_script():
    script = Path(sys.executable).with_name("dynbench")
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from benchmarks.cli import main; main()"]
    result = subprocess.run(
        [*command, "data", "verify", "fashion-mnist"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert [m[1] for m in SPLIT_LINE.findall(result.stdout)] == ["55,000", "5,000", "10,000"]
