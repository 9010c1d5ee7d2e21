"""Trace overhead: evaluation of a ResNet-56-sized model with and without `routing.trace()`.

Real test images at CIFAR resolution (Fashion-MNIST padded to 32×32 where the data is
installed, else digits padded to 32×32), batches of 64 and of 1, CPU, one thread, eval mode
under no_grad. Each round runs a new batch, as a measurement run sees its inputs (a dynamic
model takes new paths, and its plain time changes with them), through every call of the round;
the calls are interleaved (their order rotated each round) so that machine noise hits them
alike, and the median of the per-round ratios is reported with its 10th-90th percentile range
(targets: <= 1.05 at batch 1, <= 1.02 at batch 64). Beside it, the best case: one
batch over and over, every path met before (`one batch repeated`). The traced call includes
reading the results as the cost harness reads them (`value_table()`, `macs_by_kind_total`), and
the trace records no decision margins, which the harness never reads (`properties/plain`: the
same trace with margins recorded, reading `macs_executed`, `macs_controller` and
`units_executed`, a tensor per value); the trace counts with its default (`functions`) counter,
as the harness traces: with a measurement run's cache and the
model, so that the counts of the model's static parts, and of its dynamic modules' own code
path by path, are replayed (`traced/plain`); the same trace intercepting every call is
reported beside it (`intercepted/plain`), and the trace with no counter at all (`no
counter/plain`: what the routing records and reading them cost by themselves). Models: the static
`cifar_resnet56`, the ResNet-56-sized toy L-Net (block skipping through sample routing) and
LC-Net L on ResNet-56 (controllers centred on val images so that about half the blocks run;
sparse engine). Run with `tox -e bench` (or `pytest -m benchmark --benchmark-only`).

At batch 64, 60 rounds leave the median within a few percent on a shared machine (the static
network's has read 0.97–1.03); `python -m tests.benchmarks.test_bench_routing --pair 64 300`
times traced against plain alone over 300 rounds, a new batch of training images each.
"""

from __future__ import annotations

import itertools
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
    "lcnet_l_cifar_resnet56": lambda: create_model("lcnet_l_cifar_resnet56", num_classes=10, in_chans=1),
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
    elif name.startswith("lcnet"):
        from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers

        calibrate_batchnorm(model, _images(96, "val"))
        centre_controllers(model, _images(96, "val"))
        set_engine(model, "sparse")
    return model


