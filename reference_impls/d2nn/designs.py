"""The four D2NN designs of Liu & Deng (AAAI 2018), built with the general graph API, and the
static baselines made of the same sub-networks.

Sizes are set by `width` (base channels, default 16) and `stem` ("none" for small images such
as digits, Fashion-MNIST and LFW-B's 32×32 crops; "imagenet" adds a 7×7/2 convolution and a
3×3/2 max-pool in front, for 224×224 inputs such as ILSVRC-10). Every network ends in global
average pooling, so it runs on any input size. The layer plans below are [decision]s: the
paper gives the designs' structure, not layer sizes that fit our CPU-sized data.

* High-low capacity: trunk N1 → Q → high-capacity head N2 (two convolutions) or low-capacity
  head N3 (one strided convolution of `low_width` channels); the output adds the branch outputs
  with default 0. Reference path: N1 + N2 (High NN).
* Cascade: 4 stages of increasing cost, each with a classifier head; after stages 1–3 a control
  node reads the stage's features and class scores and stops (a dummy node marks the exit) or
  runs the next stage on the previous stage's features. The output is the head of the stage
  where the sample stopped. Reference path: all four stages.
* Chain: a stem, then `steps` residual steps; at each a control node chooses full width,
  reduced width (a quarter of the channels) or skip (identity); then a head. Reference path:
  every step at full width.
* Hierarchical: a trunk, a control node at the root of a 2-level class hierarchy that chooses
  which super-class branch runs, and one branch per super-class scoring its own classes; leaf
  logits of branches that did not run default to −inf, so the argmax is always defined.
  Reference path: the static hierarchical network (trunk + every branch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from benchmarks.registry import register_model
from reference_impls.d2nn.graph import D2NN, D2NNGraph, D2NNGraphError, DataEdge, SumInputs

PAPER = "Liu & Deng, Dynamic Deep Neural Networks (AAAI 2018)"
PAPER_URL = "https://arxiv.org/abs/1701.00299"
SMALL_DATASETS = ("digits", "fashion-mnist", "lfw-b")
#: Fashion-MNIST's natural hierarchy: tops, trousers, footwear, bags
FASHION_MNIST_HIERARCHY = ((0, 2, 3, 4, 6), (1,), (5, 7, 9), (8,))

__all__ = [
    "FASHION_MNIST_HIERARCHY",
    "CascadeQ",
    "ConfidenceQ",
    "ExitSelect",
    "LeafScatter",
    "QHead",
    "Residual",
]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def classifier(cin: int, num_classes: int) -> nn.Sequential:
    """Global average pooling and a linear layer."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def stem_layers(kind: str, in_chans: int, width: int) -> tuple[list[nn.Module], int]:
    """Layers in front of a design (and the channels they output)."""
    if kind == "none":
        return [], in_chans
    if kind == "imagenet":
        return [conv_bn_relu(in_chans, width, 2, kernel=7), nn.MaxPool2d(3, 2, 1)], width
    raise D2NNGraphError(f"stem must be 'none' or 'imagenet', got {kind!r}")


def _init(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return module


class QHead(nn.Module):
    """Q-network of a control node: pooled features → hidden layer → one Q per action."""

    def __init__(self, cin: int, actions: int, hidden: int = 16):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(x))


class CascadeQ(nn.Module):
    """A cascade control node: reads the stage's pooled features and its class probabilities."""

    def __init__(self, cin: int, num_classes: int, hidden: int = 16):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mlp = nn.Sequential(
            nn.Linear(cin + num_classes, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2)
        )

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.pool(features), logits.softmax(1)], 1))


