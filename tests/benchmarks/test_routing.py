"""The execution contract (benchmarks.routing): sample routing, channel gating, controllers and
the per-sample trace, checked against an independent counter (torch.utils.flop_counter)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.data import load_split
from benchmarks.errors import DynbenchError
from benchmarks.registry import create_model
from benchmarks.routing import (
    ENGINES,
    IDENTITY,
    Controller,
    DynamicModule,
    GatedConv2d,
    SampleRouter,
    active_trace,
    decide_threshold,
    is_dynamic,
    mark_controller,
    route,
    route_rows,
    set_engine,
    skip,
    trace,
)
from tests.benchmarks.toy_models import TOY_MODELS, IfGatedNet, build_toy
from tests.trace_records import trace_record


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_split("digits", "test").images[:32]


@pytest.fixture(scope="module")
def toys() -> dict[str, nn.Module]:
    return {name: build_toy(name) for name in TOY_MODELS}


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


def traced(model: nn.Module, x: torch.Tensor, engine: str | None = None, counter: str = "modules"):
    if engine is not None:
        set_engine(model, engine)
    with torch.no_grad(), trace(counter=counter) as t:
        out = model(x)
    return out, t


class Recorder(nn.Module):
    """A module that remembers what it was called with."""

    def __init__(self, fn=None):
        super().__init__()
        self.calls: list[torch.Tensor] = []
        self.fn = fn or (lambda x: 2 * x + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x)
        return self.fn(x)


# --- sample routing -------------------------------------------------------------------------


def test_route_runs_the_module_only_on_kept_rows():
    x = torch.arange(12.0).view(4, 3)
    keep = torch.tensor([True, False, True, False])
    module = Recorder()
    out = route(module, x, keep, unit="u")
    assert len(module.calls) == 1 and torch.equal(module.calls[0], x[[0, 2]])
    assert torch.equal(out[[0, 2]], 2 * x[[0, 2]] + 1)
    assert torch.equal(out[[1, 3]], x[[1, 3]])  # identity for skipped rows


def test_route_empty_selection_does_not_run_the_module():
    x = torch.randn(3, 5)
    module = Recorder()
    keep = torch.zeros(3, dtype=torch.bool)
    assert route(module, x, keep) is x
    out = route(module, x, keep, default=-1.0, out_shape=(2,))
    assert module.calls == [] and torch.equal(out, torch.full((3, 2), -1.0))
    out = route(module, x, keep, default=lambda rows: rows[:, :2] * 0)
    assert module.calls == [] and torch.equal(out, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="out_shape"):
        route(module, x, keep, default=0.0, unit="head")


def test_route_full_selection_is_a_plain_call():
    x = torch.randn(3, 5)
    returned = []
    module = Recorder(lambda t: returned.append(t * 3) or returned[-1])
    out = route(module, x, torch.ones(3, dtype=torch.bool))
    assert module.calls[0] is x  # no gather
    assert out is returned[0]  # no scatter


def _defaults(n: int):
    return {
        "identity": IDENTITY,
        "zeros": 0.0,
        "-inf": float("-inf"),
        "tensor": torch.arange(n * 4, dtype=torch.float32).view(n, 4),
        "callable": lambda rows: rows[:, :4].flip(1),
    }


@pytest.mark.parametrize("kind", ["identity", "zeros", "-inf", "tensor", "callable"])
@pytest.mark.parametrize("pattern", ["mixed", "none", "all"])
def test_route_engines_agree_for_every_default(kind, pattern):
    torch.manual_seed(0)
    n = 6
    x = torch.randn(n, 4)
    module = nn.Linear(4, 4)
    keep = {"mixed": torch.tensor([1, 0, 0, 1, 1, 0]), "none": torch.zeros(n), "all": torch.ones(n)}[pattern].bool()
    default = _defaults(n)[kind]
    outs = [
        route(module, x, keep, default=default, engine=engine, out_shape=(4,)) for engine in ENGINES
    ]
    assert torch.equal(outs[0], outs[1])
    expected_skipped = {
        "identity": x, "zeros": torch.zeros(n, 4), "-inf": torch.full((n, 4), float("-inf")),
        "tensor": default, "callable": x.flip(1),
    }[kind]
    assert torch.equal(outs[1][~keep], expected_skipped[~keep])
    with torch.no_grad():
        assert torch.allclose(outs[1][keep], module(x)[keep])


def test_route_takes_extra_per_row_inputs():
    x, s = torch.randn(5, 3), torch.arange(5.0)
    keep = torch.tensor([0, 1, 0, 1, 1]).bool()
    for engine in ENGINES:
        out = route(lambda a, b: a * b[:, None], x, keep, s, engine=engine)
        assert torch.allclose(out[keep], x[keep] * s[keep, None]) and torch.equal(out[~keep], x[~keep])
    with pytest.raises(ValueError, match="per-row input"):
        route(lambda a, b: a, x, keep, torch.ones(4))


def test_route_straight_through_gate_passes_gradients_in_both_engines():
    x = torch.randn(4, 3)
    soft = torch.tensor([0.9, 0.2, 0.7, 0.4], requires_grad=True)
    module = nn.Linear(3, 3)
    grads = []
    for engine in ENGINES:
        hard = (soft > 0.5).float()
        gate = hard + soft - soft.detach()  # forward: 0/1; backward: soft
        out = route(module, x, gate, engine=engine)
        with torch.no_grad():
            expected = torch.where(hard.bool()[:, None], module(x), x)
        assert torch.allclose(out, expected)
        (grad,) = torch.autograd.grad(out.sum(), soft)
        grads.append(grad)
    with torch.no_grad():
        y = module(x)
    masked, sparse = grads
    assert torch.allclose(masked, (y - x).sum(1))  # d/dg [g·y + (1−g)·x]
    assert torch.allclose(sparse[[0, 2]], masked[[0, 2]]) and torch.all(sparse[[1, 3]] == 0)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("decision", [True, False])
def test_a_python_bool_decides_a_one_row_batch_as_a_tensor_does(engine, decision):
    """An executor that branched in Python at batch 1 passes its bool: same output, same trace
    records (inside and outside a trace) as the one-element tensor."""
    x, linear = torch.randn(1, 5), nn.Linear(5, 3)
    outs, records = [], []
    for keep in (decision, torch.tensor([decision])):
        plain = route(linear, x, keep, default=0.0, out_shape=(3,), engine=engine, unit="head")
        with torch.no_grad(), trace(batch_size=1) as t:
            traced = route(linear, x, keep, default=0.0, out_shape=(3,), engine=engine, unit="head")
        outs.append((plain.detach(), traced))
        records.append((t.macs_executed, t.macs_theoretical, t.units_executed["head"]))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(*records, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="a Python bool decides a one-row batch; this batch has 4 rows"):
        route(linear, torch.randn(4, 5), True, engine=engine, unit="head")


def test_skip_records_an_empty_selection_without_a_call():
    module = Recorder()
    with trace(batch_size=2) as by_route:
        route(module, torch.randn(2, 3), torch.zeros(2, dtype=torch.bool), unit="blk")
    with trace(batch_size=2) as by_skip:
        skip("blk")
    skip("blk")  # outside a trace: nothing
    assert module.calls == []
    assert torch.equal(by_skip.units_executed["blk"], by_route.units_executed["blk"])
    assert torch.equal(by_skip.macs_executed, torch.zeros(2, dtype=torch.int64))


def test_route_rows_records_what_route_records_for_the_same_rows():
    """`route_rows` runs a module on rows already gathered and keeps its output compact; in a
    trace the unit and the module's MACs belong to those rows, as with `route`."""
    torch.manual_seed(0)
    linear, x = nn.Linear(5, 3), torch.randn(6, 5)
    keep = torch.tensor([True, False, True, True, False, False])
    rows = keep.nonzero().squeeze(1)
    with torch.no_grad(), trace(batch_size=6) as by_route:
        full = route(linear, x, keep, default=0.0, unit="head")
    with torch.no_grad(), trace(batch_size=6) as by_rows:
        compact = route_rows(linear, rows, x[rows], batch=6, unit="head")
    assert torch.equal(compact, full[rows])
    assert by_rows.macs_executed.tolist() == by_route.macs_executed.tolist() == [15, 0, 15, 15, 0, 0]
    assert torch.equal(by_rows.units_executed["head"], by_route.units_executed["head"])
    with torch.no_grad(), trace(batch_size=6) as every:
        route_rows(linear, None, x, batch=6, unit="head")
    assert every.units_executed["head"].tolist() == [1] * 6
    with torch.no_grad():
        assert torch.equal(route_rows(linear, rows, x[rows], batch=6, unit="head"), compact)  # no trace


