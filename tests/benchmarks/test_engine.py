"""The engine: determinism, resume after SIGKILL, selection on val, NaN stop, stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmarks.config import resolve_config
from benchmarks.engine import Method, Trainer, register_method
from benchmarks.engine.batches import (
    augment_batch,
    epoch_generator,
    num_train_batches,
    train_batches,
)
from benchmarks.errors import TrainingDiverged
from benchmarks.io import sha256_file

TINY = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16], "depth": 1}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "augment": "flip"},
}


def _train(tmp_path: Path, overrides=(), data=TINY) -> Trainer:
    cfg = resolve_config(data, overrides=overrides)
    trainer = Trainer(cfg, seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    trainer.fit()
    return trainer


def _metrics(trainer: Trainer) -> pd.DataFrame:
    return pd.read_csv(trainer.run.metrics_log).drop(columns=["epoch_seconds"])


def test_same_seed_gives_bit_identical_metrics_and_weights(tmp_path):
    a = _train(tmp_path / "a")
    b = _train(tmp_path / "b")
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    assert sha256_file(a.run.checkpoint_dir / "best.safetensors") == sha256_file(b.run.checkpoint_dir / "best.safetensors")
    c = _train(tmp_path / "c", overrides=["train.optimizer.lr=0.02"])
    assert not _metrics(a)["train_loss"].equals(_metrics(c)["train_loss"])


def test_selection_is_on_val_and_logged_per_epoch(tmp_path):
    trainer = _train(tmp_path)
    log = pd.read_csv(trainer.run.metrics_log)
    assert list(log["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_loss", "lr"} <= set(log.columns)
    best = yaml.safe_load((trainer.run.checkpoint_dir / "best.json").read_text())["meta"]
    assert best["epoch"] == int(log.loc[log["val_accuracy"].idxmax(), "epoch"])
    assert "test" not in " ".join(log.columns), "training must never evaluate the test split"


def test_finished_run_resumes_as_a_no_op_with_same_result(tmp_path):
    a = _train(tmp_path)
    before = sha256_file(a.run.checkpoint_dir / "best.safetensors")
    b = _train(tmp_path)
    assert b.run == a.run
    assert sha256_file(b.run.checkpoint_dir / "best.safetensors") == before


def test_resume_after_sigkill_gives_the_same_final_metrics(tmp_path):
    config = dict(TINY, train={**TINY["train"], "epochs": 4, "batch_size": 8})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "benchmarks.cli", "train", str(path), "--no-eval", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(cmd + ["--out", str(killed_out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        states = list(killed_out.glob("runs/*/checkpoints/epoch-*/state.pt"))
        logs = list(killed_out.glob("runs/*/metrics.csv"))
        if states and logs and len(pd.read_csv(logs[0])) >= 1:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("training never wrote its first checkpoint")
    time.sleep(0.2)  # land inside a later epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_at_kill = len(pd.read_csv(next(killed_out.glob("runs/*/metrics.csv"))))
    assert rows_at_kill < 4, "the run finished before it was killed; nothing was tested"
    subprocess.run(cmd + ["--out", str(killed_out)], env=env, check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(clean_out)], env=env, check=True, capture_output=True)
    killed = pd.read_csv(next(killed_out.glob("runs/*/metrics.csv"))).drop(columns=["epoch_seconds"])
    clean = pd.read_csv(next(clean_out.glob("runs/*/metrics.csv"))).drop(columns=["epoch_seconds"])
    pd.testing.assert_frame_equal(killed, clean)
    assert sha256_file(next(killed_out.glob("runs/*/checkpoints/best.safetensors"))) == sha256_file(
        next(clean_out.glob("runs/*/checkpoints/best.safetensors"))
    )


KILL_AT_STEP = """
import json, os, signal, sys
from benchmarks.config import resolve_config
from benchmarks.engine import Trainer, checkpoint
target, steps = int(sys.argv[2]), []
def kill_at(label):
    steps.append(label)
    if len(steps) == target:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.WRITE_HOOK = kill_at
cfg = resolve_config(json.loads(sys.argv[1]))
Trainer(cfg, seed=0, runs_root=sys.argv[3], device="cpu", progress=False, log=lambda m: None).fit()
"""


def _outcome(trainer: Trainer) -> tuple[pd.DataFrame, str, list[str]]:
    checkpoints = trainer.run.checkpoint_dir
    leftovers = sorted(p.name for p in checkpoints.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))
    return _metrics(trainer), sha256_file(checkpoints / "best.safetensors"), leftovers


@pytest.mark.slow
def test_a_kill_at_every_checkpoint_write_step_resumes_bit_identically(tmp_path):
    """SIGKILL injected (through checkpoint.WRITE_HOOK, not a timer) after each write step of
    every epoch's commit; the resumed run equals the uninterrupted one, bit for bit."""
    import json

    from benchmarks.engine import checkpoint

    data = dict(TINY, train={**TINY["train"], "epochs": 2})
    steps: list[str] = []
    checkpoint.WRITE_HOOK = steps.append
    try:
        clean = _outcome(_train(tmp_path / "clean", data=data))
    finally:
        checkpoint.WRITE_HOOK = None
    assert clean[2] == [], f"temporary files survived a finished run: {clean[2]}"
    assert steps.count("commit") == 2 and len(steps) >= 20, steps
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k, label in enumerate(steps, start=1):
        out = tmp_path / f"kill{k}"
        proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP, json.dumps(data), str(k), str(out)],
                              env=env, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == -signal.SIGKILL, f"step {k} ({label}) was not reached: {proc.stderr[-500:]}"
        resumed = _outcome(_train(out, data=data))
        assert resumed[1] == clean[1], f"kill after step {k} ({label}): different selected weights"
        pd.testing.assert_frame_equal(resumed[0], clean[0], obj=f"metrics after a kill at step {k} ({label})")
        assert resumed[2] == [], f"kill after step {k} ({label}): left {resumed[2]}"


