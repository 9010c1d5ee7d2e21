"""Trace overhead: evaluation of a ResNet-56-sized model with and without `routing.trace()`.

A fixed batch of real test images at CIFAR resolution (Fashion-MNIST padded to 32×32 where
the data is installed, else digits padded to 32×32; 64 images, and batch 1), CPU, one thread,
eval mode under no_grad; the plain and traced calls are interleaved so that machine noise hits both alike,
and the ratio of medians is reported (target <= 1.10 at evaluation batch sizes). The traced
call includes reading the per-sample tensors; the trace counts with its default (`functions`)
counter. Models: the static `cifar_resnet56` and the ResNet-56-sized toy L-Net (block skipping through sample
routing, sparse engine). Run with `tox -e bench` (or `pytest -m benchmark --benchmark-only`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

from benchmarks.data import load_split
from benchmarks.registry import create_model
from benchmarks.routing import set_engine, trace
from tests.benchmarks.toy_models import ToyLCResNet, calibrate

pytestmark = pytest.mark.benchmark

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "cifar_resnet56": lambda: create_model("cifar_resnet56", num_classes=10, in_chans=1),
    "toy_lnet_resnet56": lambda: ToyLCResNet(depth=56, cnet=False),
}


def _images(count: int, split: str = "test") -> torch.Tensor:
    """Real evaluation inputs at the resolution a CIFAR ResNet-56 is built for."""
    from benchmarks.data import dataset_status

    name = "fashion-mnist" if dataset_status("fashion-mnist") else "digits"
    return load_split(name, split, options={"pad_to": 32}).images[:count]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    if name.startswith("toy"):
        calibrate(model, _images(96, "val"))
        set_engine(model, "sparse")
    return model


def interleaved_ratio(plain: Callable[[], object], traced: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """(median traced / median plain, median plain s, median traced s), interleaved."""
    for _ in range(2):
        plain()
        traced()
    plain_times, traced_times = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        traced()
        t2 = time.perf_counter()
        plain_times.append(t1 - t0)
        traced_times.append(t2 - t1)
    p, t = statistics.median(plain_times), statistics.median(traced_times)
    return t / p, p, t


@pytest.mark.parametrize("batch", [64, 1])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_trace_overhead(benchmark, name, batch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(name)
        x = _images(batch)

        def plain():
            with torch.no_grad():
                return model(x)

        def traced():
            with torch.no_grad(), trace(batch_size=batch) as t:
                model(x)
            return t.macs_executed, t.macs_controller, t.units_executed

        ratio, p, t = interleaved_ratio(plain, traced, rounds=15 if batch > 1 else 60)
        benchmark.extra_info.update(
            {"model": name, "batch": batch, "plain_ms": p * 1e3, "traced_ms": t * 1e3,
             "overhead_ratio": ratio}
        )
        print(f"\n{name} batch {batch}: plain {p * 1e3:.2f} ms, traced {t * 1e3:.2f} ms, "
              f"traced/plain {ratio:.3f}")
        benchmark.pedantic(traced, rounds=3, iterations=1)
    finally:
        torch.set_num_threads(threads)
    # generous on a shared machine; the target (<= 1.10 at batch 64) is what gets reported
    assert ratio < (1.5 if batch > 1 else 2.5)