def test_route_rejects_bad_decisions():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="unit='blk'.*3 decisions for a batch of 4"):
        route(nn.Identity(), x, torch.ones(3, dtype=torch.bool), unit="blk")
    with pytest.raises(ValueError, match="identity default"):
        route(nn.Linear(2, 5), x, torch.tensor([1, 0, 1, 0]).bool(), unit="head")
    with pytest.raises(DynbenchError, match="unknown engine 'fast'"):
        route(nn.Identity(), x, torch.ones(4, dtype=torch.bool), engine="fast")


def test_sample_router_module_and_unit_names():
    class Net(DynamicModule):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3) for _ in range(2)])
            self.router = SampleRouter(nn.Linear(3, 3))

        def forward(self, x):
            x = self.route(self.blocks[0], x, x[:, 0] > 0)
            x = self.route(self.blocks[1], x, x[:, 1] > 0)
            return self.router(x, x[:, 2] > 0)

    net = Net()
    assert set_engine(net, "masked") is net and net.router.engine == "masked" == net.engine
    assert net.set_engine("sparse") is net and net.router.engine == "sparse"
    with torch.no_grad(), trace() as t:
        net(torch.randn(8, 3))
    assert list(t.units_executed) == ["blocks.0", "blocks.1", "router"]
    assert is_dynamic(net) and not is_dynamic(nn.Linear(2, 2))
    with pytest.raises(DynbenchError, match="unknown engine"):
        set_engine(net, "dense")


