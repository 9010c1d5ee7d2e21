"""Engine overhead: training images/s of the engine's epoch vs a plain PyTorch loop.

Same model, data, batch size, optimizer and order of batches; the two are interleaved so that
machine noise hits both alike, and the ratio of medians is reported (target >= 0.95).
Run with `tox -e bench` (or `pytest -m benchmark --benchmark-only -p no:xdist`).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from benchmarks.config import resolve_config
from benchmarks.engine import Trainer
from benchmarks.engine.batches import epoch_generator, num_train_batches

pytestmark = pytest.mark.benchmark

CONFIG = {
    "name": "bench_engine",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [32, 64], "depth": 2}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "scheduler": {"name": "constant"}},
}


def _setup(tmp_path):
    torch.set_num_threads(1)
    trainer = Trainer(resolve_config(CONFIG), seed=0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    from benchmarks.data import load_split
    from benchmarks.engine.optim import build_optimizer, build_scheduler

    data = load_split("digits", "train")
    model = trainer.method.build_model(trainer.info)
    stage = trainer.method.stages()[0]
    optimizer = build_optimizer(model.parameters(), stage.optimizer)
    steps = num_train_batches(len(data), stage.batch_size)
    scheduler = build_scheduler(optimizer, stage.scheduler, steps, 1)
    return trainer, data, model, stage, optimizer, scheduler, steps


def plain_epoch(model, optimizer, data, batch_size: int, seed: int) -> None:
    model.train()
    order = torch.randperm(len(data), generator=epoch_generator(seed, 0, 0))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < 2:
            break
        loss = F.cross_entropy(model(data.images[index]), data.targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_engine_training_throughput_vs_plain_loop(benchmark, tmp_path):
    trainer, data, model, stage, optimizer, scheduler, steps = _setup(tmp_path)
    last = tmp_path / "last"

    def engine_epoch():
        trainer._train_epoch(model, model, optimizer, scheduler, stage, 0, steps, data, last)

    def plain():
        plain_epoch(model, optimizer, data, stage.batch_size, 0)

    for _ in range(2):  # warm-up both paths
        engine_epoch()
        plain()
    ratios, engine_times, plain_times = [], [], []
    for _ in range(15):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        engine_epoch()
        t2 = time.perf_counter()
        plain_times.append(t1 - t0)
        engine_times.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    ratio = statistics.median(ratios)
    images = len(data)
    benchmark.extra_info.update(
        {
            "engine_images_per_s": images / statistics.median(engine_times),
            "plain_images_per_s": images / statistics.median(plain_times),
            "throughput_ratio_engine_over_plain": ratio,
        }
    )
    print(f"\nengine/plain training throughput ratio: {ratio:.3f} "
          f"(engine {images / statistics.median(engine_times):.0f} img/s, plain {images / statistics.median(plain_times):.0f} img/s)")
    benchmark.pedantic(engine_epoch, rounds=3, iterations=1)
    assert ratio > 0.5, "the engine is more than twice as slow as a plain loop"