def interleaved_times(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call in each round, the calls interleaved round by round and their order
    rotated from one round to the next (no call always follows the same one)."""
    names = list(calls)
    for _ in range(2):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ratio_over_rounds(times: dict[str, list[float]], name: str, reference: str = "plain") -> tuple[float, float, float]:
    """Median, 10th and 90th percentile of `name`'s time over `reference`'s, round by round: a
    round pairs the calls, so that noise drifting on a shared machine hits both alike."""
    ratios = sorted(a / b for a, b in zip(times[name], times[reference], strict=True))
    deciles = statistics.quantiles(ratios, n=10)
    return statistics.median(ratios), deciles[0], deciles[-1]


def _on_each(call: Callable[[torch.Tensor], object], batches: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """`call` on the next batch at each call (round-robin)."""
    sequence = itertools.cycle(batches)
    return lambda: call(next(sequence))


@pytest.mark.parametrize("batch", [64, 1])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_trace_overhead(benchmark, name, batch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(name)
        rounds = 60 if batch > 1 else 500
        # a new batch every round, the same one for every call of the round (a measurement run
        # sees each input once: a dynamic model's paths are new, and so is its plain time)
        batches = tuple(b for b in _images(batch * (rounds + 2)).split(batch) if len(b) == batch)
        first = batches[0]
        cache: dict = {}  # one measurement run's cache, as the harness keeps it

        def plain(x):
            with torch.no_grad():
                return model(x)

        def traced(x):
            with torch.no_grad(), trace(batch_size=batch, cache=cache, model=model, margins=False) as t:
                model(x)
            return t.value_table(), t.macs_by_kind_total

        def properties(x):
            with torch.no_grad(), trace(batch_size=batch, cache=cache, model=model) as t:
                model(x)
            return t.macs_executed, t.macs_controller, t.units_executed

        def intercepted(x):
            with torch.no_grad(), trace(batch_size=batch, margins=False) as t:
                model(x)
            return t.value_table(), t.macs_by_kind_total

        def no_counter(x):
            with torch.no_grad(), trace(batch_size=batch, counter=None, margins=False) as t:
                model(x)
            return t.value_table(), t.macs_by_kind_total

        assert torch.equal(traced(first)[0][0], intercepted(first)[0][0])
        calls = {"plain": plain, "traced": traced, "properties": properties, "intercepted": intercepted,
                 "no_counter": no_counter}  # fmt: skip
        times = interleaved_times({key: _on_each(call, batches) for key, call in calls.items()}, rounds)
        # the best case beside it: one batch over and over (every path met before)
        same = interleaved_times({"plain": lambda: plain(first), "traced": lambda: traced(first)}, rounds)
        ratio, low, high = ratio_over_rounds(times, "traced")
        full, floor = ratio_over_rounds(times, "intercepted")[0], ratio_over_rounds(times, "no_counter")[0]
        by_properties = ratio_over_rounds(times, "properties")[0]
        repeated = ratio_over_rounds(same, "traced")[0]
        plain_ms, traced_ms = statistics.median(times["plain"]) * 1e3, statistics.median(times["traced"]) * 1e3
        benchmark.extra_info.update(
            {"model": name, "batch": batch, "rounds": rounds, "plain_ms": plain_ms, "traced_ms": traced_ms,
             "overhead_ratio": ratio, "overhead_ratio_p10": low, "overhead_ratio_p90": high,
             "intercepted_ratio": full, "no_counter_ratio": floor, "repeated_input_ratio": repeated,
             "properties_ratio": by_properties}
        )  # fmt: skip
        print(f"\n{name} batch {batch}: plain {plain_ms:.2f} ms, traced {traced_ms:.2f} ms, traced/plain "
              f"{ratio:.3f} (p10-p90 {low:.3f}-{high:.3f} over {rounds} rounds; one batch repeated: "
              f"{repeated:.3f}), properties/plain {by_properties:.3f}, intercepted/plain {full:.3f}, "
              f"no counter/plain {floor:.3f}")
        benchmark.pedantic(lambda: traced(first), rounds=3, iterations=1)
    finally:
        torch.set_num_threads(threads)
    # generous on a shared machine; the targets are what gets reported
    assert ratio < (1.5 if batch > 1 else 2.5)


def traced_over_plain(name: str, batch: int, rounds: int) -> tuple[float, float, float]:
    """traced ÷ plain alone (median, 10th and 90th percentile of per-round ratios), a new batch
    of training images every round: at batch 64 one call's time moves by ±10–15% from round to
    round on a shared machine, so resolving a 1.02 target takes a few hundred rounds, more than
    the test split holds batches of (a batch met again has its paths counted before)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(name)
        batches = tuple(b for b in _images(batch * (rounds + 2), "train").split(batch) if len(b) == batch)
        if len(batches) < rounds + 2:
            raise SystemExit(f"{len(batches)} batches of {batch} for {rounds} rounds: fewer rounds, please")
        cache: dict = {}

        def plain(x: torch.Tensor) -> object:
            with torch.no_grad():
                return model(x)

        def traced(x: torch.Tensor) -> object:
            with torch.no_grad(), trace(batch_size=batch, cache=cache, model=model, margins=False) as t:
                model(x)
            return t.value_table(), t.macs_by_kind_total

        calls = {"plain": _on_each(plain, batches), "traced": _on_each(traced, batches)}
        return ratio_over_rounds(interleaved_times(calls, rounds), "traced")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    # python -m tests.benchmarks.test_bench_routing [model ...]            the whole benchmark
    # python -m tests.benchmarks.test_bench_routing --pair BATCH ROUNDS [model ...]
    #                                                                traced ÷ plain alone
    import sys

    class _Print:
        extra_info: dict = {}

        def pedantic(self, *args: object, **kwargs: object) -> None:
            pass

    if sys.argv[1:2] == ["--pair"]:
        size, count = int(sys.argv[2]), int(sys.argv[3])
        for model_name in sys.argv[4:] or sorted(MODELS):
            median, low, high = traced_over_plain(model_name, size, count)
            print(f"{model_name} batch {size}: traced/plain {median:.3f} (p10-p90 {low:.3f}-{high:.3f} "
                  f"over {count} rounds, a new batch each)", flush=True)
    else:
        for model_name in sys.argv[1:] or sorted(MODELS):
            for size in (1, 64):
                test_trace_overhead(_Print(), model_name, size)
