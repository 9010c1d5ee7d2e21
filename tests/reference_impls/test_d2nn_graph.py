"""D2NN graphs: validation errors, execution semantics, both engines, batch invariance, and
per-sample MACs checked against torch.utils.flop_counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.data import load_split
from benchmarks.registry import create_model
from benchmarks.routing import set_engine, trace
from reference_impls.d2nn import D2NN, D2NNGraph, D2NNGraphError, DataEdge
from reference_impls.d2nn.designs import QHead
from reference_impls.d2nn.graph import SumInputs
from tests.trace_records import trace_record

DESIGNS = {
    "d2nn_highlow": {"num_classes": 2},
    "d2nn_cascade": {"num_classes": 2},
    "d2nn_chain": {"num_classes": 2},
    "d2nn_hierarchical": {"num_classes": 10},
    "d2nn_cascade_confidence": {"num_classes": 2},
}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_split("digits", "test").images[:48]


def centred(name: str, images: torch.Tensor, seed: int = 0) -> D2NN:
    """A seeded design whose control nodes split real inputs between their actions: each
    Q-head's last bias is shifted so that every action wins on some samples (a random
    initialisation alone often sends every sample the same way)."""
    torch.manual_seed(seed)
    model = create_model(name, width=4, in_chans=1, **DESIGNS[name]).eval()
    if name == "d2nn_cascade_confidence":  # thresholds at each head's median confidence
        with torch.no_grad():
            run = model(images, policy="all", return_run=True)
        medians = [float(run.outputs[f"h{k}"].softmax(1).max(1).values.median()) for k in (1, 2, 3)]
        state = model.state_dict()
        model = create_model(name, width=4, in_chans=1, thresholds=medians, **DESIGNS[name]).eval()
        model.load_state_dict(state)
    with torch.no_grad():
        for control in model.controls:
            head = model.nodes[control]
            last = getattr(getattr(head, "mlp", None), "__getitem__", None)
            if last is None:  # confidence controls have no parameters
                continue
            run = model(images, return_run=True)
            q = run.q[control][run.ran[control]]
            if len(q):
                head.mlp[-1].bias -= q.median(0).values
    return model


def tiny_graph(**changes) -> D2NNGraph:
    g = D2NNGraph()
    g.regular("trunk", nn.Conv2d(1, 4, 3, padding=1))
    g.control("q", QHead(4, 2), inputs=["trunk"], actions=2)
    g.regular("a", nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 3)), inputs=["trunk"], gate=("q", 0))
    g.regular("b", nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 3)), inputs=["trunk"], gate=("q", 1))
    g.regular("out", SumInputs(), inputs=[DataEdge("a", 0.0), DataEdge("b", 0.0)])
    return g


# --- validation ------------------------------------------------------------------------------


def test_a_valid_graph_builds_and_orders_topologically():
    model = D2NN(tiny_graph(), output="out")
    assert model.order.index("trunk") < model.order.index("q") < model.order.index("a") < model.order.index("out")
    assert model.controls == ["q"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda g: g.regular("a", nn.Identity()), "declared twice"),
        (lambda g: g.regular("bad name", nn.Identity()), "invalid"),
        (lambda g: g.regular("input", nn.Identity()), "invalid"),
        (lambda g: g.regular("x", nn.Identity(), inputs=["nowhere"]), "reads from 'nowhere'"),
        (lambda g: g.regular("x", nn.Identity(), inputs=["q"]), "data edge from control node 'q'"),
        (lambda g: g.regular("x", nn.Identity(), inputs=["trunk"], gate=("a", 0)), "control edges start at control nodes"),
        (lambda g: g.regular("x", nn.Identity(), inputs=["trunk"], gate=("q", 2)), "actions 0..1"),
        (lambda g: g.regular("x", nn.Identity(), inputs=["trunk"], gate=("nope", 0)), "not declared"),
        (lambda g: g.control("q2", QHead(4, 3), inputs=["trunk"], actions=3), "action 0 enables no node"),
        (lambda g: g.control("q3", QHead(4, 1), inputs=["trunk"], actions=1), "at least 2 actions"),
        (lambda g: g.regular("x", "not a module", inputs=["trunk"]), "must be an nn.Module"),
        (lambda g: g.regular("x", nn.Identity(), inputs=[DataEdge("trunk", "zero")]), "must be a number"),
        (lambda g: g.regular("x", nn.Identity(), inputs=[]), "has no data inputs"),
    ],
)
def test_graph_rule_violations_are_clear_errors(build, message):
    g = tiny_graph()
    with pytest.raises(D2NNGraphError, match=message):
        build(g)
        D2NN(g, output="out")


def test_cycles_are_reported_with_their_nodes():
    g = D2NNGraph()
    g.regular("a", nn.Identity(), inputs=["input", "c"])
    g.regular("b", nn.Identity(), inputs=["a"])
    g.regular("c", nn.Identity(), inputs=["b"])
    with pytest.raises(D2NNGraphError, match="cycle through: a -> b -> c -> a"):
        D2NN(g, output="c")


def test_control_nodes_cannot_be_gated():
    g = tiny_graph()
    g.control("q2", QHead(4, 2), inputs=["trunk"], actions=2)
    g.nodes["q2"].gate = g.nodes["a"].gate  # a hand-edited graph: the builder has no gate argument
    g.dummy("d0", gate=("q2", 0))
    g.dummy("d1", gate=("q2", 1))
    with pytest.raises(D2NNGraphError, match="control nodes are not gated"):
        D2NN(g, output="out")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "missing"}, "output node 'missing' is not declared"),
        ({"output": "q"}, "must be a regular node"),
        ({"output": "out", "exits": ["q"]}, "exit 'q' is not a regular node"),
        ({"output": "out", "reference": {"trunk": 0}}, "not a control node"),
        ({"output": "out", "reference": {"q": 5}}, "out of range"),
        ({"output": "out", "pretrain_policy": "some"}, "pretrain_policy"),
    ],
)
def test_model_level_errors(kwargs, message):
    with pytest.raises(D2NNGraphError, match=message):
        D2NN(tiny_graph(), **kwargs)


def test_an_output_that_some_samples_never_reach_is_a_runtime_error(digits):
    g = tiny_graph()
    g.nodes["out"].inputs = (DataEdge("a"), DataEdge("b"))  # no defaults: a sample has only one
    model = D2NN(g, output="out").eval()
    with pytest.raises(RuntimeError, match="did not run for samples"):
        model(digits[:8], policy={"q": 0})


# --- semantics -------------------------------------------------------------------------------


def test_gates_defaults_and_forced_policies(digits):
    torch.manual_seed(0)
    model = D2NN(tiny_graph(), output="out").eval()
    x = digits[:6]
    run = model(x, policy={"q": 1}, return_run=True)
    assert not run.ran["a"].any() and run.ran["b"].all()
    assert "q" not in run.q and not run.ran["q"].any()  # a forced control does not run
    assert torch.equal(run.output, run.outputs["b"])
    everything = model(x, policy="all", return_run=True)
    assert everything.ran["a"].all() and everything.ran["b"].all()
    assert torch.allclose(everything.output, everything.outputs["a"] + everything.outputs["b"])
    greedy = model(x, return_run=True)
    chose_a = greedy.actions["q"] == 0
    assert torch.equal(greedy.ran["a"], chose_a) and torch.equal(greedy.ran["b"], ~chose_a)
    assert torch.equal(greedy.actions["q"], greedy.q["q"].argmax(1))


def test_hierarchical_leaves_of_branches_that_did_not_run_are_minus_infinity(digits):
    model = centred("d2nn_hierarchical", digits)
    run = model(digits, return_run=True)
    groups = [[0, 2, 3, 4, 6], [1], [5, 7, 9], [8]]
    assert len(set(run.actions["root"].tolist())) > 1
    for i, action in enumerate(run.actions["root"].tolist()):
        finite = run.output[i].isfinite().nonzero().squeeze(1).tolist()
        assert finite == sorted(groups[action])
        assert int(run.output[i].argmax()) in groups[action]


def test_cascade_emits_the_head_of_the_stage_where_it_stopped(digits):
    model = centred("d2nn_cascade", digits)
    run = model(digits, return_run=True)
    exits = torch.full((len(digits),), 4)
    for k in (3, 2, 1):
        exits = torch.where(run.ran[f"stop{k}"], k, exits)
    assert len(set(exits.tolist())) > 1, "the centred cascade should stop at several stages"
    for i, k in enumerate(exits.tolist()):
        assert torch.equal(run.output[i], run.outputs[f"h{k}"][i])
        assert all(run.ran[f"s{j}"][i] == (j <= k) for j in range(1, 5))


def test_epsilon_explores_and_zero_epsilon_is_greedy(digits):
    model = centred("d2nn_chain", digits)
    greedy = model(digits, return_run=True).actions["c1"]
    g = torch.Generator().manual_seed(0)
    random = model(digits, epsilon=1.0, generator=g, return_run=True).actions["c1"]
    assert not torch.equal(greedy, random)
    assert set(random.tolist()) == {0, 1, 2}


# --- engines, batch invariance, MACs ---------------------------------------------------------


@pytest.mark.parametrize("name", list(DESIGNS))
def test_masked_and_sparse_engines_agree_in_eval(name, digits):
    model = centred(name, digits)
    results = {}
    for engine in ("sparse", "masked"):
        set_engine(model, engine)
        with torch.no_grad(), trace() as t:
            run = model(digits, return_run=True)
        results[engine] = (run, t)
    sparse, masked = results["sparse"][0], results["masked"][0]
    assert sparse.decisions() == masked.decisions()
    assert torch.equal(sparse.output.argmax(1), masked.output.argmax(1))
    torch.testing.assert_close(sparse.output, masked.output, rtol=1e-5, atol=1e-5)
    ts, tm = results["sparse"][1], results["masked"][1]
    assert {k: v.tolist() for k, v in ts.units_executed.items()} == {k: v.tolist() for k, v in tm.units_executed.items()}
    assert torch.equal(ts.macs_theoretical, tm.macs_theoretical)
    assert torch.equal(ts.macs_executed, ts.macs_theoretical)  # sparse: nothing simulated
    assert (tm.macs_executed >= tm.macs_theoretical).all()


@pytest.mark.parametrize("name", list(DESIGNS))
def test_routing_of_a_sample_does_not_depend_on_the_batch(name, digits):
    model = centred(name, digits)
    with torch.no_grad():
        batch = model(digits, return_run=True)
        order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))
        shuffled = model(digits[order], return_run=True)
        for i in range(0, len(digits), 7):
            single = model(digits[i : i + 1], return_run=True)
            for c in model.controls:
                assert single.actions[c].item() == batch.actions[c][i].item()
            torch.testing.assert_close(single.output[0], batch.output[i], rtol=1e-4, atol=1e-5)
    for c in model.controls:
        assert torch.equal(shuffled.actions[c], batch.actions[c][order])
    assert torch.equal(shuffled.output.argmax(1), batch.output[order].argmax(1))


def _flop_counter_macs(model: nn.Module, x: torch.Tensor, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, **kwargs)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.parametrize("name", list(DESIGNS))
def test_per_sample_macs_equal_an_independent_flop_count(name, digits):
    model = centred(name, digits).set_engine("sparse")
    x = digits[:16]
    with torch.no_grad(), trace() as t:
        model(x)
    paths = set()
    for i in range(len(x)):
        sample = x[i : i + 1]
        expected = _flop_counter_macs(model, sample)
        assert int(t.macs_executed[i]) == expected, f"sample {i}"
        paths.add(expected)
    assert len(paths) > 1, "the samples should take paths of different cost"
    # controller MACs are reported apart (and included): the Q-heads' linear layers
    if name != "d2nn_cascade_confidence":
        assert (t.macs_controller > 0).all() and (t.macs_controller < t.macs_executed).all()
    else:
        assert (t.macs_controller == 0).all()


@pytest.mark.parametrize("name", ["d2nn_highlow", "d2nn_chain", "d2nn_hierarchical"])
def test_reference_path_costs_equal_the_static_baselines(name, digits):
    torch.manual_seed(0)
    model = create_model(name, width=4, **DESIGNS[name])
    static = {
        "d2nn_highlow": ("d2nn_highlow_high", {}),
        "d2nn_chain": ("d2nn_chain_static", {"width_choice": "full"}),
        "d2nn_hierarchical": ("d2nn_hierarchical_static", {}),
    }[name]
    baseline = create_model(static[0], width=4, num_classes=DESIGNS[name]["num_classes"], **static[1]).eval()
    assert model.reference_macs(digits[:1]) == _flop_counter_macs(baseline, digits[:1])


def test_regular_nodes_get_gradients_only_through_executed_paths(digits):
    torch.manual_seed(0)
    model = create_model("d2nn_highlow", width=4).train()
    run = model(digits[:8], policy={"q": 0}, return_run=True)
    F.cross_entropy(run.output, torch.zeros(8, dtype=torch.long)).backward()
    assert all(p.grad is None for p in model.nodes["low"].parameters())
    assert all(p.grad is not None for p in model.nodes["high"].parameters())
    assert all(p.grad is None for p in model.nodes["q"].parameters())  # hard decisions


def test_the_q_loss_does_not_reach_regular_nodes(digits):
    torch.manual_seed(0)
    model = create_model("d2nn_cascade", width=4).train()
    run = model(digits[:8], return_run=True)
    run.q["c1"].sum().backward()
    assert all(p.grad is not None for p in model.nodes["c1"].parameters())
    for name in ("s1", "h1"):
        assert all(p.grad is None for p in model.nodes[name].parameters())


def test_a_node_that_runs_on_no_sample_still_gives_defaults(digits):
    torch.manual_seed(0)
    model = create_model("d2nn_hierarchical", width=4).train()
    before = {k: v.clone() for k, v in model.nodes["b0"].state_dict().items()}
    run = model(digits[:4], policy={"root": 1}, return_run=True)  # only the 'trousers' branch
    assert run.output.shape == (4, 10)
    assert run.output[:, 1].isfinite().all() and torch.isinf(run.output[:, [0, 2, 3, 4, 5, 6, 7, 8, 9]]).all()
    after = model.nodes["b0"].state_dict()  # finding b0's output shape left its BatchNorm alone
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.nodes["b0"].training


# --- training in the engines ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in DESIGNS if n != "d2nn_cascade_confidence"])
def test_training_batchnorm_sees_only_the_rows_routed_to_a_node(name, digits):
    """Sparse engine, train mode: a node's BatchNorm statistics are those of the node run
    alone on its rows; the masked engine refuses to train such a node rather than count the
    zero-filled rows of other samples."""
    model = centred(name, digits).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_engine(model, "sparse")
    with torch.no_grad():
        run = model(digits, return_run=True)
    partial = [n for n, ran in run.ran.items() if n in model.nodes and 0 < int(ran.sum()) < len(digits)
               and any(isinstance(m, nn.BatchNorm2d) for m in model.nodes[n].modules())]  # fmt: skip
    assert partial, "no node was routed a strict subset of the batch"
    for node in partial:
        alone = create_model(name, width=4, in_chans=1, **DESIGNS[name])
        alone.load_state_dict(before)
        module = alone.nodes[node].train()
        rows = run.ran[node]
        inputs = _node_inputs(model, run, node, rows)
        with torch.no_grad():
            module(*inputs)
        for (key, mine), (_, theirs) in zip(model.nodes[node].state_dict().items(), module.state_dict().items(), strict=True):
            if "running" in key:
                torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=f"{node}.{key}")
    model.load_state_dict(before)
    set_engine(model, "masked")
    with pytest.raises(RuntimeError, match="would count the zero-filled rows"), torch.no_grad():
        model(digits)


def _node_inputs(model: D2NN, run, node: str, rows: torch.Tensor) -> list[torch.Tensor]:
    """The inputs a node saw on its rows: its data edges' source outputs."""
    return [run.outputs[edge.source][rows] for edge in model.specs[node].inputs]


