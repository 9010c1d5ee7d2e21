"""CPU micro-benchmarks of the latency harness's subjects (pytest-benchmark, `-m benchmark`),
and the block-skipping toy model behind the realization-ratio acceptance figure.

    pytest -m benchmark tests/benchmarks/test_bench_latency.py      # micro-benchmarks
    python -m tests.benchmarks.test_bench_latency results/latency   # the acceptance figure

The toy: 8 equal residual conv blocks. A deterministic, content-based gate (is the top half of
the image brighter than the bottom half?) sends each sample through the even blocks or the odd
ones, so every sample skips exactly half of the block MACs, through benchmarks.routing's
sample routing. Its static backbone is the same network running all 8 blocks, same weights.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

from benchmarks import latency as lat
from benchmarks import routing


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity, then ReLU: a CIFAR ResNet basic block."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class BlocksNet(nn.Module):
    """The static backbone: stem, `depth` equal blocks, pooled linear head."""

    def __init__(self, width: int = 32, depth: int = 8, in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():  # non-trivial statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.0)
                m.running_var.uniform_(0.5, 2.0)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def top_heavy(x: torch.Tensor) -> torch.Tensor:
    """Per sample: is the top half of the image brighter than the bottom half? Content-based,
    deterministic, and a function of the sample alone (batch invariant)."""
    half = x.shape[2] // 2
    return x[:, :, :half].mean((1, 2, 3)) > x[:, :, half:].mean((1, 2, 3))


class SkipHalfNet(routing.DynamicModule):
    """`BlocksNet` whose samples run either the even or the odd blocks (half of them)."""

    def __init__(self, backbone: BlocksNet):
        super().__init__()
        self.stem, self.blocks, self.fc = backbone.stem, backbone.blocks, backbone.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even = top_heavy(x)
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = self.route(block, h, even if i % 2 == 0 else ~even, unit=f"blocks.{i}")
        return self.fc(h.mean((2, 3)))


def toy_pair(seed: int = 0, **kwargs) -> tuple[SkipHalfNet, BlocksNet]:
    torch.manual_seed(seed)
    backbone = BlocksNet(**kwargs).eval()
    return SkipHalfNet(backbone).eval(), backbone


# --- micro-benchmarks -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_batch() -> torch.Tensor:
    return lat.latency_sample_set("digits", count=64).images


@pytest.mark.benchmark
@pytest.mark.parametrize("batch_size", [1, 64])
def test_bench_static_backbone(benchmark, digits_batch, batch_size):
    _, backbone = toy_pair(width=16)
    x = digits_batch[:batch_size]
    with lat.pinned_threads(1), torch.inference_mode():
        out = benchmark(backbone, x)
    assert out.shape == (batch_size, 10)


@pytest.mark.benchmark
@pytest.mark.parametrize("engine", routing.ENGINES)
@pytest.mark.parametrize("batch_size", [1, 64])
def test_bench_skip_half(benchmark, digits_batch, batch_size, engine):
    model, backbone = toy_pair(width=16)
    routing.set_engine(model, engine)
    x = digits_batch[:batch_size]
    with lat.pinned_threads(1), torch.inference_mode():
        out = benchmark(model, x)
        reference = model.set_engine("masked")(x)
    assert torch.allclose(out, reference, atol=1e-5)  # both engines compute the same thing


# --- the acceptance figure ------------------------------------------------------------------


def realization_figure(out_dir: str, batch_sizes=(1, 64), repeats: int = 50) -> list[dict]:
    """Realization ratio of `SkipHalfNet` (sparse engine) over `BlocksNet`, on CPU, one thread,
    on 256 Fashion-MNIST test images; writes the CSVs under `out_dir`."""
    from pathlib import Path

    model, backbone = toy_pair()
    samples = lat.latency_sample_set("fashion-mnist")
    config = lat.LatencyConfig(batch_sizes=tuple(batch_sizes), threads=1, repeats=repeats)
    result = lat.measure_realization(
        model, backbone, samples, "toy_skip_half", "toy_blocks8", config, engines=("sparse",),
        progress=None,
    )
    out = Path(out_dir)
    lat.write_measurements(out, result.static + result.dynamic, "realization_toy_latency.csv")
    lat.write_rows(out / "realization_toy.csv", result.rows)
    return result.rows


if __name__ == "__main__":
    rows = realization_figure(sys.argv[1] if len(sys.argv) > 1 else "results/latency")
    print(lat.format_table(rows, ("batch_size", "engine", "latency_ms", "baseline_latency_ms",
                                  "speedup", "macs_reduction", "realization_ratio",
                                  "preempted_fraction", "load_1m_start")))