def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    data = dict(TINY, train={**TINY["train"], "epochs": 2})
    clean = _outcome(_train(tmp_path / "clean", data=data))
    trainer = _train(tmp_path / "broken", data=data)
    newest = sorted(trainer.run.checkpoint_dir.glob("epoch-*"))[-1]
    (newest / "last.safetensors").write_bytes(b"truncated")
    messages: list[str] = []
    cfg = resolve_config(data)
    Trainer(cfg, seed=0, runs_root=tmp_path / "broken", device="cpu", progress=False, log=messages.append).fit()
    assert any("does not match its sha256" in m and "falling back" in m for m in messages), messages
    metrics, best, leftovers = _outcome(trainer)
    pd.testing.assert_frame_equal(metrics, clean[0])
    assert best == clean[1] and leftovers == []


@register_method
class _ExplodingMethod(Method):
    """Test method whose loss becomes NaN in the second epoch."""

    name = "_test_exploding"

    def loss(self, model, images, targets, ctx):
        loss, logs = super().loss(model, images, targets, ctx)
        if ctx.epoch == 1:
            loss = loss * float("nan")
        return loss, logs


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = resolve_config({**TINY, "method": "_test_exploding"})
    trainer = Trainer(cfg, seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at stage 'train', epoch 2") as info:
        trainer.fit()
    assert "last good checkpoint is kept at" in str(info.value)
    kept = Path(str(info.value).split("kept at ")[1].split(" (")[0])
    assert kept.is_file(), "the message must name a checkpoint that exists"
    meta = yaml.safe_load(kept.with_suffix(".json").read_text())["meta"]
    assert meta["epoch"] == 1


def test_stages_run_in_order_and_select_on_the_last(tmp_path):
    data = {**TINY, "stages": [{"name": "pretrain", "epochs": 1}, {"name": "finetune", "epochs": 2, "optimizer": {"name": "sgd", "lr": 0.01}}]}
    trainer = _train(tmp_path, data=data)
    log = pd.read_csv(trainer.run.metrics_log)
    assert list(log["stage"]) == ["pretrain", "finetune", "finetune"]
    assert yaml.safe_load((trainer.run.checkpoint_dir / "best.json").read_text())["meta"]["stage"] == "finetune"


def test_epoch_order_depends_only_on_seed_stage_epoch():
    class _DS(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), i

    first = [t.tolist() for _, t in train_batches(_DS(), 4, epoch_generator(0, 0, 3))]
    again = [t.tolist() for _, t in train_batches(_DS(), 4, epoch_generator(0, 0, 3))]
    other = [t.tolist() for _, t in train_batches(_DS(), 4, epoch_generator(0, 0, 4))]
    assert first == again and first != other
    assert sorted(sum(first, [])) == list(range(10))
    assert len(first) == num_train_batches(10, 4)
    assert num_train_batches(9, 4) == 2  # the single leftover sample is dropped (BatchNorm)


def test_crop_flip_keeps_shape_and_content_range():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    out = augment_batch(images, "crop_flip", epoch_generator(1, 0, 0))
    assert out.shape == images.shape
    assert set(out.unique().tolist()) <= set(images.unique().tolist()) | {0.0}


def test_data_on_device_does_not_change_a_runs_numbers(tmp_path):
    """`train.data_on_device` moves the splits once; batches and augmentation draws stay the
    CPU generator's, so the metrics are those of the default (on a CPU the switch is a no-op;
    the CUDA test below compares the two on a GPU)."""
    crop = ["train.augment=crop_flip"]
    a = _train(tmp_path / "a", overrides=crop)
    b = _train(tmp_path / "b", overrides=[*crop, "train.data_on_device=true"])
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_data_on_device_on_a_gpu_gives_the_batches_of_the_host(tmp_path):
    from benchmarks.data import load_split
    from benchmarks.engine.loop import on_device

    split = load_split("digits", "train")
    moved = on_device(split, torch.device("cuda"))
    assert moved.images.is_cuda and moved.targets.is_cuda
    host = list(train_batches(split, 32, epoch_generator(0, 0, 0), "crop_flip"))
    device = list(train_batches(moved, 32, epoch_generator(0, 0, 0), "crop_flip"))
    for (x, y), (xd, yd) in zip(host, device, strict=True):
        assert torch.equal(x, xd.cpu()) and torch.equal(y, yd.cpu())
