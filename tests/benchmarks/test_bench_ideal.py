"""The project against a hand-written implementation of the same decisions (issue: skipped work
that saves its share of time). For LC-Net L, C and LC on ResNet-56 at batch 1 and 64: the
project (sparse engine, `exact` and `fastest` executions), the ideal (`ideal_lcnet`: plain
PyTorch, the same gate heads and decisions) and the oracle (the ideal with the decisions
precomputed), interleaved in one process over 10 rounds, real Fashion-MNIST (or digits) test
images, one thread. Prints project ÷ ideal (median and range over rounds) and the realization
ratios of project and oracle (speed-up over the static ResNet-56 ÷ MACs reduction). Run with
`tox -e bench -- tests/benchmarks/test_bench_ideal.py`, or as a script for the whole table:
`python -m tests.benchmarks.test_bench_ideal`.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers
from benchmarks.registry import create_model
from benchmarks.routing import set_engine, set_execution, trace
from tests.benchmarks.ideal_lcnet import ideal_forward, record_decisions
from tests.benchmarks.test_bench_routing import _images

pytestmark = pytest.mark.benchmark

ROUNDS = 10


def measure(mode: str, batch: int, rounds: int = ROUNDS) -> dict[str, float]:
    torch.manual_seed(0)
    x = _images(batch)
    model = create_model(f"lcnet_{mode}_cifar_resnet56", num_classes=10, in_chans=1).eval()
    calib = _images(96, "val")
    calibrate_batchnorm(model, calib)
    centre_controllers(model, calib)
    static = create_model("cifar_resnet56", num_classes=10, in_chans=1).eval()
    set_engine(model, "sparse")
    with torch.no_grad(), trace(batch_size=batch) as t:
        reference = model(x)
    decisions = record_decisions(model, x)
    torch.testing.assert_close(ideal_forward(model, x), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ideal_forward(model, x, decisions), reference, rtol=1e-4, atol=1e-4)

    def project(execution: str):
        def run():
            set_execution(model, execution)
            with torch.no_grad():
                return model(x)
        return run

    def static_run():
        with torch.no_grad():
            return static(x)

    runs = {"project": project("exact"), "project_fastest": project("fastest"), "ideal": lambda: ideal_forward(model, x),
            "oracle": lambda: ideal_forward(model, x, decisions), "static": static_run}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    repeats = 20 if batch == 1 else 1  # a batch-1 call is short: time 20 in a row
    for r in range(rounds + 2):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            if r >= 2:
                times[name].append((time.perf_counter() - t0) / repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [p / i for p, i in zip(times["project"], times["ideal"], strict=True)]
    reduction = 125_485_696 / float(t.macs_theoretical.float().mean())
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


def _line(mode: str, batch: int, m: dict[str, float]) -> str:
    return (f"LC-Net {mode.upper():2s} b{batch:<3d} project/ideal {m['project_over_ideal']:.2f} "
            f"[{m['project_over_ideal_min']:.2f}, {m['project_over_ideal_max']:.2f}]  fastest/ideal "
            f"{m['fastest_over_ideal']:.2f}  realization project {m['realization_project']:.2f} "
            f"fastest {m['realization_fastest']:.2f} ideal {m['realization_ideal']:.2f} oracle "
            f"{m['realization_oracle']:.2f}  (MACs reduction {m['macs_reduction']:.2f})")  # fmt: skip


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("mode", ["l", "c", "lc"])
def test_project_against_the_hand_written_implementation(benchmark, mode, batch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = measure(mode, batch)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(m)
    print("\n" + _line(mode, batch, m))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert m["project_over_ideal"] < 5  # reported, not gated: the machine is shared


if __name__ == "__main__":
    torch.set_num_threads(1)
    for mode in ("l", "c", "lc"):
        for batch in (1, 64):
            print(_line(mode, batch, measure(mode, batch)), flush=True)