# --- channel gating -------------------------------------------------------------------------


def _gated(depthwise: bool, norm: bool, act: bool, seed: int = 0) -> GatedConv2d:
    torch.manual_seed(seed)
    c = 8
    conv = nn.Conv2d(c, c, 3, padding=1, groups=c if depthwise else 1, bias=not norm)
    bn = None
    if norm:
        bn = nn.BatchNorm2d(c)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return GatedConv2d(conv, bn, nn.ReLU() if act else None, unit="g").eval()


def _patterns(n: int, c: int, kind: str, seed: int) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "shared":
        return (torch.rand(1, c, generator=g) > 0.5).expand(n, c).clone()
    mask = torch.rand(n, c, generator=g) > 0.5
    if kind == "mixed_with_empty":
        mask[0] = False
    return mask


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("out_kind,in_kind", [
    ("mixed", "none"), ("none", "mixed"), ("mixed", "mixed"), ("shared", "shared"),
    ("mixed_with_empty", "mixed_with_empty"), ("none", "none"),
])
def test_gated_conv_sparse_equals_masked_and_counts_kept_channels(depthwise, n, out_kind, in_kind):
    layer = _gated(depthwise, norm=True, act=True)
    x = torch.randn(n, 8, 6, 6)
    out_mask = _patterns(n, 8, out_kind, 1)
    in_mask = _patterns(n, 8, in_kind, 2)
    gate = None if out_mask is None else out_mask * torch.rand(n, 8).add(0.5)  # float: scales
    results = {}
    for engine in ENGINES:
        layer.set_engine(engine)
        with torch.no_grad(), trace() as t:
            y = layer(x, gate, in_mask)
        results[engine] = (y, t)
    (ym, tm), (ys, ts) = results["masked"], results["sparse"]
    assert torch.allclose(ym, ys, atol=1e-5)
    if out_mask is not None:
        assert torch.all(ys[~out_mask] == 0)
    # per-sample cost: kept output × kept input channels (depthwise: channels kept on both sides)
    k = 9 * 36
    outs = out_mask.sum(1) if out_mask is not None else torch.full((n,), 8)
    ins = in_mask.sum(1) if in_mask is not None else torch.full((n,), 8)
    if depthwise:
        both = (out_mask if out_mask is not None else torch.ones(n, 8, dtype=torch.bool)) & (
            in_mask if in_mask is not None else torch.ones(n, 8, dtype=torch.bool)
        )
        theoretical = both.sum(1) * k
        executed_sparse = outs * k
    else:
        theoretical = outs * ins * k
        executed_sparse = theoretical
    full = (8 if depthwise else 64) * k
    assert torch.equal(tm.macs_executed, torch.full((n,), full))
    assert torch.equal(tm.macs_theoretical, theoretical) and torch.equal(ts.macs_theoretical, theoretical)
    assert torch.equal(ts.macs_executed, executed_sparse)
    if out_mask is not None:
        assert torch.equal(ts.channels_kept["g"], outs) and torch.equal(tm.channels_kept["g"], outs)


@pytest.mark.parametrize("depthwise", [False, True])
def test_gated_conv_sparse_batch_one_matches_flop_counter(depthwise):
    layer = _gated(depthwise, norm=False, act=True).set_engine("sparse")
    x = torch.randn(1, 8, 5, 5)
    gate = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 0]]).bool()
    in_mask = gate if depthwise else torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1]]).bool()
    with torch.no_grad(), trace() as t:
        layer(x, gate, in_mask)
    fc_layer = lambda v: layer(v, gate, in_mask)  # noqa: E731
    assert int(t.macs_executed[0]) == flop_counter_macs(fc_layer, x)


def test_gated_conv_all_input_channels_dropped_leaves_the_bias():
    layer = _gated(False, norm=False, act=False)
    x = torch.randn(2, 8, 4, 4)
    in_mask = torch.zeros(2, 8, dtype=torch.bool)
    gate = torch.ones(2, 8, dtype=torch.bool)
    outs = [layer.set_engine(e)(x, gate, in_mask) for e in ENGINES]
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(outs[1], layer.conv.bias[None, :, None, None].expand(2, 8, 4, 4))


