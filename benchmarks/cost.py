"""MACs, counted the paper way (DESIGN §3).

The unit is the multiply-accumulate of convolutions, linear layers, matmuls (attention
included) and recurrent cells: what He et al., Li et al. and torchvision's docs call
"FLOPs". Normalization, activations, pooling and element-wise arithmetic are counted
separately (as elements processed, `other_ops`) and never added to MACs.

Two layers of API:

* the per-layer formulas (`module_macs`, `function_macs`), used by the trace counters of
  `benchmarks.routing`: one formula per layer type, computed from shapes only;
* model-level counting: `count_macs` (one sample, any model; for static models an input shape
  is enough), `count_params`, and `measure_cost` / `measure_split_costs` (per-sample
  `macs_executed`, `macs_theoretical`, `macs_controller` of a model over real evaluation
  inputs, with aggregates and the "simulated savings" flag).

Counting never changes a model: it runs in eval mode under `torch.no_grad()` and restores
every module's training flag, so parameters, buffers and BatchNorm statistics are untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from benchmarks.errors import DynbenchError

if TYPE_CHECKING:  # pandas is imported lazily: routing imports this module on the hot path
    import numpy as np
    import pandas as pd

__all__ = [
    "MAC_KINDS",
    "OTHER_KINDS",
    "CostResult",
    "MacsCount",
    "count_macs",
    "count_params",
    "function_macs",
    "measure_cost",
    "measure_split_costs",
    "module_macs",
    "summarize",
]

#: kinds of MAC-counted operations (reported per kind by `count_macs`)
MAC_KINDS = ("conv", "linear", "matmul", "rnn")
#: non-MAC operations, counted separately as elements processed
OTHER_KINDS = ("norm", "activation", "pooling", "elementwise")

#: a model whose sparse-engine executed MACs exceed theoretical by more than this is flagged
SIMULATED_SAVINGS_TOLERANCE = 0.01

PERCENTILES = (50, 90, 99)


# --------------------------------------------------------------------------------------------
# Per-layer formulas: total MACs of one call (whole batch), from shapes only.
# --------------------------------------------------------------------------------------------


def _conv_module(m: nn.Module, args: tuple, out: Any) -> int:
    return out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _conv_transpose_module(m: nn.Module, args: tuple, out: Any) -> int:
    # every input element is scattered through a (out_channels / groups) × kernel window
    return args[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


def _linear_module(m: nn.Module, args: tuple, out: Any) -> int:
    return out.numel() * m.in_features


def _bilinear_module(m: nn.Module, args: tuple, out: Any) -> int:
    return out.numel() * m.in1_features * m.in2_features


def _attention_macs(L: int, S: int, N: int, E: int, kdim: int, vdim: int) -> int:
    """nn.MultiheadAttention: q/k/v projections, QKᵀ, attention × V, output projection."""
    projections = L * N * E * E + S * N * kdim * E + S * N * vdim * E + L * N * E * E
    return projections + 2 * N * L * S * E


def _mha_module(m: nn.Module, args: tuple, out: Any) -> int:
    query = args[0]
    key = args[1] if len(args) > 1 else query
    if query.dim() == 2:  # unbatched (L, E)
        L, N, S = query.shape[0], 1, key.shape[0]
    elif m.batch_first:
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
    else:
        L, N, S = query.shape[0], query.shape[1], key.shape[0]
    return _attention_macs(L, S, N, m.embed_dim, m.kdim, m.vdim)


def _rnn_tokens(x: Any) -> int:
    data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
    return data.numel() // data.shape[-1]


def _rnn_module(m: nn.Module, args: tuple, out: Any) -> int:
    # every 2-D weight (input-hidden, hidden-hidden, projection) is applied once per token and
    # direction; deeper layers see the previous layer's output for the same tokens
    weights = sum(w.numel() for w in m.parameters() if w.dim() == 2)
    return _rnn_tokens(args[0]) * weights


def _rnn_cell_module(m: nn.Module, args: tuple, out: Any) -> int:
    x = args[0]
    rows = x.shape[0] if x.dim() == 2 else 1
    return rows * (m.weight_ih.numel() + m.weight_hh.numel())


# (kind, formula, cacheable by input shape)
_BASE_MODULE_RULES: dict[type, tuple[str, Callable[..., int], bool]] = {
    nn.Conv1d: ("conv", _conv_module, True),
    nn.Conv2d: ("conv", _conv_module, True),
    nn.Conv3d: ("conv", _conv_module, True),
    nn.ConvTranspose1d: ("conv", _conv_transpose_module, True),
    nn.ConvTranspose2d: ("conv", _conv_transpose_module, True),
    nn.ConvTranspose3d: ("conv", _conv_transpose_module, True),
    nn.Linear: ("linear", _linear_module, True),
    nn.Bilinear: ("linear", _bilinear_module, True),
    nn.MultiheadAttention: ("matmul", _mha_module, False),
    nn.RNNBase: ("rnn", _rnn_module, False),
    nn.RNNCellBase: ("rnn", _rnn_cell_module, False),
}
_MODULE_RULES: dict[type, tuple[str, Callable[..., int], bool] | None] = {}


def module_rule(cls: type) -> tuple[str, Callable[..., int], bool] | None:
    """The MAC rule of a module class (resolved through its bases once, then cached)."""
    try:
        return _MODULE_RULES[cls]
    except KeyError:
        pass
    rule = None
    for base in cls.__mro__:
        if base in _BASE_MODULE_RULES:
            rule = _BASE_MODULE_RULES[base]
            break
    _MODULE_RULES[cls] = rule
    return rule


def module_macs(module: nn.Module, args: tuple, output: Any) -> int | None:
    """MACs of one call of `module` (whole batch), or None for modules without MACs of their
    own (containers, norms, activations). Used by the `modules` trace counter."""
    rule = module_rule(type(module))
    return None if rule is None else rule[1](module, args, output)


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _f_conv(args: tuple, kwargs: dict, out: Any) -> int:
    weight = _arg(args, kwargs, 1, "weight")
    return out.numel() * math.prod(weight.shape[1:])


def _f_conv_transpose(args: tuple, kwargs: dict, out: Any) -> int:
    x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return x.numel() * math.prod(weight.shape[1:])  # weight: (in, out / groups, *kernel)


def _f_convolution(args: tuple, kwargs: dict, out: Any) -> int:
    transposed = _arg(args, kwargs, 6, "transposed")
    return (_f_conv_transpose if transposed else _f_conv)(args, kwargs, out)


def _f_linear(args: tuple, kwargs: dict, out: Any) -> int:
    return out.numel() * _arg(args, kwargs, 1, "weight").shape[-1]


def _f_bilinear(args: tuple, kwargs: dict, out: Any) -> int:
    weight = _arg(args, kwargs, 2, "weight")
    return out.numel() * weight.shape[1] * weight.shape[2]


def _f_matmul(args: tuple, kwargs: dict, out: Any) -> int:
    # (…, n, k) @ (…, k, m): every output element accumulates k products (1-D cases included)
    return out.numel() * args[0].shape[-1]


def _f_rmatmul(args: tuple, kwargs: dict, out: Any) -> int:
    return out.numel() * args[1].shape[-1]  # Tensor.__rmatmul__(self, other) = other @ self


def _f_addmm(args: tuple, kwargs: dict, out: Any) -> int:
    return out.numel() * args[1].shape[-1]  # addmm / baddbmm / addmv(input, a, b)


def _f_addbmm(args: tuple, kwargs: dict, out: Any) -> int:
    batch1 = args[1]
    return batch1.shape[0] * out.numel() * batch1.shape[-1]


def _f_einsum(args: tuple, kwargs: dict, out: Any) -> int:
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(equation, str) or len(operands) < 2:
        return 0
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    sizes: dict[Any, int] = {}
    labels: list[list[Any]] = []
    for term, tensor in zip(terms, operands, strict=True):
        if "..." in term:
            head, tail = term.split("...")
            n_ellipsis = tensor.dim() - len(head) - len(tail)
            dims = list(head) + [("...", n_ellipsis - i) for i in range(n_ellipsis)] + list(tail)
        else:
            dims = list(term)
        for label, size in zip(dims, tensor.shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), size)
        labels.append(dims)
    if "->" in equation:
        kept = {d for d in rhs if d != "."} | {d for d in sizes if isinstance(d, tuple)}
    else:  # implicit output: labels that appear exactly once
        counts: dict[Any, int] = {}
        for dims in labels:
            for d in set(dims):
                counts[d] = counts.get(d, 0) + 1
        kept = {d for d, c in counts.items() if c == 1 or isinstance(d, tuple)}
    # contract left to right, as torch.einsum does without opt_einsum: each pairwise step
    # costs the product of the sizes of every label involved, if it sums over something
    total, current = 0, set(labels[0])
    for i, dims in enumerate(labels[1:], start=1):
        later = set().union(*labels[i + 1 :]) if i + 1 < len(labels) else set()
        involved = current | set(dims)
        result = {d for d in involved if d in kept or d in later}
        if involved - result:
            total += math.prod(sizes[d] for d in involved)
        current = result
    return total


def _f_sdpa(args: tuple, kwargs: dict, out: Any) -> int:
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    batch = math.prod(out.shape[:-2])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _f_mha(args: tuple, kwargs: dict, out: Any) -> int:
    query, key, value = args[0], args[1], args[2]
    num_heads = _arg(args, kwargs, 4, "num_heads")
    del num_heads  # heads split E; the count does not depend on them
    E = query.shape[-1]
    if query.dim() == 2:
        L, N, S = query.shape[0], 1, key.shape[0]
    else:
        L, N, S = query.shape[0], query.shape[1], key.shape[0]
    return _attention_macs(L, S, N, E, key.shape[-1], value.shape[-1])


def _f_rnn(args: tuple, kwargs: dict, out: Any) -> int:
    # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    # batch_first) and the packed variant (data, batch_sizes, hx, params, ...)
    packed = len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dim() == 1
    params = args[3] if packed else args[2]
    weights = sum(w.numel() for w in params if w.dim() == 2)
    return _rnn_tokens(args[0]) * weights


def _f_rnn_cell(args: tuple, kwargs: dict, out: Any) -> int:
    x, w_ih, w_hh = args[0], args[2], args[3]
    rows = x.shape[0] if x.dim() == 2 else 1
    return rows * (w_ih.numel() + w_hh.numel())


_FUNCTION_MAC_RULES: dict[str, tuple[str, Callable[..., int]]] = {
    "conv1d": ("conv", _f_conv),
    "conv2d": ("conv", _f_conv),
    "conv3d": ("conv", _f_conv),
    "conv_transpose1d": ("conv", _f_conv_transpose),
    "conv_transpose2d": ("conv", _f_conv_transpose),
    "conv_transpose3d": ("conv", _f_conv_transpose),
    "convolution": ("conv", _f_convolution),
    "linear": ("linear", _f_linear),
    "bilinear": ("linear", _f_bilinear),
    "matmul": ("matmul", _f_matmul),
    "__matmul__": ("matmul", _f_matmul),
    "__rmatmul__": ("matmul", _f_rmatmul),
    "mm": ("matmul", _f_matmul),
    "bmm": ("matmul", _f_matmul),
    "mv": ("matmul", _f_matmul),
    "addmm": ("matmul", _f_addmm),
    "baddbmm": ("matmul", _f_addmm),
    "addmv": ("matmul", _f_addmm),
    "addbmm": ("matmul", _f_addbmm),
    "einsum": ("matmul", _f_einsum),
    "scaled_dot_product_attention": ("matmul", _f_sdpa),
    "multi_head_attention_forward": ("matmul", _f_mha),
    "lstm": ("rnn", _f_rnn),
    "gru": ("rnn", _f_rnn),
    "rnn_tanh": ("rnn", _f_rnn),
    "rnn_relu": ("rnn", _f_rnn),
    "lstm_cell": ("rnn", _f_rnn_cell),
    "gru_cell": ("rnn", _f_rnn_cell),
    "rnn_tanh_cell": ("rnn", _f_rnn_cell),
    "rnn_relu_cell": ("rnn", _f_rnn_cell),
}


def _out_elements(args: tuple, kwargs: dict, out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0].numel()
    first = args[0] if args else None
    return first.numel() if isinstance(first, torch.Tensor) else 0


def _in_elements(args: tuple, kwargs: dict, out: Any) -> int:
    first = args[0] if args else kwargs.get("input")
    return first.numel() if isinstance(first, torch.Tensor) else 0


_OTHER_NAMES: dict[str, tuple[str, ...]] = {
    "norm": (
        "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
        "local_response_norm",
    ),
    "activation": (
        "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "hardswish",
        "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_",
        "elu", "elu_", "selu", "celu", "prelu", "mish", "softplus", "softmax", "log_softmax",
        "glu", "threshold",
    ),
    "pooling": (
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
        "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool2d", "mean",
    ),
    "elementwise": (
        "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__",
        "__rsub__", "mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_",
        "__truediv__", "__itruediv__",
    ),
}
_OTHER_RULES: dict[str, tuple[str, Callable[..., int]]] = {
    name: (kind, _in_elements if kind == "pooling" else _out_elements)
    for kind, names in _OTHER_NAMES.items()
    for name in names
}
_FUNCTION_RULES: dict[Any, tuple[str, Callable[..., int]] | None] = {}


def function_rule(func: Any) -> tuple[str, Callable[..., int]] | None:
    """The rule of a torch function or Tensor method, by name (resolved once, then cached)."""
    try:
        return _FUNCTION_RULES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", "")
    rule = _FUNCTION_MAC_RULES.get(name) or _OTHER_RULES.get(name)
    with contextlib.suppress(TypeError):
        _FUNCTION_RULES[func] = rule
    return rule


def function_macs(func: Any, args: tuple, kwargs: dict | None, output: Any) -> int | None:
    """MACs of one torch-function call (whole batch), or None if `func` has no MACs."""
    rule = function_rule(func)
    if rule is None or rule[0] not in MAC_KINDS:
        return None
    return rule[1](args, kwargs or {}, output)


# --------------------------------------------------------------------------------------------
# Model-level counting
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no_grad for the block; every module's training flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in flags:
            module.training = training


@dataclass(frozen=True)
class MacsCount:
    """The cost of one sample: MACs per kind, other ops per kind (elements), parameters."""

    macs: int  # executed MACs, controller included
    macs_theoretical: int
    macs_controller: int
    by_kind: dict[str, int]
    other_ops: dict[str, int]
    params: int
    input_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.macs / 1e6:,.2f} M MACs, {self.params / 1e6:,.3f} M params"


def _is_dynamic(model: nn.Module) -> bool:
    from benchmarks.routing import is_dynamic

    return is_dynamic(model)


def _param_like(model: nn.Module) -> torch.Tensor | None:
    for tensor in model.parameters():
        return tensor
    for tensor in model.buffers():
        return tensor
    return None


def count_macs(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[int],
    *,
    counter: str = "functions",
) -> MacsCount:
    """MACs of `model` for one sample.

    `inputs` is either a real input of batch 1 (any model) or the shape of one sample, e.g.
    `(3, 224, 224)` — the latter only for static models, whose cost does not depend on the
    content (a zero tensor on the model's device and dtype is used, so models built on the
    `meta` device are counted without computing anything). A dynamic model's cost is measured
    on real inputs: use `measure_cost` over a split, or pass one real sample here.
    """
    from benchmarks.routing import trace

    if isinstance(inputs, torch.Tensor):
        x = inputs
        if x.shape[0] != 1:
            raise ValueError(
                f"count_macs counts one sample; got a batch of {x.shape[0]} "
                "(use benchmarks.routing.trace or measure_cost for batches)"
            )
    else:
        shape = tuple(int(s) for s in inputs)
        if _is_dynamic(model):
            raise DynbenchError(
                f"{type(model).__name__} routes its computation per input, so its cost depends "
                "on the content: count it on real evaluation inputs (measure_cost over a split, "
                "or count_macs with a real sample), never on a synthetic tensor"
            )
        ref = _param_like(model)
        x = torch.zeros(
            (1, *shape),
            dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32,
            device=ref.device if ref is not None else "cpu",
        )
    with evaluation(model), trace(batch_size=1, counter=counter) as t:
        model(x)
    return MacsCount(
        macs=int(t.macs_executed[0]),
        macs_theoretical=int(t.macs_theoretical[0]),
        macs_controller=int(t.macs_controller[0]),
        by_kind=dict(t.macs_by_kind),
        other_ops={k: int(v[0]) for k, v in t.other_ops.items()},
        params=count_params(model),
        input_shape=tuple(x.shape[1:]),
    )


# --------------------------------------------------------------------------------------------
# Per-sample cost over a dataset split
# --------------------------------------------------------------------------------------------


@dataclass
class CostResult:
    """Per-sample costs of a model over evaluation inputs, and their aggregates.

    `per_sample` has one row per sample (in split order): `macs_executed`, `macs_theoretical`,
    `macs_controller`, `units_executed` (routing units run), and `prediction` / `target` /
    `correct` where the model returns logits. `units` has one column per routing unit
    (executions per sample). `summary` holds the aggregates (see `summarize`).
    """

    per_sample: pd.DataFrame
    units: pd.DataFrame
    summary: dict[str, Any]
    engine: str | None
    counter: str
    params: int
    by_kind: dict[str, float] = field(default_factory=dict)

    def as_result_columns(self) -> dict[str, Any]:
        """The cost columns of a tidy result row (`benchmarks.results.RESULT_COLUMNS`)."""
        executed = self.summary["macs_executed"]
        return {
            "macs_mean": executed["mean"],
            "macs_std": executed["std"],
            "macs_p50": executed["p50"],
            "macs_p90": executed["p90"],
            "macs_p99": executed["p99"],
            "macs_min": executed["min"],
            "macs_max": executed["max"],
            "macs_theoretical_mean": self.summary["macs_theoretical"]["mean"],
            "macs_controller_mean": self.summary["macs_controller"]["mean"],
            "simulated_savings": self.summary["simulated_savings"],
        }

    def to_csv(self, path: Any) -> Any:
        """Write the per-sample table atomically."""
        from benchmarks.io import atomic_write_text

        return atomic_write_text(path, self.per_sample.to_csv(index=True))


def _stats(values: Any) -> dict[str, float]:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: float("nan") for k in ("mean", "std", "p50", "p90", "p99", "min", "max")}
    stats = {"mean": float(v.mean()), "std": float(v.std())}
    for q, p in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True):
        stats[f"p{q}"] = float(p)
    stats.update(min=float(v.min()), max=float(v.max()))
    return stats


def summarize(
    per_sample: pd.DataFrame, units: pd.DataFrame | None = None, engine: str | None = None
) -> dict[str, Any]:
    """Aggregates of a per-sample cost table.

    mean, std (population), p50/p90/p99, min and max of each of the three MAC columns; the
    histogram of executed units (number of samples per count of units run) and each unit's
    execution rate; `simulated_savings`: executed MACs exceed theoretical by more than 1% in
    an engine that claims to skip (anything but `masked`); accuracy where targets are known.
    """
    summary: dict[str, Any] = {"samples": len(per_sample), "engine": engine}
    for column in ("macs_executed", "macs_theoretical", "macs_controller"):
        summary[column] = _stats(per_sample[column])
    executed = summary["macs_executed"]["mean"]
    theoretical = summary["macs_theoretical"]["mean"]
    ratio = executed / theoretical if theoretical > 0 else float("nan")
    summary["executed_over_theoretical"] = ratio
    summary["simulated_savings"] = bool(
        engine != "masked" and theoretical > 0 and ratio > 1 + SIMULATED_SAVINGS_TOLERANCE
    )
    counts = per_sample["units_executed"].value_counts().sort_index()
    summary["units_histogram"] = {int(k): int(v) for k, v in counts.items()}
    if units is not None and len(units.columns):
        summary["unit_rates"] = {str(c): float((units[c] > 0).mean()) for c in units.columns}
    else:
        summary["unit_rates"] = {}
    if "correct" in per_sample:
        summary["accuracy"] = float(per_sample["correct"].mean() * 100.0)
    return summary


def _model_engine(model: nn.Module) -> str | None:
    from benchmarks.routing import DynamicModule

    engines = {m.engine for m in model.modules() if isinstance(m, DynamicModule)}
    if not engines:
        return None
    return engines.pop() if len(engines) == 1 else "mixed"


def _batches(
    data: Any, batch_size: int, limit: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images, targets) batches in split order: TensorSplit-like objects are sliced directly,
    other datasets go through a DataLoader, a bare tensor is a batch of images."""
    if isinstance(data, torch.Tensor):
        images, targets = data, None
    elif isinstance(getattr(data, "images", None), torch.Tensor):
        images, targets = data.images, getattr(data, "targets", None)
    else:
        images = None
    if images is not None:
        n = len(images) if limit is None else min(limit, len(images))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield images[start:stop], None if targets is None else targets[start:stop]
        return
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    seen = 0
    for x, y in loader:
        if limit is not None and seen + len(x) > limit:
            x, y = x[: limit - seen], y[: limit - seen]
        seen += len(x)
        yield x, y
        if limit is not None and seen >= limit:
            return


