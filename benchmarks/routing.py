"""The execution contract (DESIGN §2): every input-dependent choice of a dynamic model runs
through these primitives, so that skipped computation is really skipped and every method's
cost is measured the same way.

* **Sample routing** — `route(module, x, keep)` / `SampleRouter`: run `module` only on the
  rows of the batch whose decision is "execute" (gather, call, scatter back); skipped rows take
  the identity, a constant, a per-row tensor or a callable default.
* **Channel gating** — `GatedConv2d`: per-sample output-channel gates on a convolution
  (+ BatchNorm + activation), and the matching input channels of the next one.
* **Controllers** — `Controller(module)` / `mark_controller(module)`: gate networks,
  Q-networks, L-Net / C-Net heads; their MACs are reported as `macs_controller`.
* **Trace** — `with trace() as t: model(x)` records, per original sample, which units ran
  and the MACs they cost (`macs_executed`, `macs_theoretical`, `macs_controller`).

Two engines, set with `set_engine(model, "masked" | "sparse")`: `masked` computes everything
and multiplies by the decisions (differentiable, for training; its executed MACs are the full
cost), `sparse` computes only what was kept. Both give the same outputs and the same routing
in eval mode.

Hard decisions are what routes: a boolean, or a float gate whose zero entries mean "skip"
(straight-through gates: forward 0/1, soft gradient). Counting is analytic, from shapes, per
layer (see `benchmarks.cost`); outside a trace the primitives do no bookkeeping at all.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module
from torch.overrides import TorchFunctionMode

from benchmarks import cost as _cost
from benchmarks.errors import UnknownNameError

__all__ = [
    "COUNTERS",
    "DEFAULT_ENGINE",
    "ENGINES",
    "EXECUTIONS",
    "IDENTITY",
    "ExecutionCosts",
    "Controller",
    "DynamicModule",
    "GatedConv2d",
    "SampleRouter",
    "Trace",
    "active_trace",
    "calibrate_executions",
    "decide_argmax",
    "decide_threshold",
    "decide_topk",
    "gated_pair",
    "is_dynamic",
    "mark_controller",
    "name_units",
    "route",
    "route_rows",
    "set_engine",
    "set_execution",
    "set_execution_costs",
    "skip",
    "trace",
]

ENGINES = ("masked", "sparse")
DEFAULT_ENGINE = "sparse"
#: how a trace counts the MACs of ordinary layers: `functions` (the default: a TorchFunctionMode
#: on conv, linear, matmul, einsum, attention...: complete, also counts non-MAC ops), `modules`
#: (global module forward hooks on Conv/Linear/RNN/MultiheadAttention: a little faster, but
#: blind to functional matmuls and attention, e.g. a third of swin_t's MACs) or None (routing
#: decisions only)
COUNTERS = ("modules", "functions", None)


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UnknownNameError("engine", str(engine), ENGINES)
    return engine


class _Identity:
    """Skipped rows pass their input through."""

    def __repr__(self) -> str:
        return "IDENTITY"


IDENTITY = _Identity()


# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------

_ACTIVE: Trace | None = None


def active_trace() -> Trace | None:
    """The trace currently recording, if any."""
    return _ACTIVE


class _Frame:
    """The rows a computation currently runs on.

    `rows`: original sample indices (None: all rows of the traced batch, in order); `batch`:
    number of rows; `theo`: per-row mask of the rows that would run with perfect skipping
    (None: all; the masked engine also runs rows whose decision was "skip"). Costs common to
    every row of the frame are plain Python integers (`counts`: MACs by kind, controller MACs
    and other ops by kind, batch totals packed in one integer; `saved` = executed −
    theoretical; `units`, `channels`: per row) and become per-sample records when the frame
    closes, so that bookkeeping costs no tensor operation unless rows really differ.
    """

    __slots__ = ("rows", "batch", "theo", "counts", "saved", "units", "channels")

    def __init__(self, rows: torch.Tensor | None, batch: int | None, theo: torch.Tensor | None):
        self.rows, self.batch, self.theo = rows, batch, theo
        self.counts = self.saved = 0
        self.units: dict[str, int] | None = None
        self.channels: dict[str, int] | None = None


# A frame's counts — MACs by kind, controller MACs, other ops by kind — are the fields of one
# Python integer, each _FIELD_BITS wide: adding a remembered count to a frame is one addition,
# and what a stretch of code counted is one subtraction (counts only grow). A count of a static
# part or of a segment of a dynamic call is such an integer too.
_FIELDS = (*_cost.MAC_KINDS, "ctrl", *_cost.OTHER_KINDS)
_FIELD_BITS = 96  # (a batch's total of any field stays far below 2**96)
_FIELD_MASK = (1 << _FIELD_BITS) - 1
_SHIFT = {name: i * _FIELD_BITS for i, name in enumerate(_FIELDS)}
_CTRL_ONE = 1 << _SHIFT["ctrl"]
#: kind -> what one unit of it adds to a frame's counts, outside and inside a controller
_ONE = {kind: 1 << _SHIFT[kind] for kind in (*_cost.MAC_KINDS, *_cost.OTHER_KINDS)}
_ONE_CTRL = {kind: one + (_CTRL_ONE if kind in _cost.MAC_KINDS else 0) for kind, one in _ONE.items()}
#: (kind, shift) of the MAC kinds and of the other ops' kinds, for unpacking a frame's counts
_MAC_SHIFTS = tuple((kind, _SHIFT[kind]) for kind in _cost.MAC_KINDS)
_OTHER_SHIFTS = tuple((kind, _SHIFT[kind]) for kind in _cost.OTHER_KINDS)


_EXEC, _THEO, _CTRL = "macs_executed", "macs_theoretical", "macs_controller"


class Trace:
    """Per-sample record of one forward pass (one batch). Use through `trace()`.

    After the `with` block: `macs_executed`, `macs_theoretical`, `macs_controller` (int64
    tensors, one entry per sample of the batch, on the CPU), `units_executed` (unit name ->
    executions per sample), `channels_kept` (gated unit -> kept output channels per sample),
    `other_ops` (non-MAC op kind -> elements per sample; `functions` counter only),
    `macs_by_kind` (per-sample MACs per op kind), `per_sample()` and `unit_table()`.

    Executed and theoretical MACs include controller MACs; `macs_controller` is the part of the
    executed MACs spent in controllers.
    """

    # (slots: a trace is made per batch, right after a forward pass has evicted the interpreter's
    # data from the CPU's caches; a fixed layout touches less memory than a growing dict)
    __slots__ = (
        "counter", "_root", "_frame", "_stack", "_suppress", "_ctrl_depth", "_cache", "_device",
        "_totals", "_others", "_records", "_frame_values", "_units", "_gated", "_executions", "_margins", "_by_kind",
        "_by_kind_rows", "_handle", "_mode", "_done", "_results", "_values", "_all_rows", "_events",
        "_replaying", "_recording", "_on", "_hold", "_quiet", "_call", "_parts", "_wrapped", "_tracked",
    )  # fmt: skip

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        counter: str | None = "functions",
        cache: dict | None = None,
        model: nn.Module | None = None,
        margins: bool = True,
    ):
        if counter not in COUNTERS:
            raise UnknownNameError("counter", str(counter), [str(c) for c in COUNTERS])
        self.counter = counter
        self._root = _Frame(None, batch_size, None)
        self._frame = self._root
        self._stack: list[_Frame] = []
        self._suppress = 0
        self._ctrl_depth = 0
        # optional per-layer cost by (id(module), input shape), shared across the traces of
        # one measurement run (valid only while the model lives unchanged)
        self._cache: dict | None = cache
        self._device: torch.device | None = None
        # per-sample values common to every sample, by family ("macs", "unit", "channels",
        # "other") and name
        self._totals: dict[str, dict[Any, int]] = {"macs": {}, "unit": {}, "channels": {}, "other": {}}
        self._others: dict[str, None] = {}  # non-MAC op kinds counted, in order of first appearance
        self._records: list[tuple[Any, Any, Any, Any]] = []  # (key, rows, theo, values per row)
        # numbers common to the rows of a closed frame: (rows, theo or None, {key: number})
        self._frame_values: list[tuple[Any, Any, dict[Any, int]]] = []
        self._units: dict[str, None] = {}  # routing units, in order of first appearance
        self._gated: dict[str, None] = {}  # channel-gated units
        self._executions: dict[str, dict[str, int]] = {}  # gated unit -> execution -> calls
        # (unit, rows, theo, margin or its function, args); None: not recorded (`margins=False`)
        self._margins: list[tuple[str, Any, Any, Any, tuple]] | None = [] if margins else None
        self._by_kind: dict[str, int] = {}
        self._by_kind_rows: list[tuple[str, torch.Tensor]] = []
        self._handle: Any = None
        self._mode: TorchFunctionMode | None = None
        self._done = False
        self._results: dict[str, Any] = {}  # parts of the results read so far (`_materialize`)
        self._values: tuple[torch.Tensor, dict] | None = None  # every per-sample value (`value_table()`)
        self._all_rows: tuple[tuple, dict] | None = None  # the same, a tensor per row (`_rows`)
        self._events = 0  # routing records so far (a static part must make none)
        self._replaying = 0  # > 0 inside a static part whose count is being replayed
        self._recording = 0  # > 0 inside a static part's first call: watch for data reads
        # the function counter is on the torch-function stack (`_on`) unless a primitive holds
        # it off for its bookkeeping (`_hold` > 0) or the open segment of a dynamic part's call
        # is being replayed (`_quiet`); `_sync` makes the stack match
        self._on = False
        self._hold = 0
        self._quiet = False
        self._call: _Call | None = None  # the innermost open call of a dynamic part
        self._parts: _ModelParts | None = None
        self._wrapped: _Wrapped | None = None
        self._tracked: dict[int, Callable[[Trace, tuple, dict], Any]] | None = None  # see DynamicModule.__call__
        if model is not None and cache is not None and counter == "functions":
            parts = cache.get(("static parts", id(model)))
            if parts is None or parts.model is not model:
                parts = cache[("static parts", id(model))] = _ModelParts(model)
            self._parts, self._wrapped, self._tracked = parts, parts.wrapped(), parts.tracked

    # --- context ----------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("a dynbench trace is already recording; traces do not nest")
        if self._done:
            raise RuntimeError("a Trace records one forward pass; start a new trace()")
        if self.counter == "modules":
            self._handle = nn.modules.module.register_module_forward_hook(_module_hook)
        elif self.counter == "functions":
            self._mode = _COUNTER_MODE
            torch._C._push_on_torch_function_stack(self._mode)  # (what entering the mode does)
            self._on = True
            if self._wrapped is not None:
                self._wrapped.install()
        _ACTIVE = self
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        global _ACTIVE
        _ACTIVE = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._mode is not None:
            self._call, self._hold, self._quiet = None, 0, False  # an exception may have left them
            if self._on:  # (else it is off the stack already: a replayed segment ended the forward)
                torch._C._pop_torch_function_stack()  # (what leaving the mode does)
            self._mode, self._on = None, False
            if self._wrapped is not None:
                self._wrapped.remove()
        while self._stack:  # an exception left sub-frames open
            self._pop()
        self._ctrl_depth = 0
        self._flush(self._root)
        self._done = True

    # --- recording (used by the counters and the primitives) --------------------------------
    def _see(self, x: Any) -> None:
        """Fix the batch size (unless given) and the device from the first input seen."""
        shape = getattr(x, "shape", None)
        if self._root.batch is None:
            self._root.batch = shape[0] if shape else 1
        device = getattr(x, "device", None)
        if not isinstance(device, torch.device) or device.type == "meta":
            device = torch.device("cpu")  # shape-only runs (meta tensors) count on the CPU
        self._device = device

    def _count(self, kind: str, macs: int, x: Any) -> None:
        """A layer's MACs (batch total), common to every row of the current frame."""
        if self._device is None:
            self._see(x)
        self._frame.counts += macs * (_ONE_CTRL if self._ctrl_depth else _ONE)[kind]

    def _per_row(self, kind: str, executed: Any, theoretical: Any) -> None:
        """MACs per row of the current frame, each an int (common to all rows) or a tensor."""
        self._events += 1
        if self.counter is None:
            return
        call = self._call
        if call is not None:
            self._segment_ends()
        frame = self._frame
        if isinstance(executed, int):
            self._count(kind, executed * frame.batch, None)
            frame.saved += executed * frame.batch
        else:
            self._records.append((_EXEC, frame.rows, None, executed))
            if self._ctrl_depth:
                self._records.append((_CTRL, frame.rows, None, executed))
            self._by_kind_rows.append((kind, executed))
        if isinstance(theoretical, int):
            frame.saved -= theoretical * frame.batch
        else:
            self._records.append((_THEO, frame.rows, frame.theo, theoretical))
        if call is not None:  # after the record: the next segment counts what follows it
            self._segment_begins(("r", kind, _int_or_none(executed), _int_or_none(theoretical)))

    def _unit(self, name: str, executed: Any) -> None:
        """A routing unit's decision over the current frame: 1 / 0, or a boolean per row."""
        self._events += 1
        self._units[name] = None
        frame = self._frame
        if executed.__class__ is not int and not isinstance(executed, int):  # a tensor
            if self._call is not None:
                self._segment_step(("u", name, None))
            self._records.append((("unit", name), frame.rows, frame.theo, executed))
            return
        if self._call is not None:
            self._segment_step(("u", name, executed))
        if executed:
            units = frame.units
            if units is None:
                frame.units = {name: executed}
            else:
                units[name] = units.get(name, 0) + executed

    def _channels(self, name: str, kept: Any) -> None:
        """A gated unit's kept output channels over the current frame: an int or per row."""
        self._events += 1
        if self._call is not None:
            self._segment_step(("c", name, kept if kept.__class__ is int else None))
        self._gated[name] = None
        frame = self._frame
        if isinstance(kept, int):
            if frame.channels is None:
                frame.channels = {}
            frame.channels[name] = frame.channels.get(name, 0) + kept
        else:
            self._records.append((("channels", name), frame.rows, frame.theo, kept))

    def _margin(self, name: str, margin: Callable[..., torch.Tensor] | torch.Tensor, *args: Any) -> None:
        """How far each row of the current frame was from flipping `name`'s decision: a
        tensor, or `margin(*args)`, computed only when the margins are read (a forward pass
        pays no kernels for a record that is seldom read)."""
        self._events += 1  # (no segment boundary: a margin changes no count; the decision's
        # outcome joins the path where it is used, e.g. in the unit `route` records)
        if self._device is None:
            self._see(args[0] if args else margin)
        if self._margins is not None:
            frame = self._frame
            self._margins.append((name, frame.rows, frame.theo, margin, args))

    def _push(self, idx: torch.Tensor | None, theo: torch.Tensor | None) -> None:
        """Enter a sub-computation on rows `idx` of the current frame (None: the same rows),
        whose rows with `theo` False run only because the engine computes everything."""
        self._events += 1
        if self._call is not None:
            self._segment_ends()
        parent = self._frame
        if idx is None:
            rows, batch, parent_theo = parent.rows, parent.batch, parent.theo
        else:
            rows = idx if parent.rows is None else parent.rows.index_select(0, idx)
            batch = idx.numel()
            parent_theo = None if parent.theo is None else parent.theo.index_select(0, idx)
        if parent_theo is not None:
            theo = parent_theo if theo is None else parent_theo & theo
        self._stack.append(parent)
        self._frame = _Frame(rows, batch, theo)
        if self._call is not None:
            self._segment_begins(("p", batch, theo is None))

    def _pop(self) -> None:
        if self._call is not None:
            self._segment_ends()
        self._flush(self._frame)
        self._frame = self._stack.pop()
        if self._call is not None:
            self._segment_begins(("q",))

    def _flush(self, frame: _Frame) -> None:
        """A closing frame's counts and records become per-sample values: totals where the
        frame holds every sample of the batch, else records for its rows."""
        batch = frame.batch or 1
        counts = frame.counts
        by_kind = self._by_kind
        executed = 0
        for kind, shift in _MAC_SHIFTS:
            value = (counts >> shift) & _FIELD_MASK
            if value:
                executed += value
                by_kind[kind] = by_kind.get(kind, 0) + value
        other = None
        for kind, shift in _OTHER_SHIFTS:
            value = ((counts >> shift) & _FIELD_MASK) // batch
            if value:
                if other is None:
                    other = {}
                other[kind] = value
        if other:
            self._others.update(dict.fromkeys(other))
        macs = {_EXEC: executed // batch, _CTRL: ((counts >> _SHIFT["ctrl"]) & _FIELD_MASK) // batch}
        theoretical = {_THEO: (executed - frame.saved) // batch}
        # (family, values, whether its rows count only where the sample really ran)
        families = (("macs", macs, False), ("macs", theoretical, True), ("other", other, False),
                    ("unit", frame.units, True), ("channels", frame.channels, True))  # fmt: skip
        if frame.rows is None and frame.theo is None:  # common to every sample of the batch
            totals = self._totals
            for family, values, _ in families:
                if values:
                    _add_counts(totals[family], values)
        else:
            unmasked: dict[Any, int] = {}
            masked: dict[Any, int] = {}
            for family, values, theo_masked in families:
                into = masked if theo_masked and frame.theo is not None else unmasked
                for name, value in (values or {}).items():
                    if value:
                        into[name if family == "macs" else (family, name)] = value
            if unmasked:
                self._frame_values.append((frame.rows, None, unmasked))
            if masked:
                self._frame_values.append((frame.rows, frame.theo, masked))
        frame.counts = frame.saved = 0
        frame.units = frame.channels = None

    # --- static parts (see _StaticPart) ------------------------------------------------------
    def _snapshot(self) -> tuple[_Frame, int]:
        return (self._frame, self._frame.counts)

    def _counted_after(self, snapshot: tuple[_Frame, int]) -> int:
        """What was counted into the current frame since `snapshot` (counted by the counter, or
        replayed by static parts inside a recorded segment), packed."""
        frame, counts = snapshot
        return frame.counts - counts

    def _mark(self) -> tuple:
        self._recording += 1
        return (self._events, self._ctrl_depth, self._snapshot())

    def _counted_since(self, mark: tuple) -> int | None:
        """What the counter counted since `mark`, or None if routing was recorded meanwhile
        (then the part is not static and is never replayed)."""
        self._recording -= 1
        events, ctrl_depth, snapshot = mark
        if snapshot[0] is not self._frame or events != self._events or ctrl_depth != self._ctrl_depth:
            return None
        return self._counted_after(snapshot)

    def _replay(self, costs: int, args: tuple) -> None:
        if self._device is None:
            self._see(_first_tensor(args))
        self._frame.counts += costs

    # --- dynamic parts' segments (see _DynamicPart) -------------------------------------------
    def _call_begins(self, part: _DynamicPart, node: _Node | None, args: tuple) -> _Call:
        """A dynamic part's call starts at `node` of its path tree: the enclosing call's segment
        ends, the call's first segment opens. (The steady state — both replayed — is handled
        inline by the part's tracked call.)"""
        parent = self._call
        if parent is not None:
            self._segment_ends()
        elif self._device is None and _first_tensor(args) is not None:
            # the model's input, seen now (a replayed first segment sees nothing; else the first
            # nested call would meet an unknown device and leave the steady state)
            self._see(_first_tensor(args))
        call = self._call = _Call.__new__(_Call)  # (its fields set here: one Python call less per call)
        call.part, call.node, call.segment, call.args, call.parent = part, node, node, args, parent
        call.snapshot, call.read, call.state = None, False, _LIVE
        self._segment_opens(call)
        return call

    def _call_ends(self, call: _Call, returned: Any, *, finished: bool = True) -> None:
        """`call` returns (or raised: then its last segment is not remembered, and the path of
        the enclosing call is lost); the enclosing call's next segment opens after `returned`,
        the step of what it returned (`_outcome`; None: no step, the path is lost)."""
        if finished:
            self._segment_ends()
        parent = self._call = call.parent
        if parent is None:
            if self._quiet:
                self._quiet = False
                _sync(self)
            return
        if not finished or returned is None:
            parent.node = None
        self._segment_begins(returned)

    def _segment_begins(self, event: Any) -> None:
        """Open the next segment of the innermost dynamic call after `event` (a routing record,
        a frame change, what a nested call returned)."""
        call = self._call
        node = call.node
        if node is not None:
            node = call.node = node.next.get(event) or call.part.child(node, event)
            if self._quiet and node is not None and node.costs.__class__ is int:
                call.segment, call.state = node, _REPLAY  # replayed as well: the counter stays off
                return
        self._segment_opens(call)

    def _segment_step(self, event: Any) -> None:
        """`_segment_ends()` then `_segment_begins(event)`: a routing record inside the call. A
        replayed segment followed by one counted before (the common case) is stepped inline."""
        call = self._call
        if call.state is _REPLAY and self._device is not None:
            costs = call.segment.costs
            if costs:  # (a packed count is a long integer: adding nothing costs)
                self._frame.counts += costs
            node = call.node.next.get(event)
            if node is not None and node.costs.__class__ is int:
                call.node = call.segment = node
                return
        else:
            self._segment_ends()
        self._segment_begins(event)

    def _segment_opens(self, call: _Call) -> None:
        """Replay the segment starting at `call`'s node if it was counted before, else count
        it (and remember the count unless it read values)."""
        node = call.segment = call.node
        costs = None if node is None else node.costs
        if costs.__class__ is int:
            call.state = _REPLAY
            if not self._quiet:
                self._quiet = True
                _sync(self)
                if self._on:  # another mode sits above the counter: count this segment instead
                    self._quiet = False
                    call.state = _LIVE
            return
        if costs is None and node is not None:
            call.state = _RECORD
            call.snapshot = self._snapshot()
            call.read = False
        else:
            call.state = _LIVE
            if not call.part.live:  # its static parts are wrapped from the next trace on
                call.part.live = True
                self._parts.live += 1
        if self._quiet:
            self._quiet = False
            _sync(self)

    def _segment_ends(self) -> None:
        call = self._call
        state = call.state
        if state is _REPLAY:
            if self._device is None:
                self._see(_first_tensor(call.args))
            self._frame.counts += call.segment.costs
        elif state is _RECORD:
            call.segment.costs = _LIVE if call.read else self._counted_after(call.snapshot)
            call.snapshot = None

    def _value_read(self, func: Any, out: Any) -> None:
        """A counted call in a dynamic call read tensor values: its outcome joins the path
        (what follows may branch on it), and the segment it is in is counted on every call."""
        call = self._call
        if call.state is _RECORD:
            call.read = True
        if call.node is not None:
            outcome = _outcome(out)
            step = (getattr(func, "__name__", func), outcome)
            call.node = None if outcome is None else call.part.child(call.node, step)

    # --- results ----------------------------------------------------------------------------
    def _materialize(self, part: str) -> Any:
        """One part of the results, built on its first read (and kept once the trace is done):
        "macs" -> per-sample executed, theoretical and controller MACs; "unit", "channels",
        "other" -> {name: per-sample tensor}; "by_kind" -> {kind: batch total}."""
        found = self._results.get(part)
        if found is not None:
            return found
        if part == "by_kind":
            value: Any = dict(self._by_kind)
            for kind, values in self._by_kind_rows:
                value[kind] = value.get(kind, 0) + int(values.sum())
        else:
            rows, families = self._rows()
            start, names = families[part]
            rows = rows[start : start + len(names)]
            value = rows if part == "macs" else dict(zip(names, rows, strict=True))
        if self._done:
            self._results[part] = value
        return value

    def _rows(self) -> tuple[tuple[torch.Tensor, ...], dict[str, tuple[int, list[str]]]]:
        """The rows of `value_table()`, one tensor each."""
        if self._all_rows is not None:
            return self._all_rows
        table, families = self.value_table()
        rows = (table.unbind(0), families)
        if self._done:
            self._all_rows = rows
        return rows

    def value_table(self) -> tuple[torch.Tensor, dict[str, tuple[int, list[str]]]]:
        """Every per-sample value of the trace as one int64 tensor of (values, batch) on the
        CPU, and where each family's rows are: family -> (first row, names in row order), for
        "macs" (`macs_executed`, `macs_theoretical`, `macs_controller`), "unit"
        (`units_executed`), "channels" (`channels_kept`), "other" (`other_ops`), each family's
        rows following the previous one's. The properties return the same rows, a tensor
        each; reading the table instead makes no tensor per row (at batch 1, where a forward
        pass has just evicted their code from the CPU's caches, those cost more than the rest
        of the read: the cost harness reads the table)."""
        if self._values is not None:
            return self._values
        # (what is common to every sample from one list of numbers — a value no record touches
        # needs no kernel of its own — plus the records' rows; from a buffer: a shorter path
        # than converting a list)
        n = self._root.batch or 0
        totals = self._totals
        families = {"macs": (0, [_EXEC, _THEO, _CTRL])}
        values = list(map(totals["macs"].get, families["macs"][1], repeat(0)))
        for family, names in (("unit", self._units), ("channels", self._gated), ("other", self._others)):
            families[family] = (len(values), list(names))
            values += map(totals[family].get, names, repeat(0))
        table = _int64_tensor(values)
        table = (table if n == 1 else table.repeat_interleave(n)).view(len(values), n)
        if self._records or self._frame_values:
            keys = [_EXEC, _THEO, _CTRL]
            keys += [(family, name) for family, (_, names) in families.items() if family != "macs" for name in names]
            self._add_records(table, keys, n)
        if self._done:
            self._values = (table, families)
        return table, families

    def _add_records(self, table: torch.Tensor, keys: list[Any], n: int) -> None:
        """Add the per-row records to the rows of `table` they belong to, in a few kernels
        whatever their number (a batch of 64 through a block-skipping ResNet-56 closes some 50
        frames; a kernel or more per record cost a millisecond): the numbers common to a
        frame's rows are a (row of `table`) × (frame) matrix, multiplied by the frames'
        membership of samples; values per row are gathered into one index_add."""
        device = self._device or torch.device("cpu")
        row_of = {key: i for i, key in enumerate(keys)}
        common: dict[int, dict[int, int]] = {}  # row of table -> frame -> number
        for frame, (_, _, values) in enumerate(self._frame_values):
            for key, value in values.items():
                r = row_of.get(key)
                if r is not None:
                    common.setdefault(r, {})[frame] = value
        rows_all: list[tuple[int, torch.Tensor]] = []  # (row of table, value per sample)
        flat_index: list[torch.Tensor] = []  # other values per row: positions in out.view(-1)
        flat_value: list[torch.Tensor] = []
        for key, rows, theo, value in self._records:
            r = row_of.get(key)
            if r is None:
                continue
            if rows is None and theo is None:
                rows_all.append((r, value))
            else:
                value = value.to(torch.int64)
                flat_value.append(value if theo is None else value * theo)
                flat_index.append((torch.arange(n, device=device) if rows is None else rows) + r * n)
        self._suppress += 1
        try:
            out = torch.zeros((len(keys), n), dtype=torch.int64, device=device)
            if common:
                # the frames' samples in a row, each position's frame, and each used row's
                # number per frame: a position adds its frame's number (times its theo mask
                # where the frame has one) to its sample
                frames = self._frame_values
                sizes = [n if rows is None else rows.numel() for rows, _, _ in frames]
                samples = torch.cat([torch.arange(n, device=device) if rows is None else rows for rows, _, _ in frames])
                frame_of = torch.repeat_interleave(_int64_tensor(sizes, device))
                used = list(common)
                numbers = _int64_tensor([common[r].get(f, 0) for r in used for f in range(len(frames))], device)
                added = numbers.view(len(used), len(frames)).index_select(1, frame_of)
                if any(theo is not None for _, theo, _ in frames):
                    theo_of = torch.cat([
                        torch.ones(size, dtype=torch.int64, device=device) if theo is None else theo.to(torch.int64)
                        for (_, theo, _), size in zip(frames, sizes, strict=True)
                    ])  # fmt: skip
                    added *= theo_of
                by_sample = torch.zeros((len(used), n), dtype=torch.int64, device=device)
                out.index_add_(0, _int64_tensor(used, device), by_sample.index_add_(1, samples, added))
            if rows_all:
                out.index_add_(
                    0, _int64_tensor([r for r, _ in rows_all], device),
                    torch.stack([value for _, value in rows_all]).to(torch.int64),
                )
            if flat_index:
                out.view(-1).index_add_(0, torch.cat(flat_index), torch.cat(flat_value))
            table += out.cpu()
        finally:
            self._suppress -= 1

    @property
    def batch_size(self) -> int:
        return self._root.batch or 0

    @property
    def macs_executed(self) -> torch.Tensor:
        return self._materialize("macs")[0]

    @property
    def macs_theoretical(self) -> torch.Tensor:
        return self._materialize("macs")[1]

    @property
    def macs_controller(self) -> torch.Tensor:
        return self._materialize("macs")[2]

    def _family(self, family: str) -> dict[str, torch.Tensor]:
        return dict(self._materialize(family))

    @property
    def units_executed(self) -> dict[str, torch.Tensor]:
        """Routing unit -> number of times it ran, per sample (usually 0 or 1)."""
        return self._family("unit")

    @property
    def executions(self) -> dict[str, dict[str, int]]:
        """Channel-gated unit -> how its calls executed: `sliced` (batch 1), `grouped` (one
        sliced convolution per channel pattern), `union` (the batch's union of kept channels,
        then masked per sample), `dense` (every channel, then masked) -> number of calls."""
        return {unit: dict(counts) for unit, counts in self._executions.items()}

    def _execution(self, name: str, execution: str) -> None:
        counts = self._executions.setdefault(name, {})
        counts[execution] = counts.get(execution, 0) + 1

    @property
    def channels_kept(self) -> dict[str, torch.Tensor]:
        """Channel-gated unit -> kept output channels, per sample (0 where it did not run)."""
        return self._family("channels")

    @property
    def decision_margins(self) -> dict[str, torch.Tensor]:
        """Decision unit -> per-sample margin of its decision (`decide_threshold`: the distance
        of the score from the threshold, smallest over channels; `decide_argmax`: the gap
        between the two best values); `inf` where the unit decided nothing for the sample, or
        only ran because the masked engine computes every row."""
        if self._margins is None:
            raise RuntimeError("this trace was made with margins=False: it recorded no decision margins")
        n = self.batch_size
        out: dict[str, torch.Tensor] = {}
        for name, rows, theo, margin, args in self._margins:
            if callable(margin):
                margin = margin(*args)
            values = margin.detach().float().cpu()
            if theo is not None:
                values = torch.where(theo.cpu(), values, torch.full_like(values, math.inf))
            table = out.setdefault(name, torch.full((n,), math.inf))
            if rows is None:
                torch.minimum(table, values, out=table)
            else:
                table.scatter_reduce_(0, rows.cpu(), values, reduce="amin")
        return out

    def min_margin(self) -> torch.Tensor:
        """Per sample, the smallest margin of any decision it went through (`inf`: none)."""
        margin = torch.full((self.batch_size,), math.inf)
        for values in self.decision_margins.values():
            margin = torch.minimum(margin, values)
        return margin

    @property
    def other_ops(self) -> dict[str, torch.Tensor]:
        """Non-MAC op kind -> elements processed per sample (`functions` counter only)."""
        return self._family("other")

    @property
    def macs_by_kind_total(self) -> dict[str, int]:
        """Executed MACs per op kind, summed over the batch."""
        return dict(self._materialize("by_kind"))

    @property
    def macs_by_kind(self) -> dict[str, int]:
        """Executed MACs per op kind, per sample (batch mean, rounded down)."""
        n = max(self.batch_size, 1)
        return {k: v // n for k, v in self.macs_by_kind_total.items()}

    def per_sample(self, offset: int = 0) -> Any:
        """A pandas DataFrame, one row per sample (index `sample`, starting at `offset`)."""
        import pandas as pd

        units = torch.zeros(self.batch_size, dtype=torch.int64)
        for counts in self.units_executed.values():
            units += counts
        return pd.DataFrame(
            {
                "macs_executed": self.macs_executed.numpy(),
                "macs_theoretical": self.macs_theoretical.numpy(),
                "macs_controller": self.macs_controller.numpy(),
                "units_executed": units.numpy(),
            },
            index=pd.RangeIndex(offset, offset + self.batch_size, name="sample"),
        )

    def unit_table(self, offset: int = 0) -> Any:
        """A pandas DataFrame: one row per sample, one column per routing unit (executions)."""
        import pandas as pd

        return pd.DataFrame(
            {name: v.numpy() for name, v in self.units_executed.items()},
            index=pd.RangeIndex(offset, offset + self.batch_size, name="sample"),
        )


def trace(
    *,
    batch_size: int | None = None,
    counter: str | None = "functions",
    cache: dict | None = None,
    model: nn.Module | None = None,
    margins: bool = True,
) -> Trace:
    """Record per-sample routing and MACs of the forward pass run inside the `with` block.

        with trace() as t:
            logits = model(x)
        t.macs_executed, t.units_executed, t.per_sample()

    One trace covers one batch. Its size is `batch_size`, or else the leading dimension of the
    first input the trace sees. See `COUNTERS` for `counter`.

    `cache`: a dict shared by the traces of one measurement run, valid only while the model
    lives unchanged (same modules, parameters and attributes). It holds per-layer costs by
    input shape; with `model` (the module the traces run) and the `functions` counter it also
    holds the model's static parts — submodules with no routing inside — whose counts are
    recorded on their first call per input shape and replayed afterwards without intercepting
    their calls: the same counts, at a fraction of the interception's cost.

        cache = {}
        for x in batches:
            with trace(cache=cache, model=model) as t:
                model(x)

    `margins=False` records no decision margins (`decision_margins` and `min_margin` then
    raise): what a caller that never reads them — the cost harness — saves at every decision.
    """
    return Trace(batch_size=batch_size, counter=counter, cache=cache, model=model, margins=margins)


_MODULE_RULES = _cost._MODULE_RULES  # resolved rules by class (None: no MACs of its own)


def _module_hook(module: nn.Module, args: tuple, output: Any) -> None:
    """Global forward hook of the `modules` counter: runs after every module call."""
    tr = _ACTIVE
    if tr is None:
        return
    cls = module.__class__
    rule = _MODULE_RULES.get(cls, False)
    if not rule:
        if rule is None:
            return
        rule = _cost.module_rule(cls)
        if rule is None:
            return
    if tr._suppress:
        return
    kind, formula, cacheable = rule
    if cacheable and tr._cache is not None:
        key = (id(module), args[0].shape)
        macs = tr._cache.get(key)
        if macs is None:
            macs = tr._cache[key] = formula(module, args, output)
    else:
        macs = formula(module, args, output)
    if tr._device is None:
        tr._see(args[0] if args else None)
    tr._frame.counts += macs * (_ONE_CTRL if tr._ctrl_depth else _ONE)[kind]


def _int64_tensor(values: list[int], device: torch.device | None = None) -> torch.Tensor:
    """A list of Python ints as a 1-D int64 tensor, through a buffer (torch.tensor walks a
    list element by element: ~30 us for 50 numbers, against a few through array)."""
    table = torch.frombuffer(array("q", values), dtype=torch.int64) if values else torch.zeros(0, dtype=torch.int64)
    return table if device is None or device.type == "cpu" else table.to(device)


def _add_counts(totals: dict[Any, int], counts: dict[Any, int]) -> None:
    """`totals` += `counts`, key by key."""
    if not totals:
        totals.update(counts)  # (the common case, one flush per trace: no Python loop)
        return
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + value


def _first_tensor(args: tuple) -> Any:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class _FunctionCounter(TorchFunctionMode):
    """Counts MACs (and non-MAC ops) of torch functions as they are called."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        if kwargs is None:
            kwargs = {}
        out = func(*args, **kwargs)
        tr = _ACTIVE
        if tr is None or tr._suppress:
            return out
        if (tr._recording or tr._call is not None) and _reads_values(func, args):
            if tr._recording:
                tr._events += 1  # the static part may branch on its data: never replay it
            if tr._call is not None:
                tr._value_read(func, out)
        try:
            rule = _FUNCTION_RULES[func]
        except (KeyError, TypeError):
            rule = _cost.function_rule(func)
        if rule is not None:
            kind, formula = rule
            # the mode is off inside this method (torch stashes it): the formulas' shape
            # reads are not intercepted
            amount = formula(args, kwargs, out)
            if tr._device is None:
                tr._see(_first_tensor(args))
            tr._frame.counts += amount * (_ONE_CTRL if tr._ctrl_depth else _ONE)[kind]
        return out


_COUNTER_MODE = _FunctionCounter()  # (stateless: it counts into the active trace; traces do not nest)
_FUNCTION_RULES = _cost._FUNCTION_RULES  # resolved rules by function (None: not counted)


#: calls whose result depends on tensor values in a way that can steer the Python code or the
#: shapes that follow (an `if` on a tensor, `.item()`, a boolean mask): a part that makes one
#: on its first call is counted on every call, never replayed
_VALUE_READS = frozenset({
    "__bool__", "__int__", "__float__", "__index__", "__complex__", "__contains__", "__array__",
    "item", "tolist", "numpy", "equal", "allclose", "is_nonzero",
    "nonzero", "argwhere", "masked_select", "masked_scatter", "unique", "unique_consecutive",
    "bincount", "repeat_interleave",
})


def _reads_values(func: Any, args: tuple) -> bool:
    name = getattr(func, "__name__", "")
    if name in _VALUE_READS:
        return True
    if name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1:
        index = args[1]
        indices = index if isinstance(index, (tuple, list)) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    return name == "where" and len(args) == 1


class _Suppressed:
    """Primitives report their own costs exactly; their internal calls are not counted. Under
    the `functions` counter the torch-function layer is switched off for the block as well:
    an uncounted call would otherwise still pay the counter's interception (about a
    microsecond a call)."""

    __slots__ = ("tr", "off")

    def __init__(self, tr: Trace | None):
        self.tr = tr
        self.off: Any = None

    def __enter__(self) -> None:
        tr = self.tr
        if tr is not None:
            tr._suppress += 1
            # (nothing to switch off while the stack is empty: a primitive holds the counter
            # off, or a segment is being replayed)
            if tr._mode is not None and torch._C._len_torch_function_stack():
                self.off = torch._C.DisableTorchFunction()
                self.off.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.tr is not None:
            if self.off is not None:
                self.off.__exit__(None, None, None)
                self.off = None
            self.tr._suppress -= 1


# --- replaying the costs of a model's static parts ------------------------------------------
#
# Under the `functions` counter every torch call pays the mode's interception (about 1-3 µs at
# batch 1, a tenth of a static ResNet-56's time). A part of the model with no routing inside
# (no DynamicModule, no hook, no controller below its top) costs, by the execution contract, a
# function of its input shapes only. Given the model and a measurement run's cache, a trace
# counts each such part the interceptor's way on its first call per input key, then replays
# that count with the interceptor off on the later calls. A part that records routing (a
# routing function called from a plain module) or reads its values (_VALUE_READS) on its first
# call is never replayed.


class _StaticPart:
    """One maximal static submodule of a traced model and its counts by input key."""

    __slots__ = ("module", "forward", "costs", "dynamic")

    def __init__(self, module: nn.Module):
        self.module = module
        self.forward = self._replaying(module.forward)
        self.costs: dict[Any, int] = {}  # input key -> packed counts (see _FIELDS)
        self.dynamic = False

    def _replaying(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        part = self

        def replaying_forward(*args: Any, **kwargs: Any) -> Any:
            tr = _ACTIVE
            if tr is None or not tr._on or tr._replaying or part.dynamic:
                return forward(*args, **kwargs)
            _pause(tr)
            if tr._on:  # another mode sits above the counter: it cannot be taken off
                _unpause(tr)
                return forward(*args, **kwargs)
            try:
                key = _input_key((part.module.training, tr._ctrl_depth > 0), args, kwargs)
                costs = None if key is None else part.costs.get(key)
                if costs is not None:
                    tr._replaying += 1
                    try:
                        out = forward(*args, **kwargs)
                    finally:
                        tr._replaying -= 1
                    tr._replay(costs, args)
                    return out
            finally:
                _unpause(tr)
            if key is None:
                return forward(*args, **kwargs)
            before = tr._mark()
            try:
                out = forward(*args, **kwargs)
            finally:
                costs = tr._counted_since(before)
            if costs is None:
                part.dynamic = True
            else:
                part.costs[key] = costs
            return out

        return replaying_forward


class _ModelParts:
    """A traced model's static and dynamic parts, kept in a measurement run's cache. A static
    part inside a dynamic part needs no replay of its own while that part's segments are
    replayed (its count is in the segments'): it is wrapped only once the dynamic part that
    calls it (the innermost one around it) had a segment counted live — it reads values, or its
    path tree is full — from the next trace on. (Unwrapped, such a part is still counted
    exactly: by the interceptor.)"""

    __slots__ = ("model", "static", "dynamic", "tracked", "live", "_owners", "_wrapped")

    def __init__(self, model: nn.Module):
        self.model = model
        self.static = [_StaticPart(m) for m in _static_parts(model)]
        self.dynamic = [_DynamicPart(m) for m in _dynamic_parts(model)]
        #: id of a dynamic part's module -> its tracked call (see DynamicModule.__call__)
        self.tracked = {id(part.module): part.call for part in self.dynamic}
        self.live = 0  # dynamic parts that had a live segment so far
        self._owners = _innermost_dynamic(model, self.static, self.dynamic)
        self._wrapped: tuple[int, _Wrapped | None] | None = None

    def wrapped(self) -> _Wrapped | None:
        """The static parts a trace sets its forwards on (None: none): those outside every
        dynamic part, and those of the dynamic parts that had a live segment."""
        if self._wrapped is None or self._wrapped[0] != self.live:
            static = [part for part, owner in zip(self.static, self._owners, strict=True) if owner is None or owner.live]
            self._wrapped = (self.live, _Wrapped(static) if static else None)
        return self._wrapped[1]


def _innermost_dynamic(
    model: nn.Module, static: list[_StaticPart], dynamic: list[_DynamicPart]
) -> list[_DynamicPart | None]:
    """For each static part, the innermost dynamic part around it (None: outside every one)."""
    by_module = {id(part.module): part for part in dynamic}
    around: dict[int, _DynamicPart | None] = {id(model): None}

    def visit(module: nn.Module, enclosing: _DynamicPart | None) -> None:
        for child in module._modules.values():
            if child is not None and id(child) not in around:
                around[id(child)] = enclosing
                visit(child, by_module.get(id(child), enclosing))

    visit(model, by_module.get(id(model)))
    return [around[id(part.module)] for part in static]


class _Wrapped:
    """The replaying forwards of a model's static parts, set on the instances for the duration
    of a trace. Set and removed by C-level maps over the instances' dicts: a model can have
    dozens of them, and a Python loop over them costs a batch-1 forward a few percent."""

    __slots__ = ("dicts", "forwards")

    def __init__(self, parts: list[_StaticPart]):
        self.dicts = [part.module.__dict__ for part in parts]
        self.forwards = [part.forward for part in parts]

    def install(self) -> None:
        deque(map(dict.setdefault, self.dicts, repeat("forward"), self.forwards), maxlen=0)

    def remove(self) -> None:
        found = list(map(dict.pop, self.dicts, repeat("forward"), repeat(None)))
        if found != self.forwards:  # (functions compare by identity)
            for instance_dict, forward, current in zip(self.dicts, self.forwards, found, strict=True):
                if current is not forward and current is not None:
                    instance_dict["forward"] = current  # (set by someone else during the trace: it stays)


_KEY_SCALARS = (int, float, bool, str, type(None))


def _input_key(state: tuple, args: tuple, kwargs: dict) -> tuple | None:
    """`state`, then shapes and dtypes of the tensor arguments and values of the scalar ones
    (None: an argument a key cannot hold, such as a list of tensors: that call is counted, not
    replayed)."""
    key: list[Any] = [state]
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.shape, a.dtype))
        elif isinstance(a, _KEY_SCALARS):
            key.append(a)
        else:
            return None
    for name, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            key.append((name, a.shape, a.dtype))
        elif isinstance(a, _KEY_SCALARS):
            key.append((name, a))
        else:
            return None
    return tuple(key)


def _static_parts(model: nn.Module) -> list[nn.Module]:
    """The maximal submodules of `model` (itself included) with nothing dynamic inside: no
    DynamicModule, no module hook, no forward of their own set on the instance, and no
    controller below their top (a controller's output may feed a Python `if` in its parent; a
    controller itself can be a static part). The layers a GatedConv2d holds are left out: it
    reads their weights, never calls them."""
    static: dict[int, bool] = {}

    def visit(module: nn.Module) -> bool:
        found = static.get(id(module))
        if found is not None:
            return found
        ok = True
        for child in module._modules.values():
            if child is not None and not (visit(child) and not getattr(child, "_dynbench_controller", False)):
                ok = False
        ok = ok and not (
            isinstance(module, DynamicModule)
            or module._forward_hooks or module._forward_pre_hooks
            or "forward" in module.__dict__
        )
        static[id(module)] = ok
        return ok

    visit(model)
    parts: list[nn.Module] = []

    def collect(module: nn.Module) -> None:
        if static[id(module)]:
            if not isinstance(module, nn.Identity):
                parts.append(module)
            return
        if isinstance(module, GatedConv2d):
            return
        for child in module._modules.values():
            if child is not None:
                collect(child)

    collect(model)
    return list({id(m): m for m in parts}.values())


# --- replaying the counts of a dynamic part's own code, path by path -------------------------
#
# A dynamic module's own code (pooling a gate's input, scaling, the residual sum, shape reads)
# would pay the interception on every call. By the same contract, what one call of it counts
# between two routing records is a function of its input key and of the path taken so far:
# the records made (units, kept channels, costs, frames entered: each a decision's outcome), the
# outcomes of the values it read through torch (`.item()`, `bool()`, `nonzero()`: seen because
# such a segment is always intercepted) and what the dynamic calls nested in it returned (the
# shapes and dtypes: the caller sees a nested call only through its result). Each
# dynamic module (but GatedConv2d, which counts itself) keeps a tree of the paths its calls
# took, each node holding what the segment that starts there counted; a segment met again is
# replayed with the interceptor off, until the next routing record.
#
# The same contract makes a nested call's input key and its result functions of the caller's
# path: where the caller's replayed path is at node P when a call of part Q starts, that call
# has the same key every time (what the caller passes is computed by code that depends on the
# path only; Python state such as a submodule's training flag does not change while a
# measurement run's cache lives), and where that call's path ends at node E, it returned the
# same shapes. So P remembers which of Q's nodes the key leads to, and E which node of the
# caller's tree follows P after the return: the steady state of a nested call builds no key,
# reads no shape and touches few objects (each a cache miss after the convolutions before it).

_RECORD, _REPLAY, _LIVE = "record", "replay", "live"  # a segment's state; _LIVE: always counted
_MAX_NODES = 4096  # per dynamic module: past it, new paths are counted, not remembered


class _Node:
    """A point on a dynamic module's path tree: what the segment starting here counted."""

    __slots__ = ("next", "costs", "nested_part", "nested_node", "returns_from", "returns_to")

    def __init__(self) -> None:
        self.next: dict[Any, _Node] = {}
        self.costs: int | str | None = None  # packed counts; None: not met yet; _LIVE: it reads values
        # (see above) the nested call that starts where a call's path is at this node, as met
        # last: its part and the node of its key, whose first segment was counted before
        self.nested_part: _DynamicPart | None = None
        self.nested_node: _Node | None = None
        # a call whose path ended at this node, as met last: the caller's node when it started,
        # and the caller's node after it returned (whose segment was counted before)
        self.returns_from: _Node | None = None
        self.returns_to: _Node | None = None


class _Call:
    """One open call of a dynamic module inside a trace (opened by `Trace._call_begins`): its
    part, where it is on the part's path tree (`node`), where its open segment started and
    whether that segment is recorded, replayed or live, and the enclosing call."""

    __slots__ = ("part", "node", "segment", "state", "snapshot", "read", "args", "parent")
    part: _DynamicPart
    node: _Node | None
    segment: _Node | None
    state: str
    snapshot: tuple | None
    read: bool
    args: tuple
    parent: _Call | None


class _DynamicPart:
    """A dynamic module of a traced model and the tree of paths its calls took."""

    __slots__ = ("module", "call", "root", "nodes", "live")

    def __init__(self, module: nn.Module):
        self.module = module
        self.root = _Node()  # its first steps: the calls' input keys
        self.nodes = 0
        self.live = False  # one of its segments was counted live
        #: `call(trace, args, kwargs)`: the module's call, followed on its path tree inside a
        #: trace (made by `DynamicModule.__call__` while `trace` records with `_tracked` set)
        self.call = self._tracking(module._call_impl)

    def child(self, node: _Node, event: Any) -> _Node | None:
        found = node.next.get(event)
        if found is None and self.nodes < _MAX_NODES:
            found = node.next[event] = _Node()
            self.nodes += 1
        return found

    def _tracking(self, call_impl: Callable[..., Any]) -> Callable[[Trace, tuple, dict], Any]:
        part = self
        module, root = self.module, self.root

        def first_node(tr: Trace, args: tuple, kwargs: dict) -> _Node | None:
            """The node of this call's input key (None: a key cannot hold its arguments)."""
            if len(args) == 1 and not kwargs and args[0].__class__ is torch.Tensor:
                x = args[0]  # the common case, without the loop
                key = (module.training, tr._ctrl_depth > 0, torch.is_grad_enabled(), x.shape, x.dtype)
            else:
                key = _input_key((module.training, tr._ctrl_depth > 0, torch.is_grad_enabled()), args, kwargs)
            return None if key is None else (root.next.get(key) or part.child(root, key))

        def tracking_call(tr: Trace, args: tuple, kwargs: dict) -> Any:
            if tr._replaying:  # (inside a static part whose count is replayed: only kernels run)
                return call_impl(*args, **kwargs)
            parent = tr._call
            if tr._quiet and parent.state is _REPLAY and tr._device is not None:
                # the steady state, inline: the enclosing call's replayed segment (the counter is
                # off) ends here, and this call's first one, counted before, is replayed as well;
                # the node of its key is the one met last at the caller's node (see above)
                at = parent.node
                node, counted = at.nested_node, at.nested_part is part
                if not counted:
                    node = first_node(tr, args, kwargs)
                    counted = node is not None and node.costs.__class__ is int
                    if counted:
                        at.nested_part, at.nested_node = part, node
                if counted:
                    if at.costs:  # (a packed count is a long integer: adding nothing costs)
                        tr._frame.counts += at.costs
                    call = tr._call = _Call.__new__(_Call)  # (no `args`: read only while no device is known)
                    call.part, call.node, call.segment, call.state, call.parent = part, node, node, _REPLAY, parent
                else:
                    call = tr._call_begins(part, node, args)
            else:
                held = tr._on  # a counted segment is open: hold the counter off for the bookkeeping
                if held:  # (else it intercepts the key's shape reads, each a Python call)
                    _pause(tr)
                call = tr._call_begins(part, first_node(tr, args, kwargs), args)
                if held:  # (a replayed first segment keeps it off)
                    _unpause(tr)
            try:
                out = call_impl(*args, **kwargs)
            except BaseException:
                tr._call_ends(call, None, finished=False)
                raise
            if parent is None:
                tr._call_ends(call, None)
                return out
            at = parent.node
            if call.state is _REPLAY and at is not None and tr._device is not None:
                # the steady state, inline: its last segment is replayed, and the enclosing
                # call's next one, counted before, follows the node where this path ended (see
                # above: met once, what the call returned is not read again)
                end = call.node
                if end.returns_from is not at:
                    returned = _returned(tr, out)
                    after = at.next.get(returned)
                    if after is None or after.costs.__class__ is not int:
                        tr._call_ends(call, returned)
                        return out
                    end.returns_from, end.returns_to = at, after
                if end.costs:
                    tr._frame.counts += end.costs
                tr._call = parent
                parent.node = parent.segment = end.returns_to
                parent.state = _REPLAY
                return out
            tr._call_ends(call, _returned(tr, out))
            return out

        return tracking_call


def _int_or_none(value: Any) -> int | None:
    """A record's value on a path: the number itself, None for a tensor (rows that differ do
    not steer the model's code: what does is read through torch and seen, or enters a frame)."""
    return value if isinstance(value, int) else None


def _returned(tr: Trace, out: Any) -> Any:
    """`_outcome` of what a nested call returned, read with the counter held off (in a counted
    segment its shape reads would be intercepted)."""
    if not tr._on:
        return _outcome(out)
    _pause(tr)
    try:
        return _outcome(out)
    finally:
        _unpause(tr)


def _outcome(out: Any) -> Any:
    """What a value read or a nested dynamic call returned, as a path step: numbers, booleans
    and strings as they are, tensors by shape and dtype (a read whose result is a tensor, like
    `nonzero`, steers the code by its size; its values are read again through torch if they
    steer more); None where it cannot be held (a dict, say: the path ends there).

    A nested call steps its caller's path by its result only: by the execution contract the
    caller's code depends on the call through what it returned — the values it reads of it are
    read through torch, so seen — not on the path the call took inside, so the caller's path
    does not grow with its nested calls' decisions."""
    if isinstance(out, (bool, int, float, complex, str, type(None))):
        return ("=", out)
    if isinstance(out, torch.Tensor):
        return (out.shape, out.dtype)
    if isinstance(out, (tuple, list)):
        steps = tuple(map(_outcome, out))
        return None if None in steps else steps
    return None


def _dynamic_parts(model: nn.Module) -> list[nn.Module]:
    """The dynamic modules of `model` whose calls a trace follows path by path: every
    DynamicModule but GatedConv2d (it reports its own costs; none of its code is counted) and
    modules whose forward is set on the instance (not the code their class declares: their
    calls are intercepted)."""
    return [
        m for m in model.modules()
        if isinstance(m, DynamicModule) and not isinstance(m, GatedConv2d) and "forward" not in m.__dict__
    ]


# --------------------------------------------------------------------------------------------
# Controllers
# --------------------------------------------------------------------------------------------

_CONTROLLER_CLASSES: dict[type, type] = {}


def _controller_class(cls: type) -> type:
    """`cls` with a forward that counts what it computes as controller MACs inside a trace.
    Outside a trace it is one attribute read more than `cls.forward`: no module hooks, so
    PyTorch keeps its fast call path (hooks on a module force the slow one on every call)."""
    sub = _CONTROLLER_CLASSES.get(cls)
    if sub is not None:
        return sub
    plain = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        tr = _ACTIVE
        if tr is None:
            return plain(self, *args, **kwargs)
        tr._ctrl_depth += 1
        try:
            return plain(self, *args, **kwargs)
        finally:
            tr._ctrl_depth -= 1

    sub = type(f"Controller{cls.__name__}", (cls,), {
        "forward": forward, "_dynbench_controller": True, "__module__": cls.__module__,
        "__doc__": cls.__doc__,
    })  # fmt: skip
    _CONTROLLER_CLASSES[cls] = sub
    return sub


def mark_controller(module: nn.Module) -> nn.Module:
    """Mark `module` as a controller (gate network, Q-network, L-Net/C-Net head): everything it
    computes is reported as `macs_controller` (and included in executed MACs), whatever its
    output feeds — a routing decision or a plain Python `if`. Returns `module`; its class
    becomes a subclass of its own whose `forward` does the accounting (as torch's
    parametrizations do), so isinstance checks and state_dict keys are unchanged. Idempotent."""
    if not getattr(module, "_dynbench_controller", False):
        module.__class__ = _controller_class(type(module))
    return module


class Controller(nn.Module):
    """Wrapper form of `mark_controller` (its state_dict keys gain a `module.` prefix)."""

    _dynbench_controller = True

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tr = _ACTIVE
        if tr is None:
            return self.module(*args, **kwargs)
        tr._ctrl_depth += 1
        try:
            return self.module(*args, **kwargs)
        finally:
            tr._ctrl_depth -= 1


# --------------------------------------------------------------------------------------------
# Engines and unit names
# --------------------------------------------------------------------------------------------


class DynamicModule(nn.Module):
    """Base of every module that routes: holds the engine, names its routing units.

    A dynamic model subclasses it and routes with `self.route(...)`, so that
    `model.set_engine("sparse")` switches every primitive inside it.
    """

    engine: str = DEFAULT_ENGINE

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module's call (`_wrapped_call_impl`), but inside a trace that follows the traced
        # model's dynamic parts path by path (see _DynamicPart), where the call of one of them
        # goes through its part. (A class-level check rather than a forward set on each part
        # for each trace: outside a trace it costs one global read, and a trace sets nothing.)
        tr = _ACTIVE
        if tr is not None and tr._tracked is not None:
            call = tr._tracked.get(id(self))
            if call is not None:
                return call(tr, args, kwargs)
        if self._compiled_call_impl is not None:
            return self._compiled_call_impl(*args, **kwargs)
        return self._call_impl(*args, **kwargs)

    def set_engine(self, engine: str) -> DynamicModule:
        set_engine(self, engine)
        return self

    def route(
        self,
        module: Callable[..., torch.Tensor],
        x: torch.Tensor,
        keep: torch.Tensor,
        *rows: torch.Tensor,
        default: Any = IDENTITY,
        unit: str | None = None,
        out_shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """`route` with this module's engine; the unit is named after `module`'s attribute
        path (e.g. `layer2.3`) when not given."""
        if unit is None:
            unit = self._unit_name(module)
        return route(
            module, x, keep, *rows, default=default, unit=unit, engine=self.engine,
            out_shape=out_shape,
        )

    def _unit_name(self, module: Any) -> str:
        names = self.__dict__.get("_dynbench_names")
        name = None if names is None else names.get(id(module))
        if name is not None:
            try:
                valid = self.get_submodule(name) is module
            except AttributeError:
                valid = False
            if not valid:
                name = None
        if name is None and isinstance(module, nn.Module):
            names = {id(m): n for n, m in self.named_modules() if n}
            self.__dict__["_dynbench_names"] = names
            name = names.get(id(module))
        if name is None:
            return getattr(module, "__name__", type(module).__name__)
        prefix = self.__dict__.get("_dynbench_prefix", "")
        return f"{prefix}.{name}" if prefix else name


def is_dynamic(model: nn.Module) -> bool:
    """True when `model` contains routing primitives (its cost depends on the input)."""
    return any(isinstance(m, DynamicModule) for m in model.modules())


def name_units(model: nn.Module) -> nn.Module:
    """Name unnamed primitives (and the units of `DynamicModule.route`) by their attribute
    path in `model`, so that per-unit records are stable across runs."""
    for name, module in model.named_modules():
        if isinstance(module, DynamicModule):
            module.__dict__["_dynbench_prefix"] = name
            if isinstance(module, (SampleRouter, GatedConv2d)) and module.unit is None:
                module.unit = name or type(module).__name__
    return model


def set_engine(model: nn.Module, engine: str) -> nn.Module:
    """Set the engine (`masked` or `sparse`) of every routing primitive inside `model`, and
    name its units (see `name_units`). Returns `model`."""
    _check_engine(engine)
    for module in model.modules():
        if isinstance(module, DynamicModule):
            module.engine = engine
    return name_units(model)


# --------------------------------------------------------------------------------------------
# Sample routing
# --------------------------------------------------------------------------------------------


def _decision(keep: torch.Tensor, n: int, unit: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hard boolean decision, float gate or None) from a boolean or float `keep`."""
    if not isinstance(keep, torch.Tensor):
        raise TypeError(f"route(unit='{unit}'): keep must be a tensor, got {type(keep).__name__}")
    if keep.dim() != 1:
        keep = keep.reshape(keep.shape[0], -1) if keep.dim() else keep.reshape(1, 1)
        if keep.shape[1] != 1:
            raise ValueError(
                f"route(unit='{unit}'): keep must hold one decision per row, got shape "
                f"{tuple(keep.shape)}"
            )
        keep = keep[:, 0]
    if keep.shape[0] != n:
        raise ValueError(
            f"route(unit='{unit}'): keep has {keep.shape[0]} decisions for a batch of {n} rows"
        )
    if keep.dtype == torch.bool:
        return keep, None
    return keep != 0, keep


def decide_threshold(score: torch.Tensor, tau: float, *, unit: str) -> torch.Tensor:
    """The hard decision `score >= tau` (boolean, same shape as `score`). Inside a trace its
    margin `|score - tau|` (smallest over a row's entries, e.g. over channels) is recorded,
    so that a regression check can tell a decision that flipped because the code changed from
    one that sat on the threshold and flipped with the last bit of a CPU kernel."""
    tr = _ACTIVE
    if tr is None:
        return score >= tau
    if tr._on:  # the decision and its record are the primitive's work, not the model's
        with _Suppressed(tr):
            keep = score >= tau
            tr._margin(unit, _threshold_margin, score.detach(), tau)
        return keep
    if tr._margins is None:  # (what `_margin` does then, without the call)
        tr._events += 1
    else:
        tr._margin(unit, _threshold_margin, score.detach() if score.requires_grad else score, tau)
    return score >= tau


def _threshold_margin(score: torch.Tensor, tau: float) -> torch.Tensor:
    margin = (score - tau).abs()
    return margin.reshape(margin.shape[0], -1).amin(1) if margin.dim() > 1 else margin


def decide_argmax(values: torch.Tensor, *, unit: str, where: torch.Tensor | None = None) -> torch.Tensor:
    """The action `values.argmax(1)` per row (e.g. over Q-values). Inside a trace the gap
    between the two best values is recorded as the decision's margin (see `decide_threshold`);
    `where` (boolean per row) limits the record to the rows whose decision is used."""
    action = values.argmax(1)
    tr = _ACTIVE
    if tr is not None and values.shape[0]:
        with _Suppressed(tr):  # the record is the trace's work, not the model's
            tr._margin(unit, _argmax_margin, values.detach(), where)
    return action


def _argmax_margin(values: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    if values.shape[1] > 1:
        top = values.topk(2, dim=1).values
        margin = top[:, 0] - top[:, 1]
    else:
        margin = torch.full((values.shape[0],), math.inf, device=values.device)
    if where is not None:
        margin = torch.where(where, margin, torch.full_like(margin, math.inf))
    return margin


def decide_topk(scores: torch.Tensor, k: int, *, unit: str) -> torch.Tensor:
    """The k largest entries of each row of `scores` (N, C), as a boolean (N, C) mask with
    exactly k true entries per row (winner-take-all, e.g. FBS's channel choice). Inside a trace
    the gap between the k-th and the (k+1)-th score is recorded as the decision's margin (see
    `decide_threshold`); a tie is a zero margin."""
    if scores.dim() != 2:
        raise ValueError(f"decide_topk(unit='{unit}'): scores must be (N, C), got shape {tuple(scores.shape)}")
    channels = scores.shape[1]
    if not 1 <= k <= channels:
        raise ValueError(f"decide_topk(unit='{unit}'): k must be in [1, {channels}], got {k}")
    top = scores.detach().topk(min(k + 1, channels), dim=1)
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, top.indices[:, :k], True)
    tr = _ACTIVE
    if tr is not None and scores.shape[0]:
        with _Suppressed(tr):  # the record is the trace's work, not the model's
            if tr._margins is None:  # nothing is recorded (no kernel for it): `scores` only
                margin = scores  # fixes the trace's batch and device if nothing did yet
            elif k < channels:
                margin = top.values[:, k - 1] - top.values[:, k]
            else:
                margin = torch.full((scores.shape[0],), math.inf, device=scores.device)
            tr._margin(unit, margin)
    return keep


def _rows_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _check_identity(unit: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if y.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"route(unit='{unit}'): the identity default needs the module to keep the row "
            f"shape {tuple(x.shape[1:])}, but it returned {tuple(y.shape[1:])}; pass a "
            "constant, tensor or callable default"
        )


def _check_rows(unit: str, value: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"route(unit='{unit}'): {what} must have {n} rows, got {shape}")
    return value


def _callable_default(default: Callable, x: torch.Tensor, unit: str) -> torch.Tensor:
    out = _counted(_ACTIVE, default, x)
    return _check_rows(unit, out, x.shape[0], "the callable default's output")


def _constant_rows(
    value: float, n: int, y: torch.Tensor | None, x: torch.Tensor, out_shape: Any, unit: str
) -> torch.Tensor:
    if y is not None:
        return y.new_full((n, *y.shape[1:]), value)
    if out_shape is None:
        raise ValueError(
            f"route(unit='{unit}'): no row was selected, so the output shape is unknown; a "
            "constant default needs out_shape=(per-row shape)"
        )
    return x.new_full((n, *out_shape), value)


def _blend(gate: torch.Tensor, y: torch.Tensor, d: torch.Tensor, finite: bool) -> torch.Tensor:
    """Straight-through gate: gate·y + (1 − gate)·default (gate·y where default is ±inf)."""
    g = _rows_view(gate, y).to(y.dtype)
    if finite:
        return g * y + (1 - g) * d
    return torch.where(g != 0, g * y, d)


def route(
    module: Callable[..., torch.Tensor],
    x: torch.Tensor,
    keep: torch.Tensor,
    *rows: torch.Tensor,
    default: Any = IDENTITY,
    unit: str | None = None,
    engine: str | None = None,
    out_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Run `module(x, *rows)` only on the rows of the batch where `keep` is true.

    `keep`: one decision per row, boolean or float (a float gate skips where it is 0 and
    multiplies the output elsewhere: `gate·y + (1 − gate)·default`, so a straight-through
    gate's gradient reaches the controller); for a one-row batch also a Python bool (an
    executor that branches in Python at batch 1 passes what it decided, no tensor needed). `rows`: further per-row inputs, gathered with `x`.
    `default`, for skipped rows: `IDENTITY` (the input passes through), a number (e.g. 0.0 or
    -inf logits; give `out_shape` if the selection can be empty), a tensor with one row per
    sample, or a callable `default(x_skipped) -> rows`. `unit` names the decision in traces.

    Sparse engine: gathers the selected rows, calls the module on them, scatters back; an empty
    selection does not call the module at all, a full one calls it on `x` itself (no copy).
    Masked engine: calls the module on every row and selects (or blends) by the decision.
    """
    tr = _ACTIVE
    if x.shape[0] == 1 and (engine or DEFAULT_ENGINE) == "sparse" and not isinstance(default, torch.Tensor):
        # batch 1: a Python branch, nothing to gather; inside a trace, one unit record
        run = _one_row_decision(keep, tr)
        if run is True or (run is False and default is IDENTITY):
            for extra in rows:
                if extra.__class__ is not torch.Tensor or extra.dim() == 0 or extra.shape[0] != 1:
                    _check_rows(unit or "route", extra, 1, "every per-row input")
            if tr is not None:
                if tr._device is None:
                    tr._see(x)
                tr._unit(unit or getattr(module, "__name__", None) or type(module).__name__, 1 if run else 0)
            return module(x, *rows) if run else x
    _pause(tr)
    try:
        return _route(module, x, keep, rows, default, unit, engine, out_shape, tr)
    finally:
        _unpause(tr)


def _one_row_decision(keep: Any, tr: Trace | None) -> bool | None:
    """A one-row batch's hard decision as a Python bool (read with the counter held off: the
    primitive's work), or None where it is not one (a float gate, a malformed decision: the
    general path handles and checks those)."""
    if keep is True or keep is False:
        return keep
    if tr is not None and tr._on:
        _pause(tr)
        try:
            return _one_row_decision(keep, None)
        finally:
            _unpause(tr)
    if keep.__class__ is torch.Tensor and keep.dtype == torch.bool and keep.numel() == 1:
        return bool(keep)
    return None


def _route(
    module: Callable, x: torch.Tensor, keep: Any, rows: tuple, default: Any, unit: str | None,
    engine: str | None, out_shape: Any, tr: Trace | None,
) -> torch.Tensor:
    unit = unit or getattr(module, "__name__", None) or type(module).__name__
    engine = DEFAULT_ENGINE if engine is None else _check_engine(engine)
    n = x.shape[0]
    if keep is True or keep is False:
        if n != 1:
            raise ValueError(
                f"route(unit='{unit}'): a Python bool decides a one-row batch; this batch has "
                f"{n} rows (pass one decision per row as a tensor)"
            )
        hard, gate = (torch.tensor([keep], device=x.device) if engine == "masked" else keep), None
    else:
        hard, gate = _decision(keep, n, unit)
    for extra in rows:
        _check_rows(unit, extra, n, "every per-row input")
    if isinstance(default, torch.Tensor):
        _check_rows(unit, default, n, "a tensor default")
    if tr is not None and tr._device is None:
        tr._see(x)
    if engine == "masked":
        if tr is not None:
            tr._unit(unit, hard)
        return _route_masked(module, x, rows, hard, gate, default, unit, tr)
    return _route_sparse(module, x, rows, hard, gate, default, unit, out_shape, tr)


def _sync(tr: Trace) -> None:
    """Put the trace's function counter on the torch-function stack, or take it off, as its
    state wants: off while a primitive holds it (`_hold`) or a replayed segment runs
    (`_quiet`). Taking it off needs it on top of the stack; where another mode sits above it,
    it stays on (`tr._on` says which)."""
    want = not (tr._hold or tr._quiet)
    if want is tr._on:
        return
    if want:
        torch._C._push_on_torch_function_stack(tr._mode)
        tr._on = True
    elif torch._C._len_torch_function_stack():
        top = torch._C._pop_torch_function_stack()
        if top is tr._mode:
            tr._on = False
        else:
            torch._C._push_on_torch_function_stack(top)


def _pause(tr: Trace | None) -> None:
    """Take the trace's function counter off while a primitive does its own bookkeeping
    (decisions, shape checks, index kernels: not the model's work, and each intercepted call
    costs a microsecond or more); `_counted` puts it back for the model's code the primitive
    runs."""
    if tr is not None and tr._mode is not None:
        tr._hold += 1
        _sync(tr)


def _unpause(tr: Trace | None) -> None:
    if tr is not None and tr._mode is not None:
        tr._hold -= 1
        _sync(tr)


def _counted(tr: Trace | None, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` — the model's code called by a primitive — with a held counter released."""
    if tr is None or not tr._hold or tr._replaying:
        return fn(*args)
    hold, tr._hold = tr._hold, 0
    _sync(tr)
    try:
        return fn(*args)
    finally:
        tr._hold = hold
        _sync(tr)


def route_rows(
    module: Callable[..., Any], rows: torch.Tensor | None, *inputs: Any, batch: int, unit: str
) -> Any:
    """Run `module(*inputs)` for the rows `rows` of a batch of `batch` samples, the inputs
    already holding those rows only, and return its output for those rows only: sample
    routing for an executor that keeps values compact between modules (a D2NN graph at batch >
    1: no full-batch scatter after each node, no gather before the next). `rows`: sorted sample
    indices into the current batch, or None for every row; an executor records a module that
    runs on no row with `skip(unit)`. Inside a trace it records what `route` records: the unit
    ran for those samples, and the module's costs are theirs."""
    tr = _ACTIVE
    if tr is None:
        return module(*inputs)
    if tr._device is None:
        tr._see(inputs[0] if inputs else None)
    if rows is None or rows.shape[0] == batch:
        tr._unit(unit, 1)
        return module(*inputs)
    _pause(tr)
    try:
        executed = torch.zeros(batch, dtype=torch.bool, device=rows.device).index_fill_(0, rows, True)
        tr._unit(unit, executed)
        tr._push(rows, None)
        try:
            return _counted(tr, module, *inputs)
        finally:
            tr._pop()
    finally:
        _unpause(tr)


def skip(unit: str) -> None:
    """Record, inside a trace, that `unit` ran on no row of the current computation: what
    `route` records for an empty selection, for an executor that skips a module without
    calling `route` at all (a batch-1 walk on Python booleans). Nothing outside a trace."""
    tr = _ACTIVE
    if tr is not None:
        tr._unit(unit, 0)


def _route_sparse(
    module: Callable, x: torch.Tensor, rows: tuple, hard: torch.Tensor,
    gate: torch.Tensor | None, default: Any, unit: str, out_shape: Any, tr: Trace | None,
) -> torch.Tensor:
    n = x.shape[0]
    if n == 1:  # one row: a Python branch, no index kernel
        idx, k = None, 1 if (hard if hard.__class__ is bool else bool(hard[0])) else 0
    else:
        idx = hard.nonzero().squeeze(1)
        k = idx.numel()
    if tr is not None:
        tr._unit(unit, 1 if k == n else 0 if k == 0 else hard)
    finite = not (isinstance(default, (int, float)) and not math.isfinite(default))
    if k == n:  # full selection: no gather, no scatter
        y = _counted(tr, module, x, *rows)
        if gate is None:
            return y
        return _counted(tr, _blend, gate, y, _default_all(default, x, y, out_shape, unit, tr), finite)
    if k == 0:  # empty selection: the module does not run
        return _default_all(default, x, None, out_shape, unit, tr)
    xs = x.index_select(0, idx)
    rs = [r.index_select(0, idx) for r in rows]
    if tr is not None:
        tr._push(idx, None)
    try:
        y = _counted(tr, module, xs, *rs)
    finally:
        if tr is not None:
            tr._pop()
    skip = None
    if gate is not None:
        d_rows = _default_rows(default, x, xs, idx, y, unit)
        y = _counted(tr, _blend, gate.index_select(0, idx), y, d_rows, finite)
    if default is IDENTITY:
        _check_identity(unit, x, y)
        return x.to(y.dtype).index_copy(0, idx, y)
    if isinstance(default, torch.Tensor):
        return default.to(y.dtype).index_copy(0, idx, y)
    if callable(default):
        skip = (~hard).nonzero().squeeze(1)
        if tr is not None:
            tr._push(skip, None)
        try:
            d = _callable_default(default, x.index_select(0, skip), unit)
        finally:
            if tr is not None:
                tr._pop()
        out = y.new_empty((n, *y.shape[1:]))
        return out.index_copy(0, idx, y).index_copy(0, skip, d.to(y.dtype))
    return _constant_rows(default, n, y, x, out_shape, unit).index_copy(0, idx, y)


def _default_rows(
    default: Any, x: torch.Tensor, xs: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, unit: str
) -> torch.Tensor:
    """The default values of the selected rows (for blending with a float gate)."""
    if default is IDENTITY:
        return xs
    if isinstance(default, torch.Tensor):
        return default.index_select(0, idx)
    if callable(default):
        return _callable_default(default, xs, unit)
    return y.new_full(y.shape, default)


def _default_all(
    default: Any, x: torch.Tensor, y: torch.Tensor | None, out_shape: Any, unit: str,
    tr: Trace | None,
) -> torch.Tensor:
    """The default values of every row (a callable default runs under its own frame, counted
    for the rows that take it)."""
    if default is IDENTITY:
        if y is not None:
            _check_identity(unit, x, y)
        return x
    if isinstance(default, torch.Tensor):
        return default
    if callable(default):
        return _callable_default(default, x, unit)
    return _constant_rows(default, x.shape[0], y, x, out_shape, unit)


def _route_masked(
    module: Callable, x: torch.Tensor, rows: tuple, hard: torch.Tensor,
    gate: torch.Tensor | None, default: Any, unit: str, tr: Trace | None,
) -> torch.Tensor:
    if tr is not None:
        tr._push(None, hard)
    try:
        y = _counted(tr, module, x, *rows)
    finally:
        if tr is not None:
            tr._pop()
    if default is IDENTITY:
        _check_identity(unit, x, y)
        d = x
    elif isinstance(default, torch.Tensor):
        d = default
    elif callable(default):
        if tr is not None:
            tr._push(None, ~hard)
        try:
            d = _callable_default(default, x, unit)
        finally:
            if tr is not None:
                tr._pop()
    else:
        d = y.new_full(y.shape, default)
    if gate is None:
        return torch.where(_rows_view(hard, y), y, d.to(y.dtype))
    finite = not (isinstance(default, (int, float)) and not math.isfinite(default))
    return _counted(tr, _blend, gate, y, d.to(y.dtype), finite)


class SampleRouter(DynamicModule):
    """`route` as a module: `SampleRouter(block, "layer2.3")(x, keep)`.

    The wrapped module's state_dict keys gain a `module.` prefix.
    """

    def __init__(
        self,
        module: nn.Module,
        unit: str | None = None,
        *,
        default: Any = IDENTITY,
        out_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.module = module
        self.unit = unit
        self.default = default
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor, keep: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
        return route(
            self.module, x, keep, *rows, default=self.default,
            unit=self.unit or f"SampleRouter@{id(self):x}", engine=self.engine,
            out_shape=self.out_shape,
        )

    def extra_repr(self) -> str:
        return f"unit={self.unit!r}, default={self.default!r}, engine={self.engine!r}"


# --------------------------------------------------------------------------------------------
# Channel gating
# --------------------------------------------------------------------------------------------


#: how GatedConv2d computes a batch (> 1 row) in the sparse engine: `grouped` (one sliced
#: convolution per distinct channel pattern: exactly the kept channels), `union` (one sliced
#: convolution over the batch's union of kept channels, each row then masked to its own),
#: `dense` (every channel, then masked). The executed MACs a trace records are always those
#: of the execution that ran.
EXECUTIONS = ("grouped", "union", "dense")
#: a model's choice: `exact` (always grouped: executed = theoretical MACs, the default, what
#: cost reports use) or `fastest` (per layer and batch, the execution the device's cost model
#: predicts to be fastest; latency runs report it as the engine `sparse:fastest`)
EXECUTION_MODES = ("exact", "fastest")


@dataclasses.dataclass(frozen=True)
class ExecutionCosts:
    """A device's cost model for choosing a gated convolution's execution: the fixed cost of
    one sliced convolution call (slicing, launch, gather/scatter) and the time per MAC."""

    call_s: float
    mac_s: float
    source: str = "default"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Measured on a 2-core AMD EPYC (AVX-512, one thread, torch 2.x) with `calibrate_executions`;
# `dynbench latency` recalibrates on the machine it times and records the result.
_EXECUTION_COSTS: dict[str, ExecutionCosts] = {
    "cpu": ExecutionCosts(call_s=8e-5, mac_s=2e-11, source="default (2-core AMD EPYC, 1 thread)"),
    "cuda": ExecutionCosts(call_s=6e-5, mac_s=2e-14, source="default (a guess; calibrate on the GPU)"),
}


def execution_costs(device_type: str) -> ExecutionCosts:
    """The cost model used for `device_type` (cpu, cuda, ...)."""
    return _EXECUTION_COSTS.get(device_type, _EXECUTION_COSTS["cpu"])


def set_execution_costs(device_type: str, costs: ExecutionCosts) -> None:
    _EXECUTION_COSTS[device_type] = costs


@torch.no_grad()
def calibrate_executions(device: str | torch.device = "cpu", *, repeats: int = 9) -> ExecutionCosts:
    """Measure the cost model on `device` (about a second): a dense 3×3 convolution gives the
    time per MAC; a grouped GatedConv2d call with eight channel patterns, less its MACs, gives
    the cost of one pattern's sliced call (weight and BatchNorm slicing, row gather, scatter).
    Installs the result for the device type and returns it."""
    import time

    dev = torch.device(device)

    def median_time(fn: Callable[[], Any]) -> float:
        times = []
        for i in range(repeats + 3):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= 3:  # warm-up: kernel selection, allocator
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 16, 16, generator=g).to(dev)
    w = torch.randn(64, 64, 3, 3, generator=g).to(dev)
    mac_s = median_time(lambda: F.conv2d(x, w, None, 1, 1)) / (16 * 64 * 64 * 9 * 16 * 16)
    layer = GatedConv2d(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()).eval().to(dev)
    layer.set_engine("sparse")
    small = torch.randn(16, 16, 8, 8, generator=g).to(dev)
    patterns = torch.rand(8, 16, generator=g) > 0.5
    patterns[:, 0] = True
    gate = patterns.repeat(2, 1).to(dev)  # 8 distinct patterns, 2 rows each
    grouped = median_time(lambda: layer(small, gate))
    macs = float(gate.sum()) * 16 * 9 * 8 * 8
    call_s = max((grouped - macs * mac_s) / 8, 1e-7)
    costs = ExecutionCosts(call_s=call_s, mac_s=mac_s, source=f"calibrated on {dev.type}")
    set_execution_costs(dev.type, costs)
    return costs


_PATTERN_HASH: dict[torch.device, torch.Tensor] = {}


def _count_patterns(key: torch.Tensor) -> int:
    """Distinct rows of a boolean (N, C) mask, by a random 64-bit linear hash of each row (a
    third of the time of `torch.unique(dim=0)`; two distinct rows collide with probability
    about 2^-62, and a collision only makes the cost estimate one call cheaper)."""
    weights = _PATTERN_HASH.get(key.device)
    if weights is None or weights.numel() < key.shape[1]:
        g = torch.Generator().manual_seed(0)
        weights = torch.randint(1, 2**62, (max(4096, key.shape[1]),), generator=g).to(key.device)
        _PATTERN_HASH[key.device] = weights
    return int(torch.unique(key.long() @ weights[: key.shape[1]]).numel())


def set_execution(model: nn.Module, mode: str) -> nn.Module:
    """Set how every GatedConv2d in `model` executes a batch in the sparse engine: `exact`
    (grouped by pattern) or `fastest` (see EXECUTIONS). Returns `model`."""
    if mode not in EXECUTION_MODES:
        raise UnknownNameError("execution mode", str(mode), EXECUTION_MODES)
    for module in model.modules():
        if isinstance(module, GatedConv2d):
            module.execution = mode
    return model


def _channel_decision(
    mask: torch.Tensor | None, n: int, channels: int, what: str, unit: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if mask is None:
        return None, None
    if mask.dim() == 4:
        mask = mask.reshape(mask.shape[0], mask.shape[1])
    if mask.shape != (n, channels):
        raise ValueError(
            f"GatedConv2d '{unit}': {what} must have shape ({n}, {channels}), got "
            f"{tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask, None
    return mask != 0, mask


class GatedConv2d(DynamicModule):
    """A convolution (+ optional BatchNorm2d and element-wise activation) with per-sample
    channel decisions.

        y = act(norm(conv(x))) * gate        # gate: (N, C_out); zero entries are dropped

    `gate` (boolean or float; floats also scale the kept channels, after the activation)
    gates the output channels; `in_mask` (N, C_in) says which input channels are zero (the
    previous gated layer's decision), so that their share of this convolution is not computed
    either. LC-Net's C-Net gates a block's first convolution and passes the same decision as
    `in_mask` to the second; FBS gates a chain of convolutions the same way.

    Engines: `masked` runs the full convolution and multiplies (differentiable; executed MACs
    are the full cost); `sparse` computes only kept channels: at batch 1 by slicing the weights
    (and BatchNorm) to the kept output channels and the kept input channels, at batch > 1 by
    grouping the samples that share a channel set and running each group sliced. Both engines
    return the same tensor (dropped channels are zero). `groups` must be 1 or depthwise.
    """

    # nn.Module's own call: a trace never follows it path by path (it reports its own costs)
    __call__ = nn.Module.__call__

    def __init__(
        self,
        conv: nn.Conv2d,
        norm: nn.BatchNorm2d | None = None,
        act: nn.Module | None = None,
        *,
        unit: str | None = None,
    ):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"GatedConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"GatedConv2d needs zero padding, got padding_mode='{conv.padding_mode}'")
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if conv.groups != 1 and not depthwise:
            raise ValueError(
                f"GatedConv2d supports groups=1 or depthwise convolutions, got groups={conv.groups}"
            )
        if norm is not None:
            if not isinstance(norm, nn.BatchNorm2d):
                raise TypeError(f"GatedConv2d's norm must be nn.BatchNorm2d, got {type(norm).__name__}")
            if norm.num_features != conv.out_channels:
                raise ValueError(
                    f"GatedConv2d: norm has {norm.num_features} features for "
                    f"{conv.out_channels} output channels"
                )
        self.conv = conv
        self.norm = norm
        self.act = act
        self.unit = unit
        self.depthwise = depthwise
        #: `exact` or `fastest` (see EXECUTION_MODES; `set_execution`)
        self.execution = "exact"

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def _name(self) -> str:
        return self.unit or f"GatedConv2d@{id(self):x}"

    def forward(
        self,
        x: torch.Tensor,
        gate: torch.Tensor | None = None,
        in_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tr = _ACTIVE
        if gate is None and in_mask is None:  # no decision: the plain layer
            if tr is None:
                if not self.training and not torch.is_grad_enabled():
                    return self._dense(x, None, None, None)
            elif tr._quiet:  # in a replayed segment its count is the segment's: only the kernels run
                return self._dense(x, None, None, None)
            else:
                return self._traced_dense(x, tr)
        if tr is None:
            return self._forward(x, gate, in_mask)
        with _Suppressed(tr):  # it reports its own costs: nothing in it is the counter's to count
            return self._forward(x, gate, in_mask)

    def _forward(self, x: torch.Tensor, gate: torch.Tensor | None, in_mask: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        unit = self._name()
        out_keep, gate_f = _channel_decision(gate, n, self.conv.out_channels, "gate", unit)
        in_keep, _ = _channel_decision(in_mask, n, self.conv.in_channels, "in_mask", unit)
        tr = _ACTIVE
        if tr is not None and tr._device is None:
            tr._see(x)
        if self.engine == "sparse" and (out_keep is not None or in_keep is not None):
            self._check_eval(unit)
            execution = "grouped"
            if self.execution == "fastest" and n > 1 and not self.depthwise:
                execution = self._choose(x, out_keep, in_keep)
            if execution == "grouped":
                with _Suppressed(tr):
                    y, groups, inverse = self._sparse(x, out_keep, gate_f, in_keep, unit)
                if tr is not None:
                    self._record_groups(tr, y, groups, inverse, out_keep is not None, unit)
                    tr._execution(unit, "sliced" if n == 1 else "grouped")
                return y
            with _Suppressed(tr):
                y, n_out, n_in = self._union(x, out_keep, gate_f, in_keep, dense=execution == "dense")
            if tr is not None:
                self._record_rows(tr, y, out_keep, in_keep, n_out, n_in, unit)
                tr._execution(unit, execution)
            return y
        with _Suppressed(tr):
            y = self._dense(x, out_keep, gate_f, in_keep)
        if tr is not None:
            self._record_dense(tr, y, out_keep, in_keep, unit)
        return y

    def ungated(self, x: torch.Tensor) -> torch.Tensor:
        """`self(x)` without a decision. At inference outside a trace, with no hook on this
        layer, its kernels are called directly (the forward's own fast path, without the
        module call: a microsecond per layer at batch 1); anywhere else, the module call."""
        if self._forward_hooks or self._forward_pre_hooks or _global_forward_hooks():
            return self(x)
        tr = _ACTIVE
        if tr is not None:
            # in a replayed segment its count is the segment's: only the kernels run
            return self._dense(x, None, None, None) if tr._quiet else self._traced_dense(x, tr)
        if not self.training and not torch.is_grad_enabled():
            return self._dense(x, None, None, None)
        return self(x)

    def _traced_dense(self, x: torch.Tensor, tr: Trace) -> torch.Tensor:
        """No decision, inside a trace: the plain layer, counted in full. Its cost is a function
        of its input shape, as a static layer's (executed = theoretical, no routing record): in
        a replayed segment it is part of the segment's count, and only its kernels run."""
        if tr._quiet:
            return self._dense(x, None, None, None)
        if tr._device is None:
            tr._see(x)
        if tr.counter is None:  # routing records only: nothing to count or to hold off
            return self._dense(x, None, None, None)
        with _Suppressed(tr):  # it reports its own costs: nothing in it is the counter's to count
            y = self._dense(x, None, None, None)
        conv = self.conv
        macs = conv.out_channels * (conv.in_channels // conv.groups) * self._per_pair(y)
        tr._count("conv", macs * tr._frame.batch, x)
        return y

    def _dense(
        self, x: torch.Tensor, out_keep: Any, gate_f: Any, in_keep: Any
    ) -> torch.Tensor:
        norm = self.norm
        if not self.training and not torch.is_grad_enabled() and (norm is None or norm.running_mean is not None):
            if out_keep is None and in_keep is None:
                # inference without a decision: the modules' own kernels, called directly (the
                # same numbers as conv -> norm -> act, bit for bit, without three module calls)
                conv = self.conv
                y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                if norm is not None:
                    y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
                act = self.act
                if act is None:
                    return y
                return torch.relu(y) if type(act) is nn.ReLU else act(y)
            # inference with decisions: the same computation with the BatchNorm folded in
            return self._union(x, out_keep, gate_f, in_keep, dense=True)[0]
        if in_keep is not None:
            x = x * in_keep[:, :, None, None].to(x.dtype)
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
        if self.act is not None:
            y = self.act(y)
        if gate_f is not None:
            return y * gate_f[:, :, None, None].to(y.dtype)
        if out_keep is not None:
            return y * out_keep[:, :, None, None].to(y.dtype)
        return y

    def _check_eval(self, unit: str) -> None:
        norm = self.norm
        if norm is not None and (self.training or norm.running_mean is None):
            raise RuntimeError(
                f"GatedConv2d '{unit}': the sparse engine folds BatchNorm running statistics "
                "into the sliced convolution, so it runs in eval mode with tracked statistics "
                "only; use set_engine(model, 'masked') for training"
            )

    def _choose(self, x: torch.Tensor, out_keep: Any, in_keep: Any) -> str:
        """The execution the device's cost model predicts to be fastest for this batch."""
        n = x.shape[0]
        cout, cin = self.conv.out_channels, self.conv.in_channels
        hw = self._out_hw(x)
        pp = hw[0] * hw[1] * math.prod(self.conv.kernel_size)
        cost = execution_costs(x.device.type)
        if out_keep is not None and in_keep is not None:
            exact_macs = float((out_keep.sum(1) * in_keep.sum(1)).sum())
        elif out_keep is not None:  # one reduction where one side is gated
            exact_macs = float(out_keep.sum()) * cin
        elif in_keep is not None:
            exact_macs = float(in_keep.sum()) * cout
        else:
            exact_macs = float(n * cout * cin)
        masks = [m for m in (in_keep, out_keep) if m is not None]
        key = masks[0] if len(masks) == 1 else torch.cat(masks, 1)
        patterns = _count_patterns(key)
        uo = cout if out_keep is None else int(out_keep.any(0).sum())
        ui = cin if in_keep is None else int(in_keep.any(0).sum())
        # grouped: one sliced call per pattern (with its gather and scatter); union: one sliced
        # call; dense: one plain call
        t = {
            "grouped": patterns * cost.call_s + exact_macs * pp * cost.mac_s,
            "union": cost.call_s + n * uo * ui * pp * cost.mac_s,
            "dense": 0.5 * cost.call_s + n * cout * cin * pp * cost.mac_s,
        }
        return min(EXECUTIONS, key=lambda e: t[e])  # ties: the more exact execution

    def _union(
        self, x: torch.Tensor, out_keep: Any, gate_f: Any, in_keep: Any, dense: bool = False
    ) -> tuple[torch.Tensor, int, int]:
        """One sliced convolution over the batch's union of kept channels (`dense`: over every
        channel), with the BatchNorm folded in; each row then keeps its own channels (and
        scale). Returns the output and the computed (out, in) channel counts."""
        n = x.shape[0]
        cout, cin = self.conv.out_channels, self.conv.in_channels
        oi = None if out_keep is None or dense else out_keep.any(0).nonzero().squeeze(1)
        ii = None if in_keep is None or dense else in_keep.any(0).nonzero().squeeze(1)
        oi = None if oi is not None and oi.numel() == cout else oi
        ii = None if ii is not None and ii.numel() == cin else ii
        if in_keep is not None:  # a row's own dropped inputs read as zero, as in the masked engine
            x = x * in_keep[:, :, None, None].to(x.dtype)
        n_out = cout if oi is None else oi.numel()
        n_in = cin if ii is None else ii.numel()
        if n_out == 0:
            return x.new_zeros((n, cout, *self._out_hw(x))), 0, n_in
        y = self._sliced(x, oi, ii)
        scale = gate_f if gate_f is not None else out_keep
        if scale is not None:
            scale = scale if oi is None else scale.index_select(1, oi)
            y = y * scale[:, :, None, None].to(y.dtype)
        if oi is None:
            return y, n_out, n_in
        return y.new_zeros((n, cout, *y.shape[2:])).index_copy_(1, oi, y), n_out, n_in

    def _record_rows(
        self, tr: Trace, y: torch.Tensor, out_keep: Any, in_keep: Any, n_out: int | None,
        n_in: int | None, unit: str,
    ) -> None:
        """Trace a union or dense execution: every row paid the union's (or the full) MACs;
        its theoretical MACs are its own kept channels'."""
        pp = self._per_pair(y)
        cout, cin = self.conv.out_channels, self.conv.in_channels
        executed = (cout if n_out is None else n_out) * (cin if n_in is None else n_in) * pp
        ro = cout if out_keep is None else out_keep.sum(1)
        ri = cin if in_keep is None else in_keep.sum(1)
        tr._per_row("conv", executed, ro * ri * pp)
        if out_keep is not None:
            tr._channels(unit, ro)

    def _sparse(
        self, x: torch.Tensor, out_keep: Any, gate_f: Any, in_keep: Any, unit: str
    ) -> tuple[torch.Tensor, list[tuple[int, int, int]], torch.Tensor | None]:
        """Compute kept channels only, one sliced convolution per group of samples sharing a
        channel pattern. Returns the output, (kept out, kept in, kept both) per group, and
        each row's group (None: a single group)."""
        n = x.shape[0]
        cin, cout = self.conv.in_channels, self.conv.out_channels
        masks = [m for m in (in_keep, out_keep) if m is not None]
        key = masks[0] if len(masks) == 1 else torch.cat(masks, 1)
        split = cin if in_keep is not None else 0
        inverse = None
        if n == 1:
            patterns = [key[0]]
        else:
            unique, inverse = torch.unique(key, dim=0, return_inverse=True)
            patterns = list(unique)
            if len(patterns) == 1:
                inverse = None
        out = None
        counts: list[tuple[int, int, int]] = []
        for g, pattern in enumerate(patterns):
            in_pattern = pattern[:split] if in_keep is not None else None
            out_pattern = pattern[split:] if out_keep is not None else None
            oi = None if out_pattern is None else out_pattern.nonzero().squeeze(1)
            ii = None if in_pattern is None else in_pattern.nonzero().squeeze(1)
            n_out = cout if oi is None else oi.numel()
            n_in = cin if ii is None else ii.numel()
            if self.depthwise and in_pattern is not None and out_pattern is not None:
                n_both = int((in_pattern & out_pattern).sum())
            else:
                n_both = min(n_out, n_in)
            counts.append((n_out, n_in, n_both))
            if n_out == 0:
                continue  # every output channel dropped: zeros
            rows = None if inverse is None else (inverse == g).nonzero().squeeze(1)
            xs = x if rows is None else x.index_select(0, rows)
            if self.depthwise:
                # kept outputs whose input channel is dropped see a zero input (as in masked)
                zero_in = in_pattern if in_pattern is not None and n_both < n_out else None
                y = self._sliced(xs, oi, None, zero_in)
            else:
                y = self._sliced(xs, oi, ii)
            if gate_f is not None:
                gs = gate_f if rows is None else gate_f.index_select(0, rows)
                if oi is not None:
                    gs = gs.index_select(1, oi)
                y = y * gs[:, :, None, None].to(y.dtype)
            if rows is None and oi is None:
                return y, counts, inverse
            if out is None:
                out = y.new_zeros((n, cout, *y.shape[2:]))
            if rows is None:
                out.index_copy_(1, oi, y)
            elif oi is None:
                out.index_copy_(0, rows, y)
            else:
                out.index_put_((rows[:, None], oi[None, :]), y)
        if out is None:
            out = x.new_zeros((n, cout, *self._out_hw(x)))
        return out, counts, inverse

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's weight and bias with the eval-mode BatchNorm folded in: one
        sliced convolution with a bias replaces a convolution and four sliced statistics.
        Cached until a weight or statistic changes (in place, by a load or an optimizer step:
        the tensors' versions; or by a move: their addresses)."""
        conv, norm = self.conv, self.norm
        tensors = [conv.weight, conv.bias]
        if norm is not None:
            tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        with torch.no_grad():
            weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
            if norm is not None:
                scale = (norm.running_var + norm.eps).rsqrt()
                if norm.weight is not None:
                    scale = scale * norm.weight
                shift = -norm.running_mean * scale
                if norm.bias is not None:
                    shift = shift + norm.bias
                if bias is not None:
                    shift = shift + bias * scale
                weight, bias = weight * scale[:, None, None, None], shift
        self.__dict__["_folded_cache"] = (key, weight, bias)
        return weight, bias

    def _sliced(
        self, x: torch.Tensor, oi: Any, ii: Any, zero_in: Any = None, compact_in: bool = False
    ) -> torch.Tensor:
        """Kept outputs `oi` from kept inputs `ii` (None: all); `compact_in`: x already holds
        only the channels `ii`, in that order (handed over by `gated_pair`)."""
        conv = self.conv
        weight, bias = self._folded()  # eval only: the sparse engine refuses training
        if oi is not None:
            weight = weight.index_select(0, oi)
            bias = None if bias is None else bias.index_select(0, oi)
        if self.depthwise:
            if oi is not None:
                x = x.index_select(1, oi)
            if zero_in is not None:
                keep_in = zero_in if oi is None else zero_in.index_select(0, oi)
                x = x * keep_in[None, :, None, None].to(x.dtype)
            groups = weight.shape[0]
        else:
            groups = 1
            if ii is not None:
                weight = weight.index_select(1, ii)
                if not compact_in:
                    x = x.index_select(1, ii)
        if x.shape[1] == 0:  # every input channel dropped: only the bias remains
            y = x.new_zeros((x.shape[0], weight.shape[0], *self._out_hw(x)))
            if bias is not None:
                y = y + bias[None, :, None, None]
        else:
            y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
        act = self.act
        if act is None:
            return y
        return torch.relu(y) if type(act) is nn.ReLU else act(y)

    def _out_hw(self, x: torch.Tensor) -> tuple[int, int]:
        """The convolution's output size, by arithmetic (a probe convolution, even on the meta
        device, would be seen by FLOP counters as work done)."""
        conv = self.conv
        if conv.padding == "same":
            return (x.shape[2], x.shape[3])
        padding = (0, 0) if conv.padding == "valid" else conv.padding
        return tuple(
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip(x.shape[2:], padding, conv.dilation, conv.kernel_size, conv.stride, strict=True)
        )

    def _per_pair(self, y: torch.Tensor) -> int:
        """MACs of one (output channel, input channel) pair per sample."""
        return y.shape[2] * y.shape[3] * math.prod(self.conv.kernel_size)

    def _record_groups(
        self, tr: Trace, y: torch.Tensor, counts: list[tuple[int, int, int]],
        inverse: torch.Tensor | None, gated: bool, unit: str,
    ) -> None:
        pp = self._per_pair(y)
        if self.depthwise:
            executed = [n_out * pp for n_out, _, _ in counts]
            theoretical = [n_both * pp for _, _, n_both in counts]
        else:
            executed = theoretical = [n_out * n_in * pp for n_out, n_in, _ in counts]
        kept = [n_out for n_out, _, _ in counts]
        if inverse is None:
            tr._per_row("conv", executed[0], theoretical[0])
            if gated:
                tr._channels(unit, kept[0])
            return

        def rows(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=inverse.device)[inverse]

        exec_rows = rows(executed)
        tr._per_row("conv", exec_rows, exec_rows if theoretical is executed else rows(theoretical))
        if gated:
            tr._channels(unit, rows(kept))

    def _record_dense(
        self, tr: Trace, y: torch.Tensor, out_keep: Any, in_keep: Any, unit: str
    ) -> None:
        pp = self._per_pair(y)
        cout, cin = self.conv.out_channels, self.conv.in_channels // self.conv.groups
        full = cout * cin * pp
        if out_keep is None and in_keep is None:
            tr._per_row("conv", full, full)
            return
        n_out = cout if out_keep is None else out_keep.sum(1)
        if self.depthwise:
            if in_keep is None:
                both = n_out
            else:
                both = in_keep.sum(1) if out_keep is None else (in_keep & out_keep).sum(1)
            theoretical = both * pp
        else:
            theoretical = n_out * (cin if in_keep is None else in_keep.sum(1)) * pp
        tr._per_row("conv", full, theoretical)
        if out_keep is not None:
            tr._channels(unit, n_out)


def _pair_batch(first: GatedConv2d, second: GatedConv2d, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`gated_pair` on a batch. With the per-layer choice (`fastest`) the pair chooses once,
    from the first layer's decision (the second reads the same channels), and where that is
    the dense execution, the second convolution reads the first's output as it is: its
    dropped channels are already exact zeros, so masking them again (what the two calls do)
    would change nothing and cost a pass over the tensor. Both layers are traced as the two
    calls would be."""
    if first.execution != "fastest":
        return second(first(x, gate), None, in_mask=gate != 0)
    n = x.shape[0]
    unit1, unit2 = first._name(), second._name()
    keep, gate_f = _channel_decision(gate, n, first.conv.out_channels, "gate", unit1)
    _channel_decision(keep, n, second.conv.in_channels, "in_mask", unit2)
    if keep is None or first._choose(x, keep, None) != "dense":
        return second(first(x, gate), None, in_mask=keep)
    first._check_eval(unit1)
    second._check_eval(unit2)
    tr = _ACTIVE
    if tr is not None and tr._device is None:
        tr._see(x)
    with _Suppressed(tr):
        h, n_out, n_in = first._union(x, keep, gate_f, None, dense=True)
        y, n_out2, n_in2 = second._union(h, None, None, None, dense=True)
    if tr is not None:
        first._record_rows(tr, h, keep, None, n_out, n_in, unit1)
        tr._execution(unit1, "dense")
        second._record_rows(tr, y, None, keep, n_out2, n_in2, unit2)
        tr._execution(unit2, "dense")
    return y


def _global_forward_hooks() -> bool:
    """Whether any global module forward (pre-)hook is installed (they see every module call)."""
    return bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks)


def gated_pair(first: GatedConv2d, second: GatedConv2d, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`second(first(x, gate), in_mask=gate != 0)`: two gated convolutions where the second
    reads only the channels the first kept (LC-Net's C-Net and FBS gate a block's inner
    channels this way). In the sparse engine at batch 1 the kept channels pass from one to the
    other compactly: no full-width tensor of zeros is filled and gathered back in between. The
    outputs and the trace are those of the two calls."""
    n = x.shape[0]
    if (first.engine != "sparse" or second.engine != "sparse" or first.depthwise or second.depthwise
            or first.execution != second.execution or first.training or second.training):  # fmt: skip
        return second(first(x, gate), None, in_mask=gate != 0)
    if n != 1:
        return _pair_batch(first, second, x, gate)
    unit1, unit2 = first._name(), second._name()
    keep, gate_f = _channel_decision(gate, n, first.conv.out_channels, "gate", unit1)
    _channel_decision(keep, n, second.conv.in_channels, "in_mask", unit2)
    first._check_eval(unit1)
    second._check_eval(unit2)
    oi = keep[0].nonzero().squeeze(1)
    k = oi.numel()
    if k == 0 or k == keep.shape[1]:  # nothing or everything kept: the plain calls are as cheap
        return second(first(x, gate), None, in_mask=keep)
    tr = _ACTIVE
    if tr is not None and tr._device is None:
        tr._see(x)
    with _Suppressed(tr):
        h = first._sliced(x, oi, None)
        if gate_f is not None:
            h = h * gate_f.index_select(1, oi)[:, :, None, None].to(h.dtype)
        y = second._sliced(h, None, oi, compact_in=True)
    if tr is not None:
        cin, cout = first.conv.in_channels, second.conv.out_channels
        first._record_groups(tr, h, [(k, cin, min(k, cin))], None, True, unit1)
        tr._execution(unit1, "sliced")
        second._record_groups(tr, y, [(cout, k, min(cout, k))], None, False, unit2)
        tr._execution(unit2, "sliced")
    return y