def test_gated_conv_sparse_refuses_training_with_batchnorm_and_masked_trains():
    layer = _gated(False, norm=True, act=True).train()
    x = torch.randn(2, 8, 4, 4)
    soft = torch.rand(2, 8, requires_grad=True)
    hard = (soft > 0.5).float()
    gate = hard + soft - soft.detach()
    with pytest.raises(RuntimeError, match="masked"):
        layer.set_engine("sparse")(x, gate)
    layer.set_engine("masked")(x, gate).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert layer.conv.weight.grad is not None


def test_gated_conv_rejects_what_it_cannot_slice():
    with pytest.raises(ValueError, match="groups"):
        GatedConv2d(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(TypeError, match="BatchNorm2d"):
        GatedConv2d(nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8))
    layer = GatedConv2d(nn.Conv2d(8, 4, 3), unit="g")
    with pytest.raises(ValueError, match=r"'g': gate must have shape \(2, 4\)"):
        layer(torch.randn(2, 8, 5, 5), torch.ones(2, 8))


# --- controllers ----------------------------------------------------------------------------


def test_gate_feeding_only_an_if_is_counted_as_controller(digits):
    model = IfGatedNet().eval()
    gate = model.gate
    x = digits[:1]
    gate_macs = 4 * 1 * 9 * 64 + 4  # conv 1->4 3x3 on 8x8, linear 4->1
    _, t = traced(model, x)
    assert int(t.macs_controller[0]) == gate_macs
    assert int(t.macs_executed[0]) == flop_counter_macs(model, x)
    assert int(t.macs_executed[0]) > gate_macs
    # the wrapper form counts the same
    model.gate = Controller(nn.Sequential(*gate))
    _, t2 = traced(model, x)
    assert int(t2.macs_controller[0]) == gate_macs
    assert mark_controller(gate) is gate  # idempotent: no second pair of hooks
    _, t3 = traced(nn.Sequential(gate), x)
    assert int(t3.macs_controller[0]) == gate_macs


# --- the contract on every toy model --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_engines_give_identical_predictions_and_routing(toys, digits, name):
    model = toys[name]
    (out_m, tm), (out_s, ts) = (traced(model, digits, e) for e in ENGINES)
    finite = torch.isfinite(out_m)
    assert torch.equal(finite, torch.isfinite(out_s))
    assert torch.allclose(out_m[finite], out_s[finite], atol=1e-4)
    assert torch.equal(out_m.argmax(1), out_s.argmax(1))
    assert tm.units_executed.keys() == ts.units_executed.keys()
    for unit, counts in tm.units_executed.items():
        assert torch.equal(counts, ts.units_executed[unit]), unit
    for unit, kept in tm.channels_kept.items():
        assert torch.equal(kept, ts.channels_kept[unit]), unit
    assert torch.equal(tm.macs_theoretical, ts.macs_theoretical)
    assert torch.equal(ts.macs_executed, ts.macs_theoretical)  # the sparse engine really skips
    assert torch.all(tm.macs_executed >= tm.macs_theoretical)
    decisions = [c for c in ts.units_executed.values()] + [k for k in ts.channels_kept.values()]
    assert any(len(set(d.tolist())) > 1 for d in decisions), "the toy's decisions should vary"


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_sparse_macs_at_batch_one_equal_the_flop_counter(toys, digits, name):
    model = set_engine(toys[name], "sparse")
    for i in (0, 5):
        x = digits[i : i + 1]
        _, t = traced(model, x)
        assert int(t.macs_executed[0]) == flop_counter_macs(model, x), f"sample {i}"


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
@pytest.mark.parametrize("engine", ENGINES)
def test_batch_invariance(toys, digits, name, engine):
    model = toys[name]
    x = digits[:8]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    out_b, tb = traced(model, x[perm], engine)
    for j, i in enumerate(perm.tolist()):
        out_1, t1 = traced(model, x[i : i + 1], engine)
        assert torch.equal(out_1.argmax(1), out_b[j : j + 1].argmax(1))
        assert int(t1.macs_executed[0]) == int(tb.macs_executed[j])
        assert int(t1.macs_theoretical[0]) == int(tb.macs_theoretical[j])
        assert int(t1.macs_controller[0]) == int(tb.macs_controller[j])
        for unit, counts in tb.units_executed.items():
            assert int(t1.units_executed.get(unit, torch.zeros(1))[0]) == int(counts[j]), unit


@pytest.mark.parametrize("name", ["lcnet", "hierarchical", "nested", "fbs"])
def test_module_and_function_counters_agree(toys, digits, name):
    model = set_engine(toys[name], "sparse")
    _, tm = traced(model, digits[:16], counter="modules")
    _, tf = traced(model, digits[:16], counter="functions")
    assert torch.equal(tm.macs_executed, tf.macs_executed)
    assert torch.equal(tm.macs_controller, tf.macs_controller)
    assert tf.other_ops and not tm.other_ops


