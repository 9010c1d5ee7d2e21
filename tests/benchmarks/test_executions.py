"""GatedConv2d's executions in the sparse engine (grouped by pattern, union of kept channels,
dense then masked): each gives the masked engine's output, the trace records what each really
ran, and `fastest` picks by the device's cost model while `exact` never trades MACs for speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from benchmarks import routing
from benchmarks.routing import EXECUTIONS, ExecutionCosts, GatedConv2d, set_execution, trace


@pytest.fixture
def layer():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(12)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 1.5)
    return GatedConv2d(nn.Conv2d(8, 12, 3, padding=1, bias=False), norm, nn.ReLU()).eval()


def _inputs(n: int = 10, shared: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, 6, 6, generator=g)
    gate = torch.rand(n, 12, generator=g) * (torch.rand(n, 12, generator=g) > 0.4)
    in_mask = torch.rand(n, 8, generator=g) > 0.3
    if shared:
        gate, in_mask = gate[:1].expand(n, -1).clone(), in_mask[:1].expand(n, -1).clone()
    x = x * in_mask[:, :, None, None]  # the previous layer's dropped channels are zero
    return x, gate, in_mask


def _forced(layer, execution, monkeypatch):
    layer.execution = "fastest"
    monkeypatch.setattr(layer, "_choose", lambda *a: execution)
    return layer


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_every_execution_gives_the_masked_output(layer, execution, monkeypatch):
    x, gate, in_mask = _inputs()
    expected = layer.set_engine("masked")(x, gate, in_mask)
    layer.set_engine("sparse")
    got = _forced(layer, execution, monkeypatch)(x, gate, in_mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_trace_records_what_each_execution_ran(layer, monkeypatch):
    x, gate, in_mask = _inputs()
    layer.set_engine("sparse")
    n, pp = x.shape[0], 6 * 6 * 9
    own = (gate != 0).sum(1) * in_mask.sum(1) * pp
    union = int((gate != 0).any(0).sum()) * int(in_mask.any(0).sum()) * pp
    expected = {"grouped": own, "union": torch.full((n,), union), "dense": torch.full((n,), 12 * 8 * pp)}
    for execution in EXECUTIONS:
        with trace(batch_size=n) as t:
            _forced(layer, execution, monkeypatch)(x, gate, in_mask)
        assert torch.equal(t.macs_executed, expected[execution]), execution
        assert torch.equal(t.macs_theoretical, own), execution  # the decisions' cost, whatever ran
        assert t.executions == {layer._name(): {execution: 1}}
        assert torch.equal(t.channels_kept[layer._name()], (gate != 0).sum(1))


def test_exact_never_trades_macs_for_speed(layer):
    x, gate, in_mask = _inputs()
    layer.set_engine("sparse")
    assert layer.execution == "exact"
    with trace(batch_size=len(x)) as t:
        layer(x, gate, in_mask)
    assert torch.equal(t.macs_executed, t.macs_theoretical)
    assert list(t.executions[layer._name()]) == ["grouped"]
    with trace(batch_size=1) as t1:
        layer(x[:1], gate[:1], in_mask[:1])
    assert list(t1.executions[layer._name()]) == ["sliced"]


def test_fastest_follows_the_cost_model(layer, monkeypatch):
    layer.set_engine("sparse")
    set_execution(layer, "fastest")
    x, gate, in_mask = _inputs()  # ten rows, ten patterns
    monkeypatch.setitem(routing._EXECUTION_COSTS, "cpu", ExecutionCosts(call_s=1e-3, mac_s=1e-12))
    assert layer._choose(x, gate != 0, in_mask) == "dense"  # calls dominate: one call wins
    monkeypatch.setitem(routing._EXECUTION_COSTS, "cpu", ExecutionCosts(call_s=1e-9, mac_s=1e-6))
    assert layer._choose(x, gate != 0, in_mask) == "grouped"  # MACs dominate: compute only what is kept
    xs, gs, ms = _inputs(shared=True)
    monkeypatch.setitem(routing._EXECUTION_COSTS, "cpu", ExecutionCosts(call_s=1e-3, mac_s=1e-7))
    assert layer._choose(xs, gs != 0, ms) == "grouped"  # one pattern: grouped is one sliced call
    narrow = (gate != 0) & (torch.arange(12) < 6)  # every row keeps some of the first six channels
    narrow[:, 0] = True
    assert layer._choose(x, narrow, torch.ones_like(in_mask)) == "union"  # ten patterns, half the channels in all


def test_set_execution_refuses_an_unknown_mode(layer):
    with pytest.raises(Exception, match="execution mode"):
        set_execution(layer, "quickest")


def test_calibration_measures_positive_costs_and_installs_them(monkeypatch):
    monkeypatch.setitem(routing._EXECUTION_COSTS, "cpu", routing._EXECUTION_COSTS["cpu"])
    costs = routing.calibrate_executions("cpu", repeats=2)
    assert costs.call_s > 0 and costs.mac_s > 0 and costs.source == "calibrated on cpu"
    assert routing.execution_costs("cpu") is costs


def test_latency_times_the_fastest_execution_when_asked(monkeypatch):
    from benchmarks.latency import FASTEST_ENGINE, LatencyConfig, model_engines, prepare_model
    from tests.benchmarks.toy_models import ToyLCResNet

    model = ToyLCResNet(depth=20, cnet=True)
    assert model_engines(model) == ("masked", "sparse")
    assert model_engines(model, [FASTEST_ENGINE]) == (FASTEST_ENGINE,)
    prepare_model(model, FASTEST_ENGINE, LatencyConfig())
    gated = [m for m in model.modules() if isinstance(m, GatedConv2d)]
    assert gated and all(m.engine == "sparse" and m.execution == "fastest" for m in gated)
    prepare_model(model, "sparse", LatencyConfig())
    assert all(m.execution == "exact" for m in gated)


@pytest.mark.parametrize("float_gate", [True, False])
def test_gated_pair_hands_the_kept_channels_over_compactly_with_the_same_result_and_trace(float_gate):
    from benchmarks.routing import gated_pair

    torch.manual_seed(0)
    first = GatedConv2d(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(), unit="a").eval()
    second = GatedConv2d(nn.Conv2d(12, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), unit="b").eval()
    x = torch.randn(1, 8, 6, 6)
    keep = torch.rand(1, 12, generator=torch.Generator().manual_seed(2)) > 0.5
    gate = keep * torch.rand(1, 12) if float_gate else keep
    for layer in (first, second):
        layer.set_engine("sparse")
    with torch.no_grad(), trace(batch_size=1) as unpaired:
        expected = second(first(x, gate), None, in_mask=gate != 0)
    with torch.no_grad(), trace(batch_size=1) as paired:
        got = gated_pair(first, second, x, gate)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(paired.macs_executed, unpaired.macs_executed)
    assert torch.equal(paired.macs_theoretical, unpaired.macs_theoretical)
    assert {k: v.tolist() for k, v in paired.channels_kept.items()} == {k: v.tolist() for k, v in unpaired.channels_kept.items()}
    assert paired.executions == unpaired.executions == {"a": {"sliced": 1}, "b": {"sliced": 1}}


@pytest.mark.parametrize("chosen", EXECUTIONS)
def test_gated_pair_on_a_batch_chooses_once_and_runs_and_traces_what_the_two_calls_do(chosen, monkeypatch):
    from benchmarks.routing import gated_pair

    torch.manual_seed(0)
    first = GatedConv2d(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(), unit="a").eval()
    second = GatedConv2d(nn.Conv2d(12, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), unit="b").eval()
    x, gate, _ = _inputs(10)
    for layer in (first, second):
        layer.set_engine("sparse")
        _forced(layer, chosen, monkeypatch)
    with torch.no_grad(), trace(batch_size=10) as unpaired:
        expected = second(first(x, gate), None, in_mask=gate != 0)
    with torch.no_grad(), trace(batch_size=10) as paired:
        got = gated_pair(first, second, x, gate)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for key in ("macs_executed", "macs_theoretical"):
        assert torch.equal(getattr(paired, key), getattr(unpaired, key))
    assert {k: v.tolist() for k, v in paired.channels_kept.items()} == {k: v.tolist() for k, v in unpaired.channels_kept.items()}
    assert paired.executions == unpaired.executions == {"a": {chosen: 1}, "b": {chosen: 1}}
