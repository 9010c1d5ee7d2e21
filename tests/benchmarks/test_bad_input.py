"""Bad input at the command line: one clear message, exit status 2, no traceback, and no file
left behind (the output tree is compared before and after)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.cli import main
from tests.benchmarks.fixtures_data import run_cli

GOOD = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [4, 8], "depth": 1}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64},
}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _config(tmp_path: Path, filename: str = "cfg.yaml", **changes) -> Path:
    path = tmp_path / filename
    path.write_text(yaml.safe_dump({**GOOD, **changes}))
    return path


def _exit(args: list[str], capsys) -> tuple[int, str]:
    code, out, err = run_cli(args, capsys)
    return code, out + err


def _finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "finished"
    main(["train", str(_config(tmp_path, "good.yaml")), "--device", "cpu", "--out", str(out)])
    return next((out / "runs").iterdir())


def _bare_weights(tmp_path: Path) -> Path:
    """A finished run's weights (a narrower digits_cnn) without the architecture config the
    engine saves beside them: the default digits_cnn is built, and they do not fit it."""
    bare = tmp_path / "bare.safetensors"
    shutil.copy(_finished_run(tmp_path) / "checkpoints" / "best.safetensors", bare)
    return bare


CASES = {
    "non-UTF-8 config": (lambda t: ["train", str(_bytes(t, b"name: t\xff\xfe\n"))], "is not UTF-8 text"),
    "lr .nan": (lambda t: ["train", str(_config(t)), "--set", "train.optimizer.lr=.nan"], "train.optimizer.lr must be a finite number > 0, got nan"),
    "lr -1.0": (lambda t: ["train", str(_config(t)), "--set", "train.optimizer.lr=-1.0"], "got -1.0"),
    "unknown optimizer": (lambda t: ["train", str(_config(t)), "--set", "train.optimizer.name=sgdd"], "train.optimizer.name must be one of"),
    "unknown scheduler": (lambda t: ["train", str(_config(t)), "--set", "train.scheduler.name=cosin"], "train.scheduler.name must be one of"),
    "bad model kwargs": (lambda t: ["train", str(_config(t, model={"name": "digits_cnn", "kwargs": {"depthh": 2}}))], "key 'model.kwargs' does not fit model 'digits_cnn'"),
    "unlogged select metric": (lambda t: ["train", str(_config(t, select={"metric": "val_acc"}))], "select.metric 'val_acc' is not logged by method 'supervised'; it logs val_accuracy, val_loss"),
    "run name escapes --out": (lambda t: ["train", str(_config(t, name="../../../escaped_run"))], "no '/' or '..'"),
    "missing config file": (lambda t: ["train", str(t / "nonexistent" / "cfg.yaml")], "does not exist"),
    "device tpu": (lambda t: ["train", str(_config(t)), "--device", "tpu"], "not a device; use cpu, cuda or cuda:N"),
    "malformed run config": (lambda t: ["eval", str(_damaged_run(t))], "is malformed"),
    "weights of another architecture": (lambda t: ["eval", str(_swapped_weights(t))], "does not fit the model"),
    "reproduce unknown suite": (lambda t: ["reproduce", "quik", "--out", str(t / "out")], "unknown suite 'quik'. Did you mean: quick"),
    "reproduce --seeds 0": (lambda t: ["reproduce", "quick", "--seeds", "0", "--out", str(t / "out")], "'--seeds': 0 is not in the range x>=1"),
    "seeds: []": (lambda t: ["train", str(_config(t, seeds=[]))], "key 'seeds' must be a non-empty list of non-negative integers, got []"),
    "latency --batch 100000000": (lambda t: ["latency", "digits_cnn", "--batch", "1,100000000"], "batch size 100,000,000 is too large"),
    "latency --warmup-s nan": (lambda t: ["latency", "digits_cnn", "--warmup-s", "nan"], "--warmup-s must be a finite number of seconds"),
    "latency --min-time-s inf": (lambda t: ["latency", "digits_cnn", "--min-time-s", "inf"], "--min-time-s must be a finite number of seconds"),
    "latency weights of another architecture": (lambda t: ["latency", "digits_cnn", "--weights", str(_bare_weights(t))], "does not fit"),
    "tables --rows on a binary file": (lambda t: ["tables", "--suite", "quick", "--rows", str(_bytes(t, bytes(range(256)) * 8)), "--out", str(t / "tables")], "is not a CSV of result rows"),
    "tables --published /dev/null": (lambda t: ["tables", "--suite", "baselines", "--published", "/dev/null", "--out", str(t / "tables")], "is not a regular file"),
    "nonexistent --data-root": (lambda t: ["train", str(_config(t)), "--data-root", str(t / "no_data_here")], "does not exist or is not a folder"),
    "train_subset larger than the split": (lambda t: ["train", str(_config(t, dataset={"name": "digits", "options": {"train_subset": 1000000}}))], "but the training split has only"),
    "dangling --out symlink": (lambda t: ["train", str(_config(t)), "--out", str(_dangling(t))], "is a symbolic link to"),
    "figures --latency missing file": (lambda t: ["figures", "--suite", "quick", "--latency", str(t / "none.csv"), "--out", str(t / "figs")], "--latency"),
    "cost --out cannot be written": (lambda t: ["cost", "digits_cnn", "--dataset", "digits", "--out", str(_dangling(t) / "cost.csv")], "symbolic link"),
    "bad method_args.init": (lambda t: ["train", str(_config(t, method="l1_filter", method_args={"init": str(t / "no_such_run")}))], "method_args.init: no checkpoint at"),
    "missing CIFAR": (lambda t: ["train", str(_config(t, model={"name": "cifar_resnet20"}, dataset={"name": "cifar10"}))], "dataset 'cifar10' was not found"),
    "run folder with another config": (lambda t: ["train", str(_foreign_run(t)), "--out", str(t / "foreign")], "holds a different config.yaml"),
}


def _dangling(tmp_path: Path) -> Path:
    link = tmp_path / "out_link"
    link.symlink_to(tmp_path / "gone")
    return link


def _foreign_run(tmp_path: Path) -> Path:
    """A run folder whose config.yaml a newer dynbench wrote (an extra key)."""
    config = _config(tmp_path, "foreign.yaml")
    main(["train", str(config), "--device", "cpu", "--out", str(tmp_path / "foreign"), "--no-eval"])
    run = next((tmp_path / "foreign" / "runs").iterdir())
    (run / "complete.json").unlink(missing_ok=True)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "future_key: 1\n")
    return config


def _bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "binary.yaml"
    path.write_bytes(data)
    return path


def _damaged_run(tmp_path: Path) -> Path:
    run = _finished_run(tmp_path)
    (run / "config.yaml").write_text("name: [unclosed\n")
    return run


def _swapped_weights(tmp_path: Path) -> Path:
    run = _finished_run(tmp_path)
    other = tmp_path / "other"
    main(["train", str(_config(tmp_path, "other.yaml", name="wide", model={"name": "digits_cnn", "kwargs": {"widths": [6, 8], "depth": 1}})),
          "--device", "cpu", "--out", str(other), "--no-eval"])  # fmt: skip
    wide = next((other / "runs").iterdir())
    (run / "checkpoints" / "best.safetensors").write_bytes((wide / "checkpoints" / "best.safetensors").read_bytes())
    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_message_exit_2_no_traceback_no_files(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, message = CASES[case]
    args = build(tmp_path)
    capsys.readouterr()
    before = _tree(tmp_path)
    code, output = _exit(args, capsys)
    assert code == 2, output
    assert message in output, output
    assert "Traceback" not in output
    assert _tree(tmp_path) == before, f"{case} left files behind"


def test_tables_check_with_nothing_reproduced_fails(tmp_path, capsys):
    empty = tmp_path / "rows.csv"
    from benchmarks.results import RESULT_COLUMNS

    empty.write_text(",".join(RESULT_COLUMNS) + "\n")
    code, output = _exit(["tables", "--suite", "quick", "--rows", str(empty), "--out", str(tmp_path / "t"), "--check"], capsys)
    assert code == 1 and "nothing to check" in output


def test_a_model_name_typo_gets_a_suggestion(capsys):
    code, output = _exit(["models", "resnet2O"], capsys)
    assert code == 1 and "Did you mean: resnet20" in output or "Did you mean:" in output


def test_an_interrupt_says_that_running_again_resumes(monkeypatch, capsys):
    from benchmarks import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.cli, "main", interrupted)
    code, output = _exit(["train", "x"], capsys)
    assert code == 130 and "running the same command again resumes" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    code, output = _exit(["train", str(_config(tmp_path)), "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available on this machine" in output
    assert not (tmp_path / "results").exists()