def test_nested_routing_records_inner_units_only_for_rows_that_reached_them(toys, digits):
    model = toys["nested"]
    for engine in ENGINES:
        _, t = traced(model, digits, engine)
        outer, inner = t.units_executed["outer"], t.units_executed["inner"]
        assert torch.all(inner <= outer) and outer.sum() > inner.sum() > 0


# --- the trace itself -----------------------------------------------------------------------


def test_trace_leaves_no_hooks_and_does_not_nest(toys, digits):
    hooks = dict(nn.modules.module._global_forward_hooks)
    model = toys["lcnet"]
    with pytest.raises(RuntimeError, match="boom"), trace():
        model(digits[:2])
        raise RuntimeError("boom")
    assert active_trace() is None and dict(nn.modules.module._global_forward_hooks) == hooks
    with trace(counter="functions"), pytest.raises(RuntimeError, match="do not nest"), trace():
        pass
    assert active_trace() is None
    assert not torch.overrides._is_torch_function_mode_enabled()
    t = trace()
    with t:
        pass
    with pytest.raises(RuntimeError, match="one forward pass"), t:
        pass


def test_trace_results_and_batch_size(toys, digits):
    model = set_engine(toys["lcnet"], "sparse")
    with torch.no_grad(), trace() as t:
        model(digits[:5])
    assert t.batch_size == 5
    frame = t.per_sample(offset=10)
    assert list(frame.columns) == ["macs_executed", "macs_theoretical", "macs_controller", "units_executed"]
    assert list(frame.index) == list(range(10, 15))
    assert frame["units_executed"].tolist() == sum(t.units_executed.values()).tolist()
    assert t.unit_table().shape == (5, len(t.units_executed))
    assert sum(t.macs_by_kind_total.values()) == int(t.macs_executed.sum())
    with trace(counter=None) as t0:  # routing only
        model(digits[:5])
    assert torch.all(t0.macs_executed == 0) and t0.units_executed.keys() == t.units_executed.keys()


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", ["lcnet", "fbs"])
def test_the_value_table_holds_what_the_properties_return(toys, digits, name, batch):
    """`value_table()` (what the cost harness reads) row by row against the properties."""
    model = set_engine(toys[name], "sparse")
    with torch.no_grad(), trace() as t:
        model(digits[:batch])
    table, families = t.value_table()
    assert table.dtype == torch.int64 and table.shape[1] == batch
    expected = {
        "macs": dict(zip(["macs_executed", "macs_theoretical", "macs_controller"],
                         [t.macs_executed, t.macs_theoretical, t.macs_controller], strict=True)),
        "unit": t.units_executed, "channels": t.channels_kept, "other": t.other_ops,
    }  # fmt: skip
    assert list(families) == list(expected) and expected["channels"] and expected["other"]
    row = 0
    for family, (first, names) in families.items():
        assert first == row and names == list(expected[family]), family
        for i, values in enumerate(expected[family].values()):
            assert torch.equal(table[first + i], values), (family, names[i])
        row += len(names)
    assert row == table.shape[0]


# --- decision margins -------------------------------------------------------------------------


