"""The project against a hand-written implementation of the same decisions (issue: skipped work
that saves its share of time). For LC-Net L, C and LC on ResNet-56 at batch 1 and 64 and on
ResNet-18 at 224×224 at batch 1: the project (sparse engine, `exact` and `fastest`
executions), the ideal (`reference_impls.lcnet.oracle`: plain PyTorch, the same gate heads and
decisions) and the oracle (the ideal with the decisions precomputed), interleaved in one
process over 10 rounds, real Fashion-MNIST (or digits) test images (fitted to 3×224×224 for
ResNet-18), one thread. Prints project ÷ ideal (median and range over rounds) and the
realization ratios of project and oracle (speed-up over the static backbone ÷ MACs
reduction). Run with `tox -e bench -- tests/benchmarks/test_bench_ideal.py`, or as a script
for the whole table: `python -m tests.benchmarks.test_bench_ideal [cifar_resnet56|resnet18]`."""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch

from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers
from benchmarks.latency import fit_to_shape
from benchmarks.registry import create_model
from benchmarks.routing import set_engine, set_execution, trace
from tests.benchmarks.ideal_lcnet import ideal_forward, record_decisions
from tests.benchmarks.test_bench_routing import _images

pytestmark = pytest.mark.benchmark

ROUNDS = 10


#: backbone -> (input shape, batch-1 calls timed in a row)
BACKBONES = {"cifar_resnet56": ((1, 32, 32), 20), "resnet18": ((3, 224, 224), 3)}


def _inputs(count: int, backbone: str, split: str = "test") -> torch.Tensor:
    """Fashion-MNIST (or digits) images fitted to the backbone's input (ResNet-18: 3×224×224)."""
    images = _images(count, split)
    shape = BACKBONES[backbone][0]
    return images if tuple(images.shape[1:]) == shape else fit_to_shape(images, shape)[0]


def measure(mode: str, batch: int, rounds: int = ROUNDS, backbone: str = "cifar_resnet56") -> dict[str, float]:
    torch.manual_seed(0)
    x = _inputs(batch, backbone)
    in_chans = BACKBONES[backbone][0][0]
    model = create_model(f"lcnet_{mode}_{backbone}", num_classes=10, in_chans=in_chans).eval()
    calib = _inputs(96 if backbone.startswith("cifar") else 32, backbone, "val")
    calibrate_batchnorm(model, calib)
    centre_controllers(model, calib)
    static = create_model(backbone, num_classes=10, in_chans=in_chans).eval()
    with torch.no_grad(), trace(batch_size=batch) as static_trace:
        static(x)
    set_engine(model, "sparse")
    with torch.no_grad(), trace(batch_size=batch) as t:
        reference = model(x)
    decisions = record_decisions(model, x)
    torch.testing.assert_close(ideal_forward(model, x), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ideal_forward(model, x, decisions), reference, rtol=1e-4, atol=1e-4)

    # the `fastest` execution on a copy: switching executions walks every module, which
    # must not land inside the timed calls
    fastest = set_execution(copy.deepcopy(model), "fastest")
    set_execution(model, "exact")

    def project(net: torch.nn.Module):
        def run():
            with torch.no_grad():
                return net(x)
        return run

    def static_run():
        with torch.no_grad():
            return static(x)

    runs = {"project": project(model), "project_fastest": project(fastest), "ideal": lambda: ideal_forward(model, x),
            "oracle": lambda: ideal_forward(model, x, decisions), "static": static_run}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    repeats = BACKBONES[backbone][1] if batch == 1 else 1  # a batch-1 call is short: time a few in a row
    for r in range(rounds + 2):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            if r >= 2:
                times[name].append((time.perf_counter() - t0) / repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [p / i for p, i in zip(times["project"], times["ideal"], strict=True)]
    reduction = float(static_trace.macs_executed.float().mean()) / float(t.macs_theoretical.float().mean())
    return {
        "project_ms": med["project"] * 1e3, "fastest_ms": med["project_fastest"] * 1e3, "ideal_ms": med["ideal"] * 1e3,
        "oracle_ms": med["oracle"] * 1e3, "static_ms": med["static"] * 1e3,
        "project_over_ideal": statistics.median(ratios), "project_over_ideal_min": min(ratios), "project_over_ideal_max": max(ratios),
        "fastest_over_ideal": med["project_fastest"] / med["ideal"],
        "realization_project": med["static"] / med["project"] / reduction,
        "realization_fastest": med["static"] / med["project_fastest"] / reduction,
        "realization_ideal": med["static"] / med["ideal"] / reduction,
        "realization_oracle": med["static"] / med["oracle"] / reduction, "macs_reduction": reduction,
    }  # fmt: skip


def _line(mode: str, batch: int, m: dict[str, float], backbone: str = "cifar_resnet56") -> str:
    return (f"LC-Net {mode.upper():2s} {backbone} b{batch:<3d} project/ideal {m['project_over_ideal']:.2f} "
            f"[{m['project_over_ideal_min']:.2f}, {m['project_over_ideal_max']:.2f}]  fastest/ideal "
            f"{m['fastest_over_ideal']:.2f}  realization project {m['realization_project']:.2f} "
            f"fastest {m['realization_fastest']:.2f} ideal {m['realization_ideal']:.2f} oracle "
            f"{m['realization_oracle']:.2f}  (MACs reduction {m['macs_reduction']:.2f})")  # fmt: skip


CASES = [("cifar_resnet56", 1), ("cifar_resnet56", 64), ("resnet18", 1)]


@pytest.mark.parametrize("backbone, batch", CASES)
@pytest.mark.parametrize("mode", ["l", "c", "lc"])
def test_project_against_the_hand_written_implementation(benchmark, mode, backbone, batch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = measure(mode, batch, backbone=backbone)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(m)
    print("\n" + _line(mode, batch, m, backbone))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert m["project_over_ideal"] < 5  # reported, not gated: the machine is shared


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    chosen = sys.argv[1:] or [b for b, _ in CASES]  # e.g. `resnet18` for those rows only
    for backbone, batch in CASES:
        if backbone in chosen:
            for mode in ("l", "c", "lc"):
                print(_line(mode, batch, measure(mode, batch, backbone=backbone), backbone), flush=True)