# --- the batch-1 walk ------------------------------------------------------------------------


def _traced(fn, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad(), trace(batch_size=1) as t:
        out = fn(x)
    record = {
        "executed": t.macs_executed, "theoretical": t.macs_theoretical, "controller": t.macs_controller,
        "units": t.units_executed, "margins": t.decision_margins,
    }  # fmt: skip
    return out, record


POLICIES = ["greedy", "all"]


@pytest.mark.parametrize("policy", POLICIES + ["forced"])
@pytest.mark.parametrize("name", list(DESIGNS))
def test_the_batch_1_walk_runs_and_records_what_the_general_walk_does(name, policy, digits):
    """`forward` on one image under the greedy policy branches in Python (`D2NN._greedy_walk`);
    `run` is the general walk over masks (forced policies take it too). Same output bit for
    bit, same decisions, same trace records, image by image."""
    model = centred(name, digits)
    if policy == "forced":
        policy = {model.controls[0]: 1}
    with torch.no_grad():
        model(digits[:2], policy=policy)  # a batch of 2 takes the general walk
        assert model._outputs_seen, "a general walk records the node output shapes"
    for i in range(0, len(digits), 3):
        x = digits[i : i + 1]
        fast, fast_record = _traced(lambda v: model(v, policy=policy), x)
        general, general_record = _traced(lambda v: model.run(v, policy=policy).output, x)
        assert torch.equal(fast, general)
        for key, value in general_record.items():
            if isinstance(value, dict):
                assert value.keys() == fast_record[key].keys(), key
                for unit, per_sample in value.items():
                    assert torch.equal(per_sample, fast_record[key][unit]), (key, unit)
            else:
                assert torch.equal(value, fast_record[key]), key


def test_the_first_image_of_a_shape_takes_the_general_walk_and_errors_match(digits):
    g = tiny_graph()
    g.nodes["out"].inputs = (DataEdge("a"), DataEdge("b"))  # no defaults
    model = D2NN(g, output="out").eval()
    with torch.no_grad():
        model(digits[:1], policy="all")  # both branches run: fine, and the shapes are known
        assert model._outputs_seen
        with pytest.raises(RuntimeError, match=r"did not run for samples \[0\]"):
            model(digits[:1], policy={"q": 0})  # now the batch-1 walk: the same error


def test_a_default_row_written_in_place_is_made_anew(digits):
    class AddOneInPlace(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return b.add_(1) + a

    g = tiny_graph()
    g.nodes.pop("out"), g.modules.pop("out")
    g.regular("out", AddOneInPlace(), inputs=[DataEdge("a", 0.0), DataEdge("b", 0.0)])
    model = D2NN(g, output="out").eval()
    with torch.no_grad():
        model(digits[:2], policy="all")
        first = model(digits[:1], policy={"q": 0})  # b absent: its zero row, then +1 in place
        second = model(digits[:1], policy={"q": 0})
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_the_oracle_calls_the_nodes_that_run_and_nothing_else(name, digits):
    model = centred(name, digits)
    assert model.oracle(digits[:2]) is None  # rows of a batch may take different paths
    for i in range(0, len(digits), 5):
        x = digits[i : i + 1]
        with torch.no_grad():
            oracle = model.oracle(x)
            assert torch.equal(oracle(), model(x))
        with torch.no_grad(), trace(batch_size=1) as t:
            oracle()
        assert t.macs_controller.item() == 0  # no control node runs


# --- the walk on row-index lists (batch > 1) --------------------------------------------------


def _traced_batch(fn, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad(), trace(batch_size=len(x)) as t:
        out = fn(x)
    record = trace_record(t)
    return out, record


@pytest.mark.parametrize("name", list(DESIGNS))
def test_the_rows_walk_runs_and_records_what_the_general_walk_does(name, digits):
    """`forward` on a batch under the greedy policy in eval mode keeps each node's output for
    its rows only (`D2NN._rows_walk`); `run` is the general walk over masks. Same output bit for
    bit and the same trace records, on batches of several sizes and orders."""
    model = centred(name, digits)
    with torch.no_grad():
        model.run(digits[:2])  # the node output shapes, for edges whose source runs on no row
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    for x in (digits[:2], digits[5:10], digits[:16], digits[order], digits[order[:7]]):
        fast, fast_record = _traced_batch(model, x)
        general, general_record = _traced_batch(lambda v: model.run(v).output, x)
        assert torch.equal(fast.isfinite(), general.isfinite())
        assert torch.equal(fast[fast.isfinite()], general[general.isfinite()])
        assert fast_record == general_record
        with torch.no_grad():
            assert torch.equal(model(x), fast)  # and outside a trace
    assert "_rows_plan_cache" in model.__dict__  # the rows walk did run


class _SignQ(nn.Module):
    """Q-values from the sign of the first input feature: action 0 where it is positive."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = h.flatten(1)[:, :1]
        return torch.cat([s, -s], 1)


def test_the_rows_walk_intersects_required_inputs_and_fills_defaults(digits):
    """A node gated by one control and reading a node gated by another runs where both let it;
    a default edge fills the rows its source skipped; a node with no row is skipped, and an
    edge from it reads its default everywhere."""
    g = D2NNGraph()
    g.regular("trunk", nn.Conv2d(1, 2, 3, padding=1))
    g.control("q1", _SignQ(), inputs=["trunk"], actions=2)
    g.control("q2", _SignQ(), inputs=["input"], actions=2)
    g.regular("a", nn.Sequential(nn.Flatten(), nn.Linear(2 * 64, 3)), inputs=["trunk"], gate=("q1", 0))
    g.regular("b", nn.Linear(3, 3), inputs=["a"], gate=("q2", 1))
    g.dummy("rest", gate=("q2", 0))
    g.regular("side", nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), inputs=["input"], gate=("q2", 1))
    g.regular("c", nn.Sequential(nn.Flatten(), nn.Linear(2 * 64, 3)), inputs=["trunk"], gate=("q1", 1))
    g.regular("out", SumInputs(), inputs=[DataEdge("b", 0.5), DataEdge("c", 0.0), DataEdge("side", -1.0), DataEdge("a", 0.0)])
    torch.manual_seed(0)
    model = D2NN(g, output="out").eval()
    x = digits[:24] - digits[:24].mean()
    x[:, 0, 0, 0] = torch.linspace(-1, 1, 24)  # q2 splits the batch; q1 follows the trunk
    with torch.no_grad():
        model.run(x[:2])
        run = model.run(x)
        assert 0 < int(run.ran["b"].sum()) < int(run.ran["a"].sum()) < 24  # an intersection
    all_rest = x.clone()
    all_rest[:, 0, 0, 0] = 1.0  # q2 takes action 0 everywhere: 'side' and 'b' run on no row
    for batch in (x, all_rest):
        fast, fast_record = _traced_batch(model, batch)
        general, general_record = _traced_batch(lambda v: model.run(v).output, batch)
        assert torch.equal(fast, general) and fast_record == general_record
    assert fast_record["units"]["side"] == [0] * 24 and fast_record["units"]["b"] == [0] * 24


def test_the_rows_walk_reports_samples_the_output_misses(digits):
    g = tiny_graph()
    g.nodes["out"].inputs = (DataEdge("a"), DataEdge("b"))  # no defaults: a sample reaches one
    model = D2NN(g, output="out").eval()
    with torch.no_grad():
        model.run(digits[:2], policy="all")
        with pytest.raises(RuntimeError, match="did not run for samples"):
            model(digits[:8])


def test_the_batch_1_walk_follows_unit_names_given_later(digits):
    """`name_units` on a parent renames the graph's units after the walk was first generated:
    the walk is generated again, and the trace names the units as the general walk does."""
    from benchmarks.routing import name_units

    model = centred("d2nn_highlow", digits)
    x = digits[:1]
    with torch.no_grad():
        model(digits[:2])
        model(x)  # generated under the bare names
    parent = nn.Sequential(model)
    name_units(parent)
    _, fast = _traced(lambda v: model(v), x)
    _, general = _traced(lambda v: model.run(v).output, x)
    assert set(fast["units"]) == set(general["units"]) and all(u.startswith("0.") for u in fast["units"])
    assert "route(" in model._greedy_walk_source