class _MarginNet(nn.Module):
    """A threshold gate on every row, then an argmax decided only on the routed rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from benchmarks.routing import decide_argmax, decide_threshold

        score = x[:, 0]
        keep = decide_threshold(score, 0.5, unit="gate")
        q = x[:, 1:3]
        action = decide_argmax(q, unit="choice", where=keep)
        return action.float() + keep.float()


def test_decisions_record_their_margins_per_sample():
    from benchmarks.routing import decide_argmax, decide_threshold

    x = torch.tensor([[0.9, 1.0, 0.5], [0.2, 3.0, 2.0], [0.50001, 0.0, 0.25]])
    with trace() as t:
        out = _MarginNet()(x)
    assert out.tolist() == [1.0, 0.0, 2.0]
    margins = t.decision_margins
    assert margins["gate"].tolist() == pytest.approx([0.4, 0.3, 1e-5], abs=1e-6)
    # the argmax decision is used on rows 0 and 2 only: row 1's gap (1.0) is not recorded
    assert margins["choice"][0] == pytest.approx(0.5) and margins["choice"][1] == float("inf")
    assert t.min_margin().tolist() == pytest.approx([0.4, 0.3, 1e-5], abs=1e-6)
    # outside a trace they are the plain expressions and record nothing
    assert torch.equal(decide_threshold(x[:, 0], 0.5, unit="g"), x[:, 0] >= 0.5)
    assert torch.equal(decide_argmax(x, unit="q"), x.argmax(1))


@pytest.mark.parametrize("name", ["lcnet_lc_cifar_resnet20", "fbs_cifar_resnet20", "d2nn_cascade"])
def test_a_trace_without_margins_records_the_same_and_no_margin(digits, name):
    """`margins=False` (the cost harness's trace) records everything else alike and says so
    when margins are asked for."""
    kwargs = {"num_classes": 2, "width": 4} if name.startswith("d2nn") else {"num_classes": 10}
    torch.manual_seed(0)
    model = set_engine(create_model(name, in_chans=1, **kwargs).eval(), "sparse")
    for x in (digits[:1], digits[:6]):
        with torch.no_grad(), trace() as full:
            model(x)
        with torch.no_grad(), trace(margins=False) as bare:
            model(x)
        assert full.decision_margins
        assert trace_record(bare, margins=False) == {k: v for k, v in trace_record(full).items() if k != "margins"}
        with pytest.raises(RuntimeError, match="margins=False"):
            bare.min_margin()


def test_channel_decision_margins_are_the_smallest_over_channels():
    from benchmarks.routing import decide_threshold

    c = torch.tensor([[0.9, 0.51, 0.2], [0.6, 0.7, 0.05]])
    with trace() as t:
        keep = decide_threshold(c, 0.5, unit="cnet")
    assert keep.tolist() == [[True, True, False], [True, True, False]]
    assert t.decision_margins["cnet"].tolist() == pytest.approx([0.01, 0.1])


@pytest.mark.parametrize("name", ["lcnet_lc_cifar_resnet20", "d2nn_cascade"])
def test_margins_are_recorded_for_original_samples_inside_routed_frames(name):
    """Inside sample routing (sparse engine) margins land on the original sample indices,
    and both engines record the same margins for the decisions that are used."""
    kwargs = {"num_classes": 10, "in_chans": 1} if name.startswith("lcnet") else {"num_classes": 2, "in_chans": 1, "width": 4}
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = load_split("digits", "val").images[:12]
    got = {}
    for engine in ("sparse", "masked"):
        set_engine(model, engine)
        with torch.no_grad(), trace() as t:
            model(x)
        got[engine] = {k: v for k, v in t.decision_margins.items()}
    assert got["sparse"].keys() == got["masked"].keys() and got["sparse"]
    for unit, values in got["sparse"].items():
        torch.testing.assert_close(values, got["masked"][unit], rtol=1e-5, atol=1e-6, msg=unit)


# --- static parts: counts recorded once per input shape, then replayed ----------------------


def _replayed_and_intercepted(model: nn.Module, batches: list[torch.Tensor]):
    """Per batch: (the trace with replay after its first calls, the trace intercepting all)."""
    cache: dict = {}
    pairs = []
    for x in batches:
        with torch.no_grad(), trace(cache=cache, model=model) as replayed:
            model(x)
        with torch.no_grad(), trace() as intercepted:
            model(x)
        pairs.append((trace_record(replayed), trace_record(intercepted)))
    return pairs, cache


@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_replayed_static_parts_count_what_interception_counts(toys, digits, name):
    model = toys[name]
    set_engine(model, "sparse")
    batches = [digits[:1], digits[1:2], digits[:1], digits[:8], digits[8:16], digits[2:3]]
    pairs, cache = _replayed_and_intercepted(model, batches)
    for replayed, intercepted in pairs:
        assert replayed == intercepted
    parts = cache[("static parts", id(model))]
    nodes = [n for p in parts.dynamic for n in _path_nodes(p.root)]
    assert any(p.costs for p in parts.static) or any(isinstance(n.costs, int) for n in nodes)  # replayed
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left behind


class _BranchOnData(nn.Module):
    """A plain module with a Python `if` on its data (outside the execution contract)."""

    def __init__(self):
        super().__init__()
        self.small, self.big = nn.Linear(8, 2), nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(x) if x.sum() > 0 else self.small(x)


class _RoutesFunctionally(nn.Module):
    """A plain module (not a DynamicModule) that calls the routing primitive itself."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return route(self.body, x, x[:, 0] > 0, unit="body")


class _BranchOnEquality(nn.Module):
    """A plain module whose Python `if` reads its data through a function returning a bool."""

    def __init__(self):
        super().__init__()
        self.small, self.big = nn.Linear(8, 2), nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(x) if torch.equal(x, torch.ones_like(x)) else self.small(x)


@pytest.mark.parametrize("make", [_BranchOnData, _BranchOnEquality, _RoutesFunctionally])
def test_a_part_that_reads_its_data_or_routes_is_never_replayed(make):
    torch.manual_seed(0)
    model = nn.Sequential(make()).eval()
    pos, neg = torch.ones(1, 8), -torch.ones(1, 8)
    pairs, cache = _replayed_and_intercepted(model, [pos, neg, pos, neg])
    for replayed, intercepted in pairs:
        assert replayed == intercepted
    assert pairs[0][0]["executed"] != pairs[1][0]["executed"]
    assert all(part.dynamic for part in cache[("static parts", id(model))].static)


def test_static_parts_leave_out_dynamic_modules_hooks_and_keep_controllers_at_their_top():
    from benchmarks.routing import _static_parts

    model = IfGatedNet()
    parts = _static_parts(model)
    assert model.gate in parts and model.big in parts and model.small in parts
    assert model not in parts  # its `if` reads a controller's output
    static = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert _static_parts(static) == [static]
    static[0].register_forward_hook(lambda *a: None)
    assert _static_parts(static) == [static[1]]
    gated = GatedConv2d(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    assert _static_parts(nn.Sequential(gated)) == []  # its layers are read, never called


def test_a_replayed_controller_still_counts_as_controller(digits):
    model = IfGatedNet().eval()
    pairs, cache = _replayed_and_intercepted(model, [digits[:1], digits[1:2], digits[:1]])
    for replayed, intercepted in pairs:
        assert replayed == intercepted
        assert replayed["controller"][0] > 0
    part = next(p for p in cache[("static parts", id(model))].static if p.module is model.gate)
    assert part.costs and not part.dynamic


def test_replay_needs_the_functions_counter_and_undoes_itself_on_errors():
    model = nn.Sequential(nn.Linear(4, 4))
    cache: dict = {}
    with torch.no_grad(), trace(counter="modules", cache=cache, model=model) as t:
        model(torch.ones(2, 4))
    assert int(t.macs_executed[0]) == 16 and ("static parts", id(model)) not in cache
    with pytest.raises(RuntimeError), torch.no_grad(), trace(cache=cache, model=model):
        assert "forward" in model.__dict__
        model(torch.ones(2, 5))
    assert "forward" not in model.__dict__
    with torch.no_grad(), trace(cache=cache, model=model) as t:
        model(torch.ones(2, 4))
        model(torch.ones(2, 4))
    assert t.macs_executed.tolist() == [32, 32]


def test_replay_leaves_a_forward_set_during_the_trace_in_place():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    cache: dict = {}
    with torch.no_grad(), trace(cache=cache, model=model):
        model(torch.ones(1, 4))
    [part] = cache[("static parts", id(model))].static
    assert part.module is model

    def patched(x: torch.Tensor) -> torch.Tensor:
        return x

    with torch.no_grad(), trace(cache=cache, model=model):
        model.forward = patched  # the user's, replacing the trace's wrapper
    assert model.__dict__["forward"] is patched
    del model.forward
    with torch.no_grad(), trace(cache=cache, model=model) as t:
        model(torch.ones(1, 4))
    assert "forward" not in model.__dict__ and int(t.macs_executed[0]) == 24


# --- dynamic modules: their own code's counts replayed path by path -------------------------


class _ReadsItsDecision(DynamicModule):
    """A dynamic module that reads a value in its own code (`bool()`) and branches on it after
    its next routing record, routes a block, and branches again on a read."""

    def __init__(self):
        super().__init__()
        self.gate, self.wide = nn.Linear(8, 1), nn.Linear(8, 8)
        self.block = nn.Linear(8, 8)
        self.small, self.big = nn.Linear(8, 2), nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = bool((x.sum(1) > 0).all())  # a value read in the module's own code
        keep = decide_threshold(self.gate(x).squeeze(1), 0.0, unit="gate")
        h = self.wide(x).relu() if positive else x * 2  # steered by the read, after a record
        h = self.route(self.block, h, keep, unit="block") + h
        if bool(keep.all()):
            return self.big(h.relu())
        return self.small(h)


class _Nested(DynamicModule):
    """A dynamic module whose code after a nested dynamic call depends on that call's path:
    through the width of what it returned (4 after the big head, 2 after the small one)."""

    def __init__(self):
        super().__init__()
        self.inner = _ReadsItsDecision()
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return self.head((y * y)[:, :2]).sum(1, keepdim=True) + y.mean()


@pytest.mark.parametrize("make", [_ReadsItsDecision, _Nested])
def test_dynamic_code_replayed_path_by_path_counts_what_interception_counts(make):
    torch.manual_seed(0)
    model = make().eval()
    set_engine(model, "sparse")
    inner = model if isinstance(model, _ReadsItsDecision) else model.inner
    with torch.no_grad():
        inner.gate.weight.copy_(torch.ones(1, 8))
        inner.gate.bias.zero_()
    pos, neg, mixed = torch.ones(1, 8), -torch.ones(1, 8), torch.tensor([[1.0] * 8, [-1.0] * 8])
    batches = [pos, neg, pos, neg, mixed, pos, mixed, torch.cat([pos, pos]), mixed]
    pairs, cache = _replayed_and_intercepted(model, batches)
    for i, (replayed, intercepted) in enumerate(pairs):
        assert replayed == intercepted, f"batch {i}"
    assert pairs[0][0]["executed"] != pairs[1][0]["executed"]
    parts = cache[("static parts", id(model))].dynamic
    assert {p.module for p in parts} == {m for m in model.modules() if isinstance(m, DynamicModule)}
    nodes = [n for p in parts for n in _path_nodes(p.root)]
    assert any(isinstance(n.costs, int) for n in nodes)  # something was replayed (a packed count)
    assert any(n.costs == "live" for n in nodes)  # the segment with the read never is
    # from the trace after the first live segment, the static parts of the dynamic part that
    # had it are replayed on their own (inside replayed segments their counts are the
    # segments'); those of the other dynamic parts are not even wrapped
    model_parts = cache[("static parts", id(model))]
    assert model_parts.live == 1
    assert any(p.costs for p in model_parts.static)
    wrapped = {id(d) for d in model_parts.wrapped().dicts}
    of_inner = {id(m) for m in inner.modules()}
    assert [id(p.module.__dict__) in wrapped for p in model_parts.static] == [
        id(p.module) in of_inner for p in model_parts.static
    ]
    assert isinstance(model, _ReadsItsDecision) or id(model.head.__dict__) not in wrapped
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_nested_dynamic_calls_are_followed_through_their_call_from_the_callers_node(toys, digits):
    """The blocks of a dynamic root, followed through `DynamicModule.__call__` (nothing set on
    the instances), their key's node and what follows their return found from where the
    caller's path is, with a hook on one block running on every call, traced or not."""
    model = set_engine(toys["lnet"], "sparse")
    block = next(m for m in model.modules() if type(m).__name__ == "LCBlock")
    shapes: list = []
    handle = block.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    cache: dict = {}
    try:
        with torch.no_grad():
            for i in range(8):
                x = digits[i % 4 : i % 4 + 1]
                with trace(cache=cache, model=model) as replayed:
                    assert not any("forward" in m.__dict__ for m in model.modules())
                    model(x)
                with trace() as intercepted:
                    model(x)
                assert trace_record(replayed) == trace_record(intercepted), f"input {i}"
            model(x)
    finally:
        handle.remove()
    assert len(shapes) == 17  # 8 traced, 8 intercepted, 1 plain call
    nodes = [n for p in cache[("static parts", id(model))].dynamic for n in _path_nodes(p.root)]
    assert any(n.nested_part is not None for n in nodes) and any(n.returns_from is not None for n in nodes)


class _RoutedWidth(DynamicModule):
    """At batch 1 it returns 4 columns where its gate keeps the narrowing layer, else its 8
    input columns: what it returns depends on its path, and its own code reads no value."""

    def __init__(self):
        super().__init__()
        self.gate, self.narrow = nn.Linear(8, 1), nn.Linear(8, 4)
        with torch.no_grad():
            self.gate.weight.fill_(1.0)
            self.gate.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = decide_threshold(self.gate(x).squeeze(1), 0.0, unit="gate")
        return self.route(self.narrow, x, keep, unit="narrow")


class _WidthCaller(DynamicModule):
    """Its code after the nested call counts the returned width (elements squared, summed)."""

    def __init__(self):
        super().__init__()
        self.inner = _RoutedWidth()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return (y * y).sum(1, keepdim=True)


def test_what_a_replayed_nested_call_returned_steers_its_caller_by_where_its_path_ended():
    model = set_engine(_WidthCaller().eval(), "sparse")
    pos, neg = torch.ones(1, 8), -torch.ones(1, 8)
    pairs, cache = _replayed_and_intercepted(model, [pos, neg, pos, neg, neg, pos, pos, neg])
    for i, (replayed, intercepted) in enumerate(pairs):
        assert replayed == intercepted, f"batch {i}"
    assert pairs[0][0]["other"] != pairs[1][0]["other"]  # the widths count differently
    nodes = [n for p in cache[("static parts", id(model))].dynamic for n in _path_nodes(p.root)]
    ends = [n for n in nodes if n.returns_from is not None]
    assert len(ends) == 2 and ends[0].returns_to is not ends[1].returns_to  # one per path


def _path_nodes(node):
    yield node
    for child in node.next.values():
        yield from _path_nodes(child)


class _Passthrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_a_replayed_segment_gives_the_counter_back_on_errors_and_under_other_modes():
    torch.manual_seed(0)
    model = _ReadsItsDecision().eval()
    set_engine(model, "sparse")
    x = torch.ones(1, 8)
    cache: dict = {}
    with torch.no_grad(), trace(cache=cache, model=model) as first:
        model(x)
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), trace(cache=cache, model=model):
        model.small.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        model.big.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        model(x)
    model.small._forward_pre_hooks.clear()
    model.big._forward_pre_hooks.clear()
    assert torch._C._len_torch_function_stack() == depth and "forward" not in model.__dict__
    with torch.no_grad(), trace(cache=cache, model=model) as under, _Passthrough():
        model(x)  # a mode above the counter: it cannot be taken off, so everything is counted
    with torch.no_grad(), trace(cache=cache, model=model) as again:
        model(x)
    assert trace_record(under) == trace_record(again) == trace_record(first)
