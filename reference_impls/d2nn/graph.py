"""D2NN graphs (Liu & Deng, AAAI 2018): a DAG of regular, control and dummy nodes.

    g = D2NNGraph()
    g.regular("trunk", trunk)                                    # reads the network input
    g.control("q", qnet, inputs=["trunk"], actions=2)           # one Q-value per action
    g.regular("high", high, inputs=["trunk"], gate=("q", 0))    # runs where q chose action 0
    g.regular("low", low, inputs=["trunk"], gate=("q", 1))
    g.regular("out", SumInputs(), inputs=[DataEdge("high", 0.0), DataEdge("low", 0.0)])
    model = D2NN(g, output="out", exits=["high", "low"], reference={"q": 0})

* **Regular nodes** are `nn.Module`s called with their data inputs, in declaration order.
* **Control nodes** output one score (Q-value) per action; the best-scoring action is taken
  (ε-greedy while training). Action `a` enables every node gated by `(control, a)`. Control
  nodes read detached inputs (the Q-loss never reaches regular nodes) and are controllers for
  the cost model (`benchmarks.routing.mark_controller`).
* **Dummy nodes** cost nothing and output a constant; they give an action that "ends
  execution" a node to enable (the cascade's stop).
* **Data edges** may carry a default value that flows where their source did not run for a
  sample (e.g. 0 for a branch output that is summed, −inf for leaf logits). Without a default,
  a sample whose source did not run is absent downstream: the consumer does not run for it.

A node runs for a sample when its gate (if any) is open for it and every data input without a
default is present. Execution is a topological walk; every node runs through
`benchmarks.routing.route` on exactly its samples, so skipped nodes cost nothing in the sparse
engine and every sample's executed MACs (controllers included) are recorded by a trace.

Restrictions, checked when the model is built (a violation is a `D2NNGraphError` naming the
node): the graph is acyclic; edges point at declared nodes; a control node's outgoing edges are
control edges and a regular or dummy node's are data edges; control nodes are not gated; each
node has at most one gate; every action of a control node enables at least one node (add a
dummy node for "do nothing").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from benchmarks.errors import DynbenchError
from benchmarks.routing import (
    DynamicModule,
    active_trace,
    decide_argmax,
    mark_controller,
    route,
    route_rows,
    skip,
    trace,
)

__all__ = [
    "ALL_ACTIONS",
    "CONTROL",
    "DUMMY",
    "INPUT",
    "REGULAR",
    "D2NN",
    "D2NNGraph",
    "D2NNGraphError",
    "DataEdge",
    "Gate",
    "GraphRun",
    "SumInputs",
]

REGULAR, CONTROL, DUMMY = "regular", "control", "dummy"
#: the name of the network input as a data source
INPUT = "input"
#: action code of a control node whose every action is enabled (policy "all")
ALL_ACTIONS = -2
_NOT_REACHED = -1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class D2NNGraphError(DynbenchError, ValueError):
    """A D2NN graph that breaks the rules (the message names the node and the rule)."""


@dataclass(frozen=True)
class DataEdge:
    """A data edge from `source`; `default` (a number) flows where the source did not run."""

    source: str
    default: float | None = None


@dataclass(frozen=True)
class Gate:
    """A control edge: the node runs where control node `control` took action `action`."""

    control: str
    action: int


EdgeLike = str | DataEdge


@dataclass
class _Node:
    name: str
    kind: str
    inputs: tuple[DataEdge, ...]
    gate: Gate | None = None
    actions: int = 0
    value: float = 1.0


class D2NNGraph:
    """Builder of a D2NN graph: declare nodes in any order, then build a `D2NN` from it."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.modules: dict[str, nn.Module] = {}

    def _add(self, node: _Node, module: nn.Module | None) -> D2NNGraph:
        if not isinstance(node.name, str) or not _NAME.match(node.name) or node.name == INPUT:
            raise D2NNGraphError(
                f"D2NN node name {node.name!r} is invalid: use a Python identifier other than "
                f"'{INPUT}'"
            )
        if node.name in self.nodes:
            raise D2NNGraphError(f"D2NN node '{node.name}' is declared twice")
        if module is not None and not isinstance(module, nn.Module):
            raise D2NNGraphError(
                f"D2NN node '{node.name}': the module must be an nn.Module, got "
                f"{type(module).__name__}"
            )
        self.nodes[node.name] = node
        if module is not None:
            self.modules[node.name] = module
        return self

    @staticmethod
    def _edges(name: str, inputs: Iterable[EdgeLike]) -> tuple[DataEdge, ...]:
        edges = []
        for item in inputs:
            edge = DataEdge(item) if isinstance(item, str) else item
            if not isinstance(edge, DataEdge):
                raise D2NNGraphError(
                    f"D2NN node '{name}': inputs must be node names or DataEdge, got {item!r}"
                )
            if edge.default is not None and not isinstance(edge.default, (int, float)):
                raise D2NNGraphError(
                    f"D2NN node '{name}': the default of the edge from '{edge.source}' must be a "
                    f"number, got {edge.default!r}"
                )
            edges.append(edge)
        return tuple(edges)

    @staticmethod
    def _gate(name: str, gate: Gate | tuple[str, int] | None) -> Gate | None:
        if gate is None or isinstance(gate, Gate):
            return gate
        if isinstance(gate, tuple) and len(gate) == 2:
            return Gate(str(gate[0]), int(gate[1]))
        raise D2NNGraphError(f"D2NN node '{name}': gate must be (control node, action), got {gate!r}")

    def regular(
        self,
        name: str,
        module: nn.Module,
        inputs: Sequence[EdgeLike] = (INPUT,),
        gate: Gate | tuple[str, int] | None = None,
    ) -> D2NNGraph:
        """A regular node: `module(*inputs)`, run where its gate is open and inputs present."""
        return self._add(_Node(name, REGULAR, self._edges(name, inputs), self._gate(name, gate)), module)

    def control(
        self, name: str, module: nn.Module, inputs: Sequence[EdgeLike], actions: int
    ) -> D2NNGraph:
        """A control node: `module(*inputs)` returns (N, `actions`) Q-values."""
        if not isinstance(actions, int) or actions < 2:
            raise D2NNGraphError(
                f"D2NN control node '{name}' needs at least 2 actions, got {actions!r}"
            )
        return self._add(_Node(name, CONTROL, self._edges(name, inputs), None, actions), module)

    def dummy(
        self, name: str, gate: Gate | tuple[str, int] | None = None, value: float = 1.0
    ) -> D2NNGraph:
        """A dummy node: no computation, outputs `value` (one number per sample)."""
        return self._add(_Node(name, DUMMY, (), self._gate(name, gate), value=float(value)), None)

    # --- validation ------------------------------------------------------------------------
    def validate(self, output: str) -> list[str]:
        """Check the rules; return the nodes in topological order (declaration order breaks
        ties, so the walk is deterministic)."""
        nodes = self.nodes
        if output not in nodes:
            raise D2NNGraphError(f"D2NN output node '{output}' is not declared")
        if nodes[output].kind != REGULAR:
            raise D2NNGraphError(f"D2NN output node '{output}' must be a regular node, not {nodes[output].kind}")
        for node in nodes.values():
            if node.kind != DUMMY and not node.inputs:
                raise D2NNGraphError(f"D2NN {node.kind} node '{node.name}' has no data inputs")
            for edge in node.inputs:
                if edge.source == INPUT:
                    continue
                if edge.source not in nodes:
                    raise D2NNGraphError(
                        f"D2NN node '{node.name}' reads from '{edge.source}', which is not declared"
                    )
                if nodes[edge.source].kind == CONTROL:
                    raise D2NNGraphError(
                        f"D2NN node '{node.name}' has a data edge from control node "
                        f"'{edge.source}': a control node's outgoing edges are control edges "
                        "(gate nodes with gate=(control, action))"
                    )
            gate = node.gate
            if gate is None:
                continue
            if node.kind == CONTROL:  # unreachable through the builder; kept for hand-made graphs
                raise D2NNGraphError(f"D2NN control node '{node.name}' is gated: control nodes are not gated")
            if gate.control not in nodes:
                raise D2NNGraphError(
                    f"D2NN node '{node.name}' is gated by '{gate.control}', which is not declared"
                )
            source = nodes[gate.control]
            if source.kind != CONTROL:
                raise D2NNGraphError(
                    f"D2NN node '{node.name}' is gated by '{gate.control}', a {source.kind} node: "
                    "control edges start at control nodes"
                )
            if not 0 <= gate.action < source.actions:
                raise D2NNGraphError(
                    f"D2NN node '{node.name}' is gated by action {gate.action} of "
                    f"'{gate.control}', which has actions 0..{source.actions - 1}"
                )
        for node in nodes.values():
            if node.kind != CONTROL:
                continue
            used = {n.gate.action for n in nodes.values() if n.gate and n.gate.control == node.name}
            missing = sorted(set(range(node.actions)) - used)
            if missing:
                raise D2NNGraphError(
                    f"D2NN control node '{node.name}': action {missing[0]} enables no node "
                    "(gate a dummy node on it to end execution)"
                )
        return self._topological_order()

    def _topological_order(self) -> list[str]:
        deps = {
            name: {e.source for e in node.inputs if e.source != INPUT}
            | ({node.gate.control} if node.gate else set())
            for name, node in self.nodes.items()
        }
        order: list[str] = []
        done: set[str] = set()
        pending = list(self.nodes)
        while pending:
            ready = [n for n in pending if deps[n] <= done]
            if not ready:
                raise D2NNGraphError(f"D2NN graph has a cycle through: {' -> '.join(self._cycle(deps, pending))}")
            for name in ready:
                order.append(name)
                done.add(name)
            pending = [n for n in pending if n not in done]
        return order

    @staticmethod
    def _cycle(deps: dict[str, set[str]], pending: list[str]) -> list[str]:
        left = set(pending)
        node, path = pending[0], []
        while node not in path:
            path.append(node)
            node = sorted(deps[node] & left)[0]
        cycle = path[path.index(node) :] + [node]
        return cycle[::-1]  # in data-flow order: each node feeds the next