class ConfidenceQ(nn.Module):
    """The control node of a confidence-threshold cascade (no parameters, no MACs): stop
    (action 0) where the top class probability reaches `threshold`, else continue."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        confidence = logits.softmax(1).max(1).values
        return torch.stack([confidence - self.threshold, self.threshold - confidence], 1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class ExitSelect(nn.Module):
    """The cascade's output: the head of the stage where the sample stopped.

    Inputs: the heads' logits (default 0 where a stage did not run), then one stop marker per
    control node (a dummy node's output, default 0). No stop marker: the last head.
    """

    def __init__(self, exits: int):
        super().__init__()
        self.exits = exits

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        heads, stops = inputs[: self.exits], inputs[self.exits :]
        if heads[0].shape[0] == 1:  # one sample: the first stage whose stop marker is set
            for head, stop in zip(heads[:-1], stops, strict=False):
                if float(stop) > 0:
                    return head
            return heads[-1]
        out = heads[-1]
        for head, stop in zip(reversed(heads[:-1]), reversed(stops), strict=True):
            out = torch.where(stop > 0, head, out)
        return out


class Residual(nn.Module):
    """A chain step: x + BN(conv1×1(ReLU(BN(conv3×3(x))))) with `hidden` middle channels,
    then ReLU. `hidden = channels` is full width; fewer is reduced width."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(channels, hidden),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class LeafScatter(nn.Module):
    """The hierarchical output: branch logits (group order) placed at their class indices."""

    def __init__(self, groups: Sequence[Sequence[int]]):
        super().__init__()
        order = [c for group in groups for c in group]
        position = torch.empty(len(order), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(order))
        self.register_buffer("position", position, persistent=False)

    def forward(self, *branches: torch.Tensor) -> torch.Tensor:
        return torch.cat(branches, 1).index_select(1, self.position)


def _check_hierarchy(hierarchy: Sequence[Sequence[int]], num_classes: int) -> tuple[tuple[int, ...], ...]:
    groups = tuple(tuple(int(c) for c in group) for group in hierarchy)
    flat = sorted(c for g in groups for c in g)
    if len(groups) < 2 or any(not g for g in groups) or flat != list(range(num_classes)):
        raise D2NNGraphError(
            f"hierarchy must split the classes 0..{num_classes - 1} into at least 2 non-empty "
            f"groups, each class in exactly one group; got {[list(g) for g in groups]}"
        )
    return groups


def _default_hierarchy(num_classes: int) -> tuple[tuple[int, ...], ...]:
    if num_classes == 10:
        return FASHION_MNIST_HIERARCHY
    raise D2NNGraphError(
        "the hierarchical D2NN needs a class hierarchy: pass hierarchy=[[classes], ...] "
        "(model.kwargs.hierarchy), or use a dataset that defines one (ilsvrc10)"
    )


# --------------------------------------------------------------------------------------------
# High-low capacity
# --------------------------------------------------------------------------------------------


def _highlow_parts(
    in_chans: int, num_classes: int, width: int, stem: str, low_width: int | None
) -> dict[str, nn.Module]:
    layers, c = stem_layers(stem, in_chans, width)
    w = width
    low_width = w if low_width is None else low_width
    if low_width:  # one strided convolution and a classifier (about 1/20 of the high head)
        low = _init(nn.Sequential(conv_bn_relu(2 * w, low_width, 2), classifier(low_width, num_classes)))
    else:  # pooling and a linear classifier on the trunk features
        low = classifier(2 * w, num_classes)
    return {
        "trunk": _init(nn.Sequential(*layers, conv_bn_relu(c, w, 2), conv_bn_relu(w, 2 * w, 2))),
        "high": _init(nn.Sequential(
            conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w, 2), classifier(4 * w, num_classes)
        )),
        "low": low,
    }


@register_model(
    "d2nn_highlow", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
    variant="high-low capacity: trunk, Q-node, high- or low-capacity head",
    datasets=SMALL_DATASETS, tags=("d2nn", "reference:d2nn_highlow_high"),
)
def d2nn_highlow(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", q_hidden: int = 16,
    low_width: int | None = None,
) -> D2NN:
    """`low_width`: channels of the low head's convolution (default `width`; 0: no convolution,
    only pooling and a linear layer)."""
    parts = _highlow_parts(in_chans, num_classes, width, stem, low_width)
    g = D2NNGraph()
    g.regular("trunk", parts["trunk"])
    g.control("q", QHead(2 * width, 2, q_hidden), inputs=["trunk"], actions=2)
    g.regular("high", parts["high"], inputs=["trunk"], gate=("q", 0))
    g.regular("low", parts["low"], inputs=["trunk"], gate=("q", 1))
    g.regular("out", SumInputs(), inputs=[DataEdge("high", 0.0), DataEdge("low", 0.0)])
    return D2NN(g, output="out", exits=["high", "low"], reference={"q": 0})