def _logits(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return None


def measure_cost(
    model: nn.Module,
    data: Any,
    *,
    engine: str | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    device: str | torch.device | None = None,
    counter: str = "functions",
    progress: bool = False,
    replay: bool = True,
) -> CostResult:
    """Per-sample executed / theoretical / controller MACs of `model` over real inputs.

    `data` is a split from `benchmarks.data.load_split` (or any dataset of (image, label), or
    a tensor of images). `engine` sets the routing engine first (None keeps the model's own);
    `limit` counts only the first samples; `counter` is `functions` (complete: every conv,
    linear, matmul, einsum and attention call, functional or not) or `modules` (module hooks
    only: faster, but blind to functional matmuls and attention). `replay`: the counts of the
    model's static parts (no routing inside) are recorded on their first call per input shape
    and replayed afterwards (`routing.trace(cache=, model=)`: the same counts, less
    interception); False intercepts every call, for models not trusted to keep their
    input-dependent choices inside the routing primitives. The model is moved to `device` if
    given; it is run in eval mode under no_grad and its training flags are restored.
    """
    import pandas as pd

    from benchmarks.routing import name_units, set_engine, trace

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine is not None:
        set_engine(model, engine)
    name_units(model)
    if device is not None:
        model.to(device)
    ref = _param_like(model)
    target_device = ref.device if ref is not None else torch.device("cpu")
    columns: dict[str, list] = {c: [] for c in ("prediction", "target")}
    # each batch's per-sample values as one table (a tensor per value costs more than the rest
    # of reading a trace at batch 1): (first sample, samples, values × batch, row names)
    tables: list[tuple[int, int, torch.Tensor, dict[str, tuple[int, list[str]]]]] = []
    by_kind: dict[str, int] = {}
    cache: dict = {}
    offset = 0
    batches = _batches(data, batch_size, limit)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="cost", unit="batch")
    with evaluation(model):
        for images, targets in batches:
            x = images.to(target_device)
            with trace(  # (decision margins are never read here: not recorded)
                batch_size=len(x), counter=counter, cache=cache, model=model if replay else None, margins=False
            ) as t:
                output = model(x)
            tables.append((offset, len(x), *t.value_table()))
            logits = _logits(output)
            if logits is not None and logits.dim() == 2 and logits.shape[0] == len(x):
                columns["prediction"].append(logits.argmax(1).cpu())
                if targets is not None:
                    columns["target"].append(torch.as_tensor(targets).cpu())
            for kind, total in t.macs_by_kind_total.items():
                by_kind[kind] = by_kind.get(kind, 0) + total
            offset += len(x)
    if offset == 0:
        raise DynbenchError("no samples to measure: the split is empty")
    index = pd.RangeIndex(0, offset, name="sample")
    per_sample = pd.DataFrame(_family_columns(tables, "macs", offset), index=index)
    units = pd.DataFrame(_family_columns(tables, "unit", offset), index=index)
    per_sample["units_executed"] = units.sum(axis=1).to_numpy() if len(units.columns) else 0
    if len(columns["prediction"]) == len(tables):
        per_sample["prediction"] = torch.cat(columns["prediction"]).numpy()
        if len(columns["target"]) == len(columns["prediction"]):
            per_sample["target"] = torch.cat(columns["target"]).numpy()
            per_sample["correct"] = per_sample["prediction"] == per_sample["target"]
    engine_name = _model_engine(model)
    return CostResult(
        per_sample=per_sample,
        units=units,
        summary=summarize(per_sample, units, engine_name),
        engine=engine_name,
        counter=counter,
        params=count_params(model),
        by_kind={k: v / offset for k, v in by_kind.items()},
    )


def _family_columns(
    tables: list[tuple[int, int, torch.Tensor, dict[str, tuple[int, list[str]]]]], family: str, samples: int
) -> dict[str, np.ndarray]:
    """One family's rows of the batches' value tables (`Trace.value_table`) as columns over
    all samples, in order of first appearance; a name absent from a batch is 0 there (a unit
    that did not run)."""
    import numpy as np

    columns: dict[str, np.ndarray] = {}
    for start, size, table, families in tables:
        first, names = families[family]
        values = table.numpy()
        for i, name in enumerate(names):
            column = columns.get(name)
            if column is None:
                column = columns[name] = np.zeros(samples, dtype=np.int64)
            column[start : start + size] = values[first + i]
    return columns


def measure_split_costs(model: nn.Module, dataset: Any, *, batch_size: int = 256, **kwargs: Any) -> CostResult:
    """`measure_cost` under the name the harness's evaluation uses."""
    return measure_cost(model, dataset, batch_size=batch_size, **kwargs)