class SumInputs(nn.Module):
    """Adds its inputs: the merge of alternative branches whose edges default to 0."""

    #: an input that defaults to 0 where its source did not run adds nothing: the batch-1 walk
    #: leaves it out instead of materializing zeros
    skips_zero_inputs = True

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out


@dataclass
class GraphRun:
    """One forward pass of a D2NN over a batch.

    `outputs[node]` has one row per sample (zeros where the node did not run); `ran[node]`
    says where it ran (for control nodes: where its module ran); `reached[control]` where its
    inputs were present (it ran, or its action was forced); `q[control]` its Q-values (where it
    ran); `actions[control]` the action per sample (-1 not reached, -2 every action enabled).
    """

    output: torch.Tensor
    outputs: dict[str, torch.Tensor]
    ran: dict[str, torch.Tensor]
    reached: dict[str, torch.Tensor] = field(default_factory=dict)
    q: dict[str, torch.Tensor] = field(default_factory=dict)
    actions: dict[str, torch.Tensor] = field(default_factory=dict)
    controls: list[str] = field(default_factory=list)

    def decisions(self) -> dict[str, list[int]]:
        """Actions per control node, as lists (for records and golden tests)."""
        return {c: self.actions[c].tolist() for c in self.controls}


Policy = str | Mapping[str, int]