@register_model(
    "d2nn_highlow_high", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="High NN: trunk + high-capacity head (D2NN high-low baseline)",
    datasets=SMALL_DATASETS, tags=("d2nn", "d2nn-baseline"),
)
def d2nn_highlow_high(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", low_width: int | None = None
) -> nn.Module:
    parts = _highlow_parts(in_chans, num_classes, width, stem, low_width)
    return nn.Sequential(parts["trunk"], parts["high"])


@register_model(
    "d2nn_highlow_low", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="Low NN: trunk + low-capacity head (D2NN high-low baseline)",
    datasets=SMALL_DATASETS, tags=("d2nn", "d2nn-baseline"),
)
def d2nn_highlow_low(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", low_width: int | None = None
) -> nn.Module:
    parts = _highlow_parts(in_chans, num_classes, width, stem, low_width)
    return nn.Sequential(parts["trunk"], parts["low"])


# --------------------------------------------------------------------------------------------
# Cascade
# --------------------------------------------------------------------------------------------

CASCADE_STAGES = 4


def _cascade_parts(
    in_chans: int, num_classes: int, width: int, stem: str, last_stride: int = 2
) -> tuple[list[nn.Module], list[nn.Module], list[int]]:
    layers, c = stem_layers(stem, in_chans, width)
    w = width
    half = max(w // 2, 1)
    stages = [
        nn.Sequential(*layers, conv_bn_relu(c, half, 2)),
        nn.Sequential(conv_bn_relu(half, w, 2), conv_bn_relu(w, w)),
        nn.Sequential(conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w)),
        nn.Sequential(conv_bn_relu(2 * w, 4 * w, last_stride), conv_bn_relu(4 * w, 4 * w)),
    ]
    channels = [half, w, 2 * w, 4 * w]
    heads = [classifier(ch, num_classes) for ch in channels]
    return [_init(s) for s in stages], heads, channels


def _cascade_graph(
    in_chans: int, num_classes: int, width: int, stem: str, controls: Sequence[nn.Module] | None,
    q_hidden: int, last_stride: int,
) -> D2NN:
    stages, heads, channels = _cascade_parts(in_chans, num_classes, width, stem, last_stride)
    g = D2NNGraph()
    for k in range(1, CASCADE_STAGES + 1):
        gate = None if k == 1 else (f"c{k - 1}", 1)
        g.regular(f"s{k}", stages[k - 1], inputs=["input" if k == 1 else f"s{k - 1}"], gate=gate)
        g.regular(f"h{k}", heads[k - 1], inputs=[f"s{k}"])
        if k < CASCADE_STAGES:
            if controls is None:
                g.control(f"c{k}", CascadeQ(channels[k - 1], num_classes, q_hidden), inputs=[f"s{k}", f"h{k}"], actions=2)
            else:
                g.control(f"c{k}", controls[k - 1], inputs=[f"h{k}"], actions=2)
            g.dummy(f"stop{k}", gate=(f"c{k}", 0))
    inputs = [DataEdge(f"h{k}", 0.0) for k in range(1, CASCADE_STAGES + 1)]
    inputs += [DataEdge(f"stop{k}", 0.0) for k in range(1, CASCADE_STAGES)]
    g.regular("out", ExitSelect(CASCADE_STAGES), inputs=inputs)
    continue_all = {f"c{k}": 1 for k in range(1, CASCADE_STAGES)}
    return D2NN(g, output="out", exits=[f"h{k}" for k in range(1, CASCADE_STAGES + 1)], reference=continue_all)


@register_model(
    "d2nn_cascade", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
    variant="cascade: 4 stages, stop/continue Q-nodes after stages 1-3",
    datasets=SMALL_DATASETS, tags=("d2nn", "reference:d2nn_cascade_static"),
)
def d2nn_cascade(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", q_hidden: int = 16,
    last_stride: int = 2,
) -> D2NN:
    """`last_stride`: stride of stage 4's first convolution (1 for 8×8 inputs such as digits,
    where 2 would leave 1×1 maps: BatchNorm cannot train on a routed subset of one sample)."""
    return _cascade_graph(in_chans, num_classes, width, stem, None, q_hidden, last_stride)


@register_model(
    "d2nn_cascade_confidence", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
    variant="cascade with confidence-threshold exits (thresholds tuned on val; D2NN baseline)",
    datasets=SMALL_DATASETS, tags=("d2nn", "d2nn-baseline", "reference:d2nn_cascade_static"),
)
def d2nn_cascade_confidence(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none",
    thresholds: Sequence[float] | None = None, last_stride: int = 2,
) -> D2NN:
    """Stop after stage k where the top class probability is at least `thresholds[k-1]`;
    None (the default) never stops early."""
    if thresholds is None:
        thresholds = [2.0] * (CASCADE_STAGES - 1)  # a probability never reaches 2
    if len(thresholds) != CASCADE_STAGES - 1:
        raise D2NNGraphError(f"thresholds needs {CASCADE_STAGES - 1} values (one per control node), got {list(thresholds)}")
    controls = [ConfidenceQ(t) for t in thresholds]
    return _cascade_graph(in_chans, num_classes, width, stem, controls, 0, last_stride)


class StaticCascade(nn.Module):
    """Stages 1..k of the cascade and head k, as one static network."""

    def __init__(self, stages: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


@register_model(
    "d2nn_cascade_static", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="cascade stages 1..k alone (D2NN cascade baseline; kwarg stages=k)",
    datasets=SMALL_DATASETS, tags=("d2nn", "d2nn-baseline"),
)
def d2nn_cascade_static(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", stages: int = CASCADE_STAGES,
    last_stride: int = 2,
) -> StaticCascade:
    if not 1 <= stages <= CASCADE_STAGES:
        raise D2NNGraphError(f"stages must be 1..{CASCADE_STAGES}, got {stages}")
    parts, heads, _ = _cascade_parts(in_chans, num_classes, width, stem, last_stride)
    return StaticCascade(parts[:stages], heads[stages - 1])


# --------------------------------------------------------------------------------------------
# Chain
# --------------------------------------------------------------------------------------------

CHAIN_CHOICES = ("full", "reduced", "skip")


def _chain_stem(in_chans: int, width: int, stem: str) -> nn.Module:
    layers, c = stem_layers(stem, in_chans, width)
    return _init(nn.Sequential(*layers, conv_bn_relu(c, width, 2), conv_bn_relu(width, 2 * width, 2)))


def _chain_step(choice: str, channels: int, reduction: int) -> nn.Module:
    if choice == "full":
        return _init(Residual(channels, channels))
    if choice == "reduced":
        return _init(Residual(channels, max(channels // reduction, 1)))
    return nn.Identity()


@register_model(
    "d2nn_chain", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
    variant="chain: per step a Q-node chooses full width, reduced width or skip",
    datasets=SMALL_DATASETS, tags=("d2nn", "reference:d2nn_chain_static"),
)
def d2nn_chain(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", steps: int = 3,
    reduction: int = 4, q_hidden: int = 16,
) -> D2NN:
    channels = 2 * width
    g = D2NNGraph()
    g.regular("stem", _chain_stem(in_chans, width, stem))
    previous = "stem"
    for i in range(1, steps + 1):
        g.control(f"c{i}", QHead(channels, len(CHAIN_CHOICES), q_hidden), inputs=[previous], actions=len(CHAIN_CHOICES))
        for a, choice in enumerate(CHAIN_CHOICES):
            g.regular(f"{choice}{i}", _chain_step(choice, channels, reduction), inputs=[previous], gate=(f"c{i}", a))
        g.regular(f"m{i}", SumInputs(), inputs=[DataEdge(f"{choice}{i}", 0.0) for choice in CHAIN_CHOICES])
        previous = f"m{i}"
    g.regular("head", classifier(channels, num_classes), inputs=[previous])
    full = {f"c{i}": 0 for i in range(1, steps + 1)}
    return D2NN(g, output="head", reference=full, pretrain_policy="random")


@register_model(
    "d2nn_chain_static", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="chain with every step at one width (D2NN chain baseline; kwarg width_choice)",
    datasets=SMALL_DATASETS, tags=("d2nn", "d2nn-baseline"),
)
def d2nn_chain_static(
    num_classes: int = 2, in_chans: int = 1, width: int = 16, stem: str = "none", steps: int = 3,
    reduction: int = 4, width_choice: str = "full",
) -> nn.Module:
    if width_choice not in CHAIN_CHOICES:
        raise D2NNGraphError(f"width_choice must be one of {', '.join(CHAIN_CHOICES)}, got {width_choice!r}")
    channels = 2 * width
    steps_ = [_chain_step(width_choice, channels, reduction) for _ in range(steps)]
    return nn.Sequential(_chain_stem(in_chans, width, stem), *steps_, classifier(channels, num_classes))


# --------------------------------------------------------------------------------------------
# Hierarchical
# --------------------------------------------------------------------------------------------


def _hier_trunk(in_chans: int, width: int, stem: str) -> nn.Module:
    layers, c = stem_layers(stem, in_chans, width)
    return _init(nn.Sequential(*layers, conv_bn_relu(c, width, 2), conv_bn_relu(width, 2 * width, 2)))


def _hier_parts(
    in_chans: int, num_classes: int, width: int, stem: str, groups: tuple[tuple[int, ...], ...]
) -> tuple[nn.Module, list[nn.Module]]:
    trunk = _hier_trunk(in_chans, width, stem)
    w = width
    branches = []
    for group in groups:
        if len(group) == 1:  # a single class: its score does not matter, keep it cheap
            branches.append(classifier(2 * w, 1))
        else:
            branches.append(_init(nn.Sequential(conv_bn_relu(2 * w, 3 * w), classifier(3 * w, len(group)))))
    return trunk, branches


@register_model(
    "d2nn_hierarchical", paper=PAPER, paper_url=PAPER_URL, kind="dynamic",
    variant="hierarchical: root Q-node chooses the super-class branch; other leaves -inf",
    datasets=("fashion-mnist", "ilsvrc10", "cifar10"), tags=("d2nn", "reference:d2nn_hierarchical_static"),
)
def d2nn_hierarchical(
    num_classes: int = 10, in_chans: int = 1, width: int = 16, stem: str = "none",
    hierarchy: Sequence[Sequence[int]] | None = None, q_hidden: int = 16,
) -> D2NN:
    groups = _check_hierarchy(hierarchy or _default_hierarchy(num_classes), num_classes)
    trunk, branches = _hier_parts(in_chans, num_classes, width, stem, groups)
    g = D2NNGraph()
    g.regular("trunk", trunk)
    g.control("root", QHead(2 * width, len(groups), q_hidden), inputs=["trunk"], actions=len(groups))
    for i, branch in enumerate(branches):
        g.regular(f"b{i}", branch, inputs=["trunk"], gate=("root", i))
    g.regular("out", LeafScatter(groups), inputs=[DataEdge(f"b{i}", float("-inf")) for i in range(len(groups))])
    return D2NN(g, output="out", reference="all")


class StaticHierarchical(nn.Module):
    """Trunk and every super-class branch, the leaf scores in class order."""

    def __init__(self, trunk: nn.Module, branches: Sequence[nn.Module], groups: Sequence[Sequence[int]]):
        super().__init__()
        self.trunk = trunk
        self.branches = nn.ModuleList(branches)
        self.scatter = LeafScatter(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return self.scatter(*[b(h) for b in self.branches])


@register_model(
    "d2nn_hierarchical_static", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="static hierarchical network: trunk + every branch (D2NN hierarchical baseline)",
    datasets=("fashion-mnist", "ilsvrc10", "cifar10"), tags=("d2nn", "d2nn-baseline"),
)
def d2nn_hierarchical_static(
    num_classes: int = 10, in_chans: int = 1, width: int = 16, stem: str = "none",
    hierarchy: Sequence[Sequence[int]] | None = None,
) -> StaticHierarchical:
    groups = _check_hierarchy(hierarchy or _default_hierarchy(num_classes), num_classes)
    trunk, branches = _hier_parts(in_chans, num_classes, width, stem, groups)
    return StaticHierarchical(trunk, branches, groups)


@register_model(
    "d2nn_hierarchical_flat", paper=PAPER, paper_url=PAPER_URL, kind="static",
    variant="flat network at the cost of one D2NN path: trunk + one branch over all classes",
    datasets=("fashion-mnist", "ilsvrc10", "cifar10"), tags=("d2nn", "d2nn-baseline"),
)
def d2nn_hierarchical_flat(
    num_classes: int = 10, in_chans: int = 1, width: int = 16, stem: str = "none",
    hierarchy: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    del hierarchy  # accepted so that one config's model.kwargs fit every hierarchical model
    return nn.Sequential(_hier_trunk(in_chans, width, stem), _init(nn.Sequential(conv_bn_relu(2 * width, 3 * width), classifier(3 * width, num_classes))))