def _intersect(rows: torch.Tensor | None, other: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The sorted sample indices in both (None: every row of the batch of `n`)."""
    if rows is None:
        return other
    if other is None or other is rows:
        return rows
    member = torch.zeros(n, dtype=torch.bool, device=rows.device).index_fill_(0, other, True)
    return rows.index_select(0, member.index_select(0, rows).nonzero().squeeze(1))


class _Constant:
    """The computation of a dummy node: a constant per row, no MACs. A plain callable, not an
    nn.Module: it has no state to register, and a module call costs a microsecond more."""

    __slots__ = ("value", "_kept")

    def __init__(self, value: float):
        self.value = value
        self._kept: tuple | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kept = self._kept  # the last output, unless it was written in place
        if kept is not None and kept[0]._version == kept[1] and kept[2] == (x.shape[0], x.device, x.dtype):
            return kept[0]
        with torch.inference_mode(False):  # a normal tensor: its version counts in-place writes
            out = x.new_full((x.shape[0], 1), self.value)
        self._kept = (out, out._version, (x.shape[0], x.device, x.dtype))
        return out


def _has_batchnorm(module: Callable) -> bool:
    return isinstance(module, nn.Module) and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class D2NN(DynamicModule):
    """An executable D2NN built from a `D2NNGraph`.

    `output` is the node whose output is the network's prediction; `exits` are the nodes that
    produce class scores (pretraining sums their cross-entropies); `reference` is the policy of
    the reference static path that normalizes cost (e.g. `{"q": 0}` for the high-capacity path,
    or "all" for every node); `pretrain_policy` is "all" (every gated node runs) or "random"
    (random actions: alternatives that replace each other, such as a chain's widths).
    """

    def __init__(
        self,
        graph: D2NNGraph,
        output: str,
        exits: Sequence[str] = (),
        reference: Policy = "all",
        pretrain_policy: str = "all",
    ):
        super().__init__()
        self.order = graph.validate(output)
        self.specs = dict(graph.nodes)
        for name in exits:
            if name not in self.specs or self.specs[name].kind != REGULAR:
                raise D2NNGraphError(f"D2NN exit '{name}' is not a regular node of the graph")
        if pretrain_policy not in ("all", "random"):
            raise D2NNGraphError(f"pretrain_policy must be 'all' or 'random', got {pretrain_policy!r}")
        self.output_node = output
        self.exits = tuple(exits) or (output,)
        self.controls = [n for n in self.order if self.specs[n].kind == CONTROL]
        self.reference_policy = self._check_policy(reference)
        self.pretrain_policy = pretrain_policy
        self.nodes = nn.ModuleDict()
        for name in self.order:
            if name in graph.modules:
                module = graph.modules[name]
                if self.specs[name].kind == CONTROL:
                    mark_controller(module)
                self.nodes[name] = module
        self._dummies = {
            n: _Constant(s.value) for n, s in self.specs.items() if s.kind == DUMMY
        }
        self._row_shapes: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}
        # batch 1, per (input row shape, device, dtype): each node's output (row shape, dtype) once it
        # has run, and the constant rows that stand for absent outputs
        self._outputs_seen: dict[tuple[tuple[int, ...], torch.device], dict] = {}
        self._reference_macs: dict[tuple[int, ...], int] = {}

    # --- policies --------------------------------------------------------------------------
    def _check_policy(self, policy: Policy) -> Policy:
        if isinstance(policy, str):
            if policy not in ("greedy", "all"):
                raise D2NNGraphError(f"D2NN policy must be 'greedy', 'all' or a mapping, got {policy!r}")
            return policy
        for control, action in policy.items():
            if control not in self.specs or self.specs[control].kind != CONTROL:
                raise D2NNGraphError(f"D2NN policy names '{control}', which is not a control node")
            if not 0 <= int(action) < self.specs[control].actions:
                raise D2NNGraphError(
                    f"D2NN policy: action {action} of '{control}' is out of range "
                    f"0..{self.specs[control].actions - 1}"
                )
        return dict(policy)

    def _unit(self, name: str) -> str:
        prefix = self.__dict__.get("_dynbench_prefix", "")
        return f"{prefix}.{name}" if prefix else name

    # --- execution -------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        policy: Policy = "greedy",
        epsilon: float = 0.0,
        generator: torch.Generator | None = None,
        return_run: bool = False,
    ) -> torch.Tensor | GraphRun:
        """The prediction (logits) of the output node; with `return_run`, the whole `GraphRun`.

        `policy`: "greedy" (each control node takes its best action; with probability
        `epsilon` per sample a uniformly random one instead), "all" (control nodes do not run;
        every gated node is enabled), or a mapping {control: action} forcing those controls'
        actions for every sample (forced controls do not run; the others are greedy).
        """
        if not return_run and epsilon == 0 and policy == "greedy" and x.shape[0] == 1 and self.engine == "sparse":
            seen = self._outputs_seen.get((tuple(x.shape[1:]), x.device, x.dtype))
            if seen is not None:
                return self._greedy_walk()(x, self.nodes._modules, seen, active_trace() is not None,
                                           torch.is_grad_enabled())  # fmt: skip
        if (not return_run and epsilon == 0 and policy == "greedy" and x.shape[0] > 1 and self.engine == "sparse"
                and not self.training):  # fmt: skip
            seen = self._outputs_seen.get((tuple(x.shape[1:]), x.device, x.dtype))
            if seen is not None:
                return self._rows_walk(x, seen)
        run = self.run(x, policy=policy, epsilon=epsilon, generator=generator)
        return run if return_run else run.output

    def run(
        self,
        x: torch.Tensor,
        *,
        policy: Policy = "greedy",
        epsilon: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> GraphRun:
        policy = self._check_policy(policy) if policy != "greedy" else policy
        n = x.shape[0]
        device = x.device
        everyone = torch.ones(n, dtype=torch.bool, device=device)
        outputs: dict[str, torch.Tensor] = {INPUT: x}
        ran: dict[str, torch.Tensor] = {INPUT: everyone}
        result = GraphRun(output=x, outputs=outputs, ran=ran, controls=list(self.controls))
        run_controls = set(self.controls)
        every_action = policy == "all"
        for name in self.order:
            spec = self.specs[name]
            keep = self._enabled(spec, result, everyone, every_action)
            for edge in spec.inputs:
                if edge.default is None and ran[edge.source] is not everyone:
                    keep = ran[edge.source] if keep is everyone else keep & ran[edge.source]
            inputs = [self._edge_value(edge, outputs, ran) for edge in spec.inputs]
            if spec.kind == CONTROL:
                self._run_control(spec, inputs, keep, policy, epsilon, generator, result, everyone)
                continue
            if spec.kind == DUMMY:
                module: Callable = self._dummies[name]
                inputs = [x]
            else:
                module = self.nodes[name]
            outputs[name] = self._route(name, module, inputs, keep)
            ran[name] = keep
        if not bool(ran[self.output_node].all()):
            self._output_missing((~ran[self.output_node]).nonzero().squeeze(1).tolist())
        result.output = outputs[self.output_node]
        del outputs[INPUT], ran[INPUT]
        # every node's output row shape is now known for inputs like `x`: the batch-1 walk can
        # stand in for absent outputs from here on
        self._outputs_seen.setdefault((tuple(x.shape[1:]), x.device, x.dtype), {}).update(
            {name: (value.shape[1:], value.dtype) for name, value in outputs.items() if name not in run_controls}
        )
        return result

    def _rows_walk(self, x: torch.Tensor, seen: dict) -> torch.Tensor:
        """A batch in the sparse engine under the greedy policy, in eval mode: the walk of `run`
        on row-index lists. Each node's output is kept for the rows it ran on only (sorted
        sample indices; None: every row), each node runs through `route_rows` on the rows its
        gate and required inputs leave, and a node with no row costs a test (and a `skip`
        record inside a trace); inputs are gathered from their sources' compact outputs, and
        a default edge fills the rows its source did not run on. No boolean mask per node and
        no full-batch scatter after each. Same outputs and trace records as `run`."""
        n = x.shape[0]
        tracing = active_trace() is not None
        values: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {INPUT: (None, x)}
        actions: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name, unit, kind, module, gate, edges in self._rows_plan():
            rows: torch.Tensor | None = None
            within: torch.Tensor | None = None  # rows a gate's rows were taken from
            runs = True
            if gate is not None:
                decided = actions.get(gate.control)
                runs = decided is not None
                if runs:
                    within, action = decided
                    chosen = (action == gate.action).nonzero().squeeze(1)
                    runs = chosen.shape[0] > 0
                    if chosen.shape[0] < action.shape[0]:
                        rows = chosen if within is None else within.index_select(0, chosen)
                    else:
                        rows = within
            for source, default in edges:
                if not runs:
                    break
                if default is None:  # a required input: the node runs where its source ran
                    present = values.get(source)
                    runs = present is not None
                    if runs and present[0] is not within:  # (rows taken from the source's: a subset)
                        rows = _intersect(rows, present[0], n)
                        runs = rows is None or rows.shape[0] > 0
            if not runs:
                if tracing:
                    skip(unit)
                continue
            if kind == DUMMY:  # a constant per row: any `len(rows)` rows of the input will do
                inputs = [x if rows is None else x.narrow(0, 0, rows.shape[0])]
            else:
                inputs = [self._rows_input(values, seen, source, default, rows, n, x) for source, default in edges]
            if kind == CONTROL:
                def decide(*v: torch.Tensor, name: str = name, module: Callable = module, unit: str = unit) -> tuple:
                    q = module(*v)
                    self._check_q(name, q)
                    return q, decide_argmax(q, unit=unit)

                actions[name] = (rows, route_rows(decide, rows, *inputs, batch=n, unit=unit)[1])
            else:
                values[name] = (rows, route_rows(module, rows, *inputs, batch=n, unit=unit))
        output = values.get(self.output_node)
        if output is None or output[0] is not None:  # some rows never reached the output
            ran = torch.zeros(n, dtype=torch.bool)
            if output is not None:
                ran[output[0].cpu()] = True
            self._output_missing((~ran).nonzero().squeeze(1).tolist())
        return output[1]

    def _rows_plan(self) -> list[tuple]:
        """Per node, in order: (name, unit, kind, module, gate, [(source, default)])."""

        def build() -> list[tuple]:
            plan = []
            for name in self.order:
                spec = self.specs[name]
                module = self._dummies[name] if spec.kind == DUMMY else self.nodes[name]
                edges = [(e.source, None if e.default is None else float(e.default)) for e in spec.inputs]
                plan.append((name, self._unit(name), spec.kind, module, spec.gate, edges))
            return plan

        return self._per_prefix("_rows_plan_cache", build)

    def _per_prefix(self, slot: str, build: Callable[[], Any]) -> Any:
        """`build()`, kept in `slot` while the units' prefix (`name_units`) stays the same: the
        walks hold unit names, which a parent's `name_units` may change later."""
        prefix = self.__dict__.get("_dynbench_prefix", "")
        cached = self.__dict__.get(slot)
        if cached is None or cached[0] != prefix:
            cached = self.__dict__[slot] = (prefix, build())
        return cached[1]

    @staticmethod
    def _rows_input(
        values: dict, seen: dict, source: str, default: float | None, rows: torch.Tensor | None, n: int,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """The value of an input edge on `rows`: the source's output where it ran, `default`
        where it did not (a required edge's source ran on every row of `rows`)."""
        present = values.get(source)
        if present is None:  # the source ran on no row: the default everywhere
            shape, dtype = seen[source]
            return x.new_full((n if rows is None else rows.shape[0], *shape), default, dtype=dtype)
        source_rows, value = present
        if source_rows is rows:
            return value
        if source_rows is None:
            return value if rows is None else value.index_select(0, rows)
        if default is None:  # rows ⊆ source_rows, both sorted
            return value.index_select(0, torch.searchsorted(source_rows, rows))
        # fill: the default, then the source's rows that are among `rows`
        out = value.new_full((n if rows is None else rows.shape[0], *value.shape[1:]), default)
        if rows is None:
            return out.index_copy_(0, source_rows, value)
        position = torch.full((n,), -1, dtype=torch.long, device=value.device)
        position.index_copy_(0, rows, torch.arange(rows.shape[0], device=value.device))
        at = position.index_select(0, source_rows)
        inside = at >= 0
        if bool(inside.all()):
            return out.index_copy_(0, at, value)
        inside = inside.nonzero().squeeze(1)
        return out.index_copy_(0, at.index_select(0, inside), value.index_select(0, inside))

    def _output_missing(self, samples: list[int]) -> None:
        raise RuntimeError(
            f"D2NN output node '{self.output_node}' did not run for samples {samples[:5]}: give "
            "the data edges into it default values, or make every path reach it"
        )

    def _greedy_walk(self) -> Callable[..., torch.Tensor]:
        """One image in the sparse engine under the greedy policy: the walk of `run` on Python
        values, written out for this graph as straight-line Python (one `if` per gate and per
        required input, as a hand-written network branches), generated once per unit prefix and
        kept as `model._greedy_walk_source`. A node that does not run costs a test (and a
        `skip` record inside a trace); a node that runs is called on its one-row inputs, or,
        inside a trace, goes through `route` with a Python decision; a default edge from a node
        that did not run reads a constant row of the output shape an earlier `run` recorded.
        Same outputs, decisions and trace records as `run`."""
        return self._per_prefix("_greedy_walk_cache", self._write_greedy_walk)

    def _write_greedy_walk(self) -> Callable[..., torch.Tensor]:
        prefix = self.__dict__.get("_dynbench_prefix", "")
        names: dict[str, str] = {INPUT: "x"}  # node -> the local holding its output (None: did not run)
        actions: dict[str, str] = {}  # control -> the local holding its action (None: not reached)
        defaults: list[tuple[str, float]] = []  # (source, default) of each constant row read
        lines = ["def walk(x, modules, seen, tracing, detach):"]
        for i, name in enumerate(self.order):
            spec, unit = self.specs[name], self._unit(name)
            kind, edges, gate = spec.kind, [(e.source, e.default) for e in spec.inputs], spec.gate
            skips_zeros = getattr(self.nodes[name], "skips_zero_inputs", False) if name in self.nodes else False
            out = f"a{i}" if kind == CONTROL else f"v{i}"
            conds = [] if gate is None else [f"{actions[gate.control]} == {int(gate.action)}"]
            conds += [f"{names[src]} is not None" for src, default in edges if default is None and src != INPUT]
            args: list[str] = []
            optional: list[str] = []  # inputs of a sum that may be absent (default 0): left out
            for src, default in edges:
                local = names[src]
                if default is None or src == INPUT:
                    args.append(local)
                elif skips_zeros and default == 0:
                    optional.append(local)
                else:
                    defaults.append((src, float(default)))
                    args.append(f"({local} if {local} is not None else const(seen, K[{len(defaults) - 1}], x))")
            body: list[str] = []
            if optional:
                defaults.append((edges[0][0], 0.0))
                body.append(f"args = [v for v in ({', '.join(args + optional)},) if v is not None] "
                            f"or [const(seen, K[{len(defaults) - 1}], x)]")  # fmt: skip
                inputs = ["args[0]", "*args[1:]"]
            elif kind == DUMMY:
                inputs = ["x"]
            else:
                inputs = args
            module = f"dummies[{name!r}]" if kind == DUMMY else f"modules[{name!r}]"

            def step(values: list[str], module: str = module, unit: str = unit) -> str:
                # outside a trace, the module on its one-row inputs: what `route` does for a
                # Python True in the sparse engine, less its checks of the rows (every value of
                # the walk is a one-row tensor); inside a trace, `route`, which records
                routed = ", ".join([values[0], "True", *values[1:]])
                return (f"({module}({', '.join(values)}) if not tracing else "
                        f"route({module}, {routed}, default=0.0, unit={unit!r}, engine='sparse'))")  # fmt: skip

            if kind == CONTROL:
                body.append(f"q = {step([f'{a}.detach()' for a in args])} if detach else {step(inputs)}")
                actions_n = self.specs[name].actions
                body.append(f"if q.dim() != 2 or q.shape[1] != {actions_n}: check_q({name!r}, q)")
                body.append(f"{out} = int(decide_argmax(q.detach() if detach else q, unit={unit!r}))")
            else:
                body.append(f"{out} = {step(inputs)}")
            if conds:
                lines.append(f"    if {' and '.join(conds)}:")
                lines += [f"        {b}" for b in body]
                lines.append("    else:")
                lines.append(f"        {out} = None")
                lines.append(f"        if tracing: skip({unit!r})")
            else:
                lines += [f"    {b}" for b in body]
            (actions if kind == CONTROL else names)[name] = out
        output = names[self.output_node]
        lines.append(f"    if {output} is None: output_missing([0])")
        lines.append(f"    return {output}")
        source = "\n".join(lines) + "\n"
        namespace = {
            "route": route, "skip": skip, "decide_argmax": decide_argmax, "check_q": self._check_q,
            "output_missing": self._output_missing, "const": self._constant_row, "K": tuple(defaults),
            "dummies": self._dummies,
        }  # fmt: skip
        exec(compile(source, f"<D2NN greedy walk {prefix or 'model'}>", "exec"), namespace)
        self.__dict__["_greedy_walk_source"] = source
        return namespace["walk"]

    @staticmethod
    def _constant_row(seen: dict, key: tuple[str, float], x: torch.Tensor) -> torch.Tensor:
        """The default value (source, default) = `key` of a node's output for one absent row,
        kept between calls (a consumer that wrote into it in place bumps its version: it is
        then made anew)."""
        kept = seen.get(key)
        if kept is not None and kept[0]._version == kept[1]:
            return kept[0]
        shape, dtype = seen[key[0]]
        with torch.inference_mode(False):  # a normal tensor: its version counts in-place writes
            value = x.new_full((1, *shape), key[1], dtype=dtype)
        seen[key] = (value, value._version)
        return value

    def _enabled(self, spec: _Node, run: GraphRun, everyone: torch.Tensor, every_action: bool) -> torch.Tensor:
        if spec.gate is None:
            return everyone
        # an unreached control's action is _NOT_REACHED, which enables nothing
        action = run.actions[spec.gate.control]
        if every_action:
            return (action == spec.gate.action) | (action == ALL_ACTIONS)
        return action == spec.gate.action

    @staticmethod
    def _edge_value(edge: DataEdge, outputs: dict, ran: dict) -> torch.Tensor:
        value, present = outputs[edge.source], ran[edge.source]
        # a node's output already holds zeros where it did not run (`_route` fills them), so a
        # default of 0 needs no fill
        if edge.default is None or edge.default == 0 or bool(present.all()):
            return value
        mask = present.view(-1, *([1] * (value.dim() - 1)))
        return torch.where(mask, value, torch.full_like(value, edge.default))

    def _route(
        self, name: str, module: Callable, inputs: list[torch.Tensor], keep: torch.Tensor
    ) -> torch.Tensor:
        """Run `module` on the rows in `keep` through the routing contract (rows that do not
        run hold zeros)."""
        if self.engine == "masked" and not bool(keep.all()):
            if self.training and _has_batchnorm(module):
                raise RuntimeError(
                    f"D2NN node '{name}' holds BatchNorm and is routed a subset of this batch: "
                    "training in the masked engine would count the zero-filled rows of the "
                    "other samples in its batch statistics. Train in the sparse engine (the "
                    "default); the masked engine is for evaluation."
                )
            # the masked engine computes every row: rows that do not run get zeros, never
            # default values such as -inf whose gradients would be NaN
            inputs = [torch.where(keep.view(-1, *([1] * (v.dim() - 1))), v, torch.zeros_like(v)) for v in inputs]
        # the per-row output shape, for a selection that turns out empty: known from an earlier
        # call (no sync on the decision), or found now if no row runs
        key = (name, tuple(inputs[0].shape[1:]))
        out_shape = self._row_shapes.get(key)
        if out_shape is None and not bool(keep.any()):
            out_shape = self._row_shape(name, module, inputs)
        out = route(
            module, inputs[0], keep, *inputs[1:], default=0.0, unit=self._unit(name),
            engine=self.engine, out_shape=out_shape,
        )
        if out_shape is None:
            self._row_shapes[key] = tuple(out.shape[1:])
        return out

    def _row_shape(self, name: str, module: Callable, inputs: list[torch.Tensor]) -> tuple[int, ...]:
        """The per-row output shape of a node that runs on no sample of this batch: remembered
        from an earlier batch, or found by calling it on zero rows (which costs no MACs)."""
        key = (name, tuple(inputs[0].shape[1:]))
        shape = self._row_shapes.get(key)
        if shape is None:
            # eval mode: an empty batch must not touch BatchNorm state (num_batches_tracked)
            flags = [(m, m.training) for m in module.modules()] if isinstance(module, nn.Module) else []
            for m, _ in flags:
                m.training = False
            try:
                with torch.no_grad():
                    shape = tuple(module(*[v[:0] for v in inputs]).shape[1:])
            finally:
                for m, training in flags:
                    m.training = training
            self._row_shapes[key] = shape
        return shape

    def _run_control(
        self,
        spec: _Node,
        inputs: list[torch.Tensor],
        keep: torch.Tensor,
        policy: Policy,
        epsilon: float,
        generator: torch.Generator | None,
        run: GraphRun,
        everyone: torch.Tensor,
    ) -> None:
        name, n = spec.name, keep.shape[0]
        run.reached[name] = keep
        if policy == "all" or (isinstance(policy, dict) and name in policy):
            code = ALL_ACTIONS if policy == "all" else int(policy[name])
            run.actions[name] = torch.where(keep, code, _NOT_REACHED)
            run.ran[name] = torch.zeros_like(keep)
            return
        # the state is detached: the Q-loss trains the control node only
        q = self._route(name, self.nodes[name], [v.detach() for v in inputs], keep)
        self._check_q(name, q)
        if keep is not everyone and not bool(keep.any()):  # reached by no row: nothing decided
            action = torch.full_like(keep, _NOT_REACHED, dtype=torch.long)
        else:
            action = decide_argmax(q.detach(), unit=self._unit(name), where=keep)
        if epsilon > 0:
            explore = torch.rand(n, generator=generator, device=keep.device) < epsilon
            random = torch.randint(spec.actions, (n,), generator=generator, device=keep.device)
            action = torch.where(explore, random, action)
        run.q[name] = q
        run.actions[name] = action if keep is everyone else torch.where(keep, action, _NOT_REACHED)
        run.ran[name] = keep
        run.outputs[name] = q

    @torch.no_grad()
    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """The latency harness's oracle for one image `x` (DESIGN §4): the Q-networks decide
        now, and the returned function calls the nodes that run for `x`, in order, directly
        (no control nodes, no routing, constant rows prepared for absent inputs). None for a
        batch of more than one image (whose rows may take different paths)."""
        if x.shape[0] != 1:
            return None
        run = self.run(x)
        ran = {name: bool(r[0]) for name, r in run.ran.items()}
        plan: list[tuple[str, Callable, list[str | torch.Tensor]]] = []
        for name in self.order:
            spec = self.specs[name]
            if spec.kind == CONTROL or not ran[name]:
                continue
            if spec.kind == DUMMY:
                plan.append((name, self._dummies[name], [INPUT]))
                continue
            module = self.nodes[name]
            skips_zeros = getattr(module, "skips_zero_inputs", False)
            inputs: list[str | torch.Tensor] = []
            for edge in spec.inputs:
                if edge.source == INPUT or ran[edge.source]:
                    inputs.append(edge.source)
                elif not (skips_zeros and edge.default == 0):
                    inputs.append(torch.full_like(run.outputs[edge.source], edge.default))
            plan.append((name, module, inputs or [torch.zeros_like(run.outputs[name])]))
        output = self.output_node

        def forward() -> torch.Tensor:
            values: dict[str, torch.Tensor] = {INPUT: x}
            for name, module, inputs in plan:
                values[name] = module(*[values[i] if i.__class__ is str else i for i in inputs])
            return values[output]

        return forward

    def _check_q(self, name: str, q: torch.Tensor) -> None:
        actions = self.specs[name].actions
        if q.dim() != 2 or q.shape[1] != actions:
            raise RuntimeError(
                f"D2NN control node '{name}' returned shape {tuple(q.shape)}; expected "
                f"(N, {actions}) Q-values"
            )

    # --- cost ------------------------------------------------------------------------------
    @torch.no_grad()
    def path_macs(self, x: torch.Tensor, policy: Policy) -> torch.Tensor:
        """Per-sample MACs (controllers included) of running `x` under `policy`, counted by
        the routing trace (eval mode; training flags are restored)."""
        flags = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with trace(batch_size=x.shape[0]) as t:
                self.run(x, policy=policy)
        finally:
            for module, training in flags:
                module.training = training
        return t.macs_theoretical

    def reference_macs(self, x: torch.Tensor) -> int:
        """MACs of the reference static path (the `reference` policy) for inputs shaped like
        `x` (a real sample; the path's cost does not depend on its content)."""
        key = tuple(x.shape[1:])
        macs = self._reference_macs.get(key)
        if macs is None:
            macs = int(self.path_macs(x[:1], self.reference_policy)[0])
            if macs <= 0:
                raise RuntimeError("the D2NN reference path costs no MACs; cannot normalize cost")
            self._reference_macs[key] = macs
        return macs

    def extra_repr(self) -> str:
        kinds = [self.specs[n].kind for n in self.order]
        return (
            f"regular={kinds.count(REGULAR)}, control={kinds.count(CONTROL)}, "
            f"dummy={kinds.count(DUMMY)}, output={self.output_node!r}, engine={self.engine!r}"
        )
