"""LC-Net: fully dynamic inference with layer (L-Net) and channel (C-Net) gating.

Wenhan Xia, Hongxu Yin, Xiaoliang Dai, Niraj K. Jha, "Fully Dynamic Inference with Deep Neural
Networks", arXiv 2007.15151 (2020); IEEE TETC 10(2), 2022. No official code exists; only the
abstract was available. Tags used below: [paper] stated in the abstract, [decision] this
suite's design where the paper's details were not available (docs/lcnet.md lists them all).

* [paper] L-Net predicts, per input, which layers (residual blocks) to skip; C-Net which
  channels; both learn how to scale the retained outputs; LC-Net combines them
  hierarchically (layer level, then channel level).
* [decision] One gate head per residual block reading the block input through global average
  pooling: `Linear(C_in, 16) -> ReLU -> Linear(16, k) -> sigmoid`. L-Net (k = 1) gives
  `s ∈ (0, 1)`: the residual branch runs iff `s >= tau_l` and its output is then multiplied by
  `s / s0`, `s0` the value a fresh head outputs (`gate_init`, see `GateHead`). C-Net (k =
  C_mid) gives `c ∈ (0, 1)^C_mid` for the output channels of the block's first convolution:
  channels with `c >= tau_c` are computed and scaled by `c / c0`, the others are not
  computed, and neither are the matching input channels of the second convolution. The
  convolution that feeds the residual sum is never gated. Downsampling blocks always run (no
  L-Net head there) but may have their channels gated. In LC-Net, C-Net runs only for the
  samples L-Net kept.
* Execution goes through `benchmarks.routing`: a skipped block is sample-routed (its rows take
  the identity, so its MACs are really saved), channels are gated with `GatedConv2d` (the
  sparse engine really computes only kept channels), and the heads are controllers (their
  MACs are reported as `macs_controller`).
* Training: hard decisions with a straight-through estimator, and a differentiable expected
  cost (`expected_macs`) from the soft gate values, gate heads included.

The wrapper takes the modules of a static backbone built through the registry (the CIFAR
ResNets of `baselines.static` or torchvision's ResNets) and keeps their weights, so a trained
static checkpoint loads into it (`load_backbone_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from benchmarks.backbones import BackboneKeys, WrapsBackbone, shortcut_of, split_resnet
from benchmarks.registry import create_model, register_model
from benchmarks.routing import (
    DynamicModule,
    GatedConv2d,
    decide_threshold,
    gated_pair,
    mark_controller,
)

__all__ = [
    "MODES",
    "GateHead",
    "LCNet",
    "LCNetBlock",
    "build_lcnet",
    "straight_through",
]

PAPER = "Xia et al., Fully Dynamic Inference with Deep Neural Networks (IEEE TETC 2022)"
PAPER_URL = "https://arxiv.org/abs/2007.15151"
#: l: L-Net only (block skipping); c: C-Net only (channel gating); lc: both, hierarchically
MODES = ("l", "c", "lc")
COST_ESTIMATES = ("soft", "ste")


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------


class _HardThreshold(torch.autograd.Function):
    """Forward: 1 where value >= tau else 0 (exact); backward: the identity (straight-through)."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, tau: float) -> torch.Tensor:
        return (value >= tau).to(value.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(value: torch.Tensor, tau: float) -> torch.Tensor:
    """The hard decision `value >= tau` as exact 0./1. floats whose gradient is that of `value`."""
    return _HardThreshold.apply(value, tau)


class GateHead(nn.Sequential):
    """`Linear(in, hidden) -> ReLU -> Linear(hidden, out) -> sigmoid` on a pooled feature vector.

    A controller (`benchmarks.routing.mark_controller`): its MACs are reported as controller
    MACs. The last layer starts with zero weights and bias logit(`init`), so a fresh head
    outputs exactly `init` for every input: it keeps everything (`init` above the threshold),
    and `scale` (the gate value over `init_value`) is exactly 1, so the wrapped backbone starts
    as the static network it was built from [decision].
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 16, init: float = 0.9):
        if not 0.0 < init < 1.0:
            raise ValueError(f"gate init must be in (0, 1), got {init}")
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features), nn.Sigmoid()
        )
        nn.init.zeros_(self[2].weight)
        nn.init.constant_(self[2].bias, math.log(init / (1.0 - init)))
        #: the gate value of a fresh head, as this head computes it (float32 sigmoid of its bias)
        self.init_value = float(torch.sigmoid(self[2].bias.detach()[:1].float()))
        mark_controller(self)

    def scale(self, value: torch.Tensor) -> torch.Tensor:
        """The factor a kept output is multiplied by: the gate value relative to a fresh head's
        (1 at the start; the heads learn to scale up or down from there)."""
        return value / self.init_value

    @property
    def macs(self) -> int:
        return self[0].in_features * self[0].out_features + self[2].in_features * self[2].out_features


# --------------------------------------------------------------------------------------------
# Analytic MAC counts (used by the differentiable expected cost; tests check them against the
# trace of benchmarks.routing and torch.utils.flop_counter)
# --------------------------------------------------------------------------------------------


def _conv_out_hw(conv: nn.Conv2d, hw: tuple[int, int]) -> tuple[int, int]:
    out = []
    for size, k, s, p, d in zip(hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True):
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


def _conv_macs(conv: nn.Conv2d, hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(MACs of `conv` on an input of spatial size `hw`, output spatial size)."""
    out_hw = _conv_out_hw(conv, hw)
    per_position = conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    return per_position * out_hw[0] * out_hw[1], out_hw


def _module_convs_macs(module: nn.Module, hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """MACs of the convolutions of a sequential module (stem, shortcut) applied in order;
    max pooling changes the spatial size and costs no MACs."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            macs, hw = _conv_macs(m, hw)
            total += macs
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            p = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
            hw = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(hw, k, s, p, strict=True))
    return total, hw


# --------------------------------------------------------------------------------------------
# The gated residual block
# --------------------------------------------------------------------------------------------


class LCNetBlock(DynamicModule):
    """A residual block (CIFAR/torchvision BasicBlock or torchvision Bottleneck) with an L-Net
    head (block skipping + scaling) and/or a C-Net head (channel gating + scaling).

    `convs` are the block's convolutions wrapped in `GatedConv2d` (conv + BN [+ ReLU]); the
    first one's output channels are gated, the second one's matching input channels are not
    computed, the last one (feeding the residual sum) is never gated.
    """

    def __init__(
        self,
        convs: Sequence[GatedConv2d],
        shortcut: nn.Module,
        downsample: bool,
        mode: str,
        *,
        hidden: int = 16,
        tau_l: float = 0.5,
        tau_c: float = 0.5,
        gate_init: float = 0.9,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"LC-Net mode must be one of {MODES}, got {mode!r}")
        if len(convs) not in (2, 3):
            raise ValueError(f"a residual block has 2 or 3 convolutions, got {len(convs)}")
        self.conv1, self.conv2 = convs[0], convs[1]
        self.conv3 = convs[2] if len(convs) == 3 else None
        self.shortcut = shortcut
        self.relu = nn.ReLU()
        self.downsample = bool(downsample)
        self.tau_l, self.tau_c = float(tau_l), float(tau_c)
        in_channels = self.conv1.conv.in_channels
        mid_channels = self.conv1.conv.out_channels
        # Downsampling blocks always run [decision, as in SkipNet/BlockDrop]: no L-Net head.
        self.lnet = (
            GateHead(in_channels, 1, hidden, gate_init) if "l" in mode and not self.downsample else None
        )
        self.cnet = GateHead(in_channels, mid_channels, hidden, gate_init) if "c" in mode else None
        self.gating = True  # False: the plain static block (backbone training stage)
        self._soft: dict[str, torch.Tensor | None] = {}
        self._hw: tuple[int, int] | None = None

    @property
    def mid_channels(self) -> int:
        return self.conv1.conv.out_channels

    def _unit(self) -> str:
        return self.__dict__.get("_dynbench_prefix") or "block"

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # plain dict writes: nn.Module.__setattr__ costs a few µs per call at batch 1
        self.__dict__["_hw"] = tuple(x.shape[-2:])
        self.__dict__["_soft"] = {"s": None, "c": None}
        if not self.gating or (self.lnet is None and self.cnet is None):
            return self._branch(x, None, None)
        if self.training and self.engine == "sparse":
            raise RuntimeError(
                f"LC-Net block '{self._unit()}': training runs in the masked engine, where every row "
                "computes the block (the straight-through gates need the branch output of skipped "
                "rows too); the sparse engine runs in eval mode only. Use set_engine(model, 'masked')."
            )
        pooled = x.mean((2, 3))
        if self.lnet is None:
            return self._branch(x, None, pooled)
        s = self.lnet(pooled).squeeze(1)
        self._soft["s"] = s
        unit = self._unit()
        if self.training:
            keep = straight_through(s, self.tau_l)
        else:
            # at batch 1 the sparse engine branches in Python on it (inside `route`: a decision
            # read in the block's own code would be intercepted inside a trace)
            keep = decide_threshold(s, self.tau_l, unit=unit)
        return self.route(self._branch, x, keep, s, pooled, unit=unit)

    def _branch(self, x: torch.Tensor, s: torch.Tensor | None, pooled: torch.Tensor | None) -> torch.Tensor:
        """relu(s · residual(x) + shortcut(x)) on the rows routed here."""
        gate = in_mask = None
        if self.cnet is not None and pooled is not None:
            c = self.cnet(pooled)
            self._soft["c"] = c  # masked engine / training: every row of the batch
            if self.training:
                # scale(c) · 1[c >= tau]: exact zeros for dropped channels, gradient of c (STE).
                # The in-mask is left out while training: the gate already zeroes those
                # inputs, and masking them again would block the straight-through gradient.
                gate = self.cnet.scale(c) * straight_through(c, self.tau_c)
            else:
                in_mask = decide_threshold(c, self.tau_c, unit=f"{self._unit()}.cnet")
                gate = self.cnet.scale(c) * in_mask
        if in_mask is not None:  # inference: conv2 reads conv1's kept channels only
            r = gated_pair(self.conv1, self.conv2, x, gate)
        elif gate is None:
            r = self.conv2.ungated(self.conv1.ungated(x))
        else:
            r = self.conv2(self.conv1(x, gate=gate))
        if self.conv3 is not None:
            r = self.conv3.ungated(r)
        if s is not None:
            r = r * self.lnet.scale(s).view(-1, 1, 1, 1).to(r.dtype)
        return torch.relu(r + self.shortcut(x))  # self.relu's kernel, without a module call

    # --- cost -------------------------------------------------------------------------------
    def cost_terms(self, hw: tuple[int, int]) -> dict[str, int]:
        """MACs of this block's parts for an input of spatial size `hw` (full widths)."""
        c1, hw1 = _conv_macs(self.conv1.conv, hw)
        c2, hw2 = _conv_macs(self.conv2.conv, hw1)
        c3 = _conv_macs(self.conv3.conv, hw2)[0] if self.conv3 is not None else 0
        return {
            "conv1": c1,
            "conv2": c2,
            "conv3": c3,
            "shortcut": _module_convs_macs(self.shortcut, hw)[0],
            "lnet": self.lnet.macs if self.lnet is not None else 0,
            "cnet": self.cnet.macs if self.cnet is not None else 0,
        }

    def full_macs(self, hw: tuple[int, int]) -> int:
        t = self.cost_terms(hw)
        return t["conv1"] + t["conv2"] + t["conv3"] + t["shortcut"]

    def gate_values(self, kind: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(block keep value per sample, kept-channel fraction per sample) of the last forward:
        `soft` from the sigmoid outputs, `hard` from the thresholded decisions, `ste` hard
        forward values with the soft gradient. None where the block has no such gate."""
        s, c = self._soft.get("s"), self._soft.get("c")
        if kind == "soft":
            return s, None if c is None else c.mean(1)
        if kind == "hard":
            return (
                None if s is None else (s >= self.tau_l).to(s.dtype),
                None if c is None else (c >= self.tau_c).to(c.dtype).mean(1),
            )
        if kind == "ste":
            return (
                None if s is None else straight_through(s, self.tau_l),
                None if c is None else straight_through(c, self.tau_c).mean(1),
            )
        raise ValueError(f"gate value kind must be soft, hard or ste, got {kind!r}")

    def expected_macs(self, kind: str = "soft") -> torch.Tensor | int:
        """Per-sample expected MACs of this block in its last forward (gate heads included):

            E = MACs(L head) + s · (MACs(C head) + f · (conv1 + conv2) + conv3) + shortcut

        with `s` the block's keep value (1 without L-Net) and `f` the kept fraction of its
        gated channels (1 without C-Net). With 0/1 gate values this is the executed cost.
        """
        if self._hw is None:
            raise RuntimeError("expected_macs needs a forward pass first")
        t = self.cost_terms(self._hw)
        if not self.gating:
            return t["conv1"] + t["conv2"] + t["conv3"] + t["shortcut"]
        s, f = self.gate_values(kind)
        inner = (t["conv1"] + t["conv2"]) * (1.0 if f is None else f) + t["conv3"]
        if self.cnet is not None:
            inner = inner + t["cnet"]
        body = inner if s is None else s * inner
        return body + t["lnet"] + t["shortcut"]

    def extra_repr(self) -> str:
        heads = [n for n, h in (("L", self.lnet), ("C", self.cnet)) if h is not None]
        return f"heads={'+'.join(heads) or 'none'}, downsample={self.downsample}, tau_l={self.tau_l}, tau_c={self.tau_c}"


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _gated_block(block: nn.Module, family: str, mode: str, **head_kwargs: Any) -> LCNetBlock:
    if hasattr(block, "conv3"):  # torchvision Bottleneck
        convs = [
            GatedConv2d(block.conv1, block.bn1, nn.ReLU()),
            GatedConv2d(block.conv2, block.bn2, nn.ReLU()),
            GatedConv2d(block.conv3, block.bn3),
        ]
    else:
        convs = [GatedConv2d(block.conv1, block.bn1, nn.ReLU()), GatedConv2d(block.conv2, block.bn2)]
    shortcut = shortcut_of(block)
    downsample = bool(block.downsample) if family == "cifar" else block.downsample is not None
    return LCNetBlock(convs, shortcut, downsample, mode, **head_kwargs)


class LCNet(WrapsBackbone, DynamicModule):
    """A ResNet with LC-Net gating (`mode`: l, c or lc), built from a static backbone's modules.

    `model.expected_macs(kind)` is the per-sample expected cost of the last forward (soft
    gate values; heads included), `model.macs_full` the static backbone's MACs at that input
    size, `load_backbone_state(state)` loads a static checkpoint's weights.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mode: str = "lc",
        *,
        hidden: int = 16,
        tau_l: float = 0.5,
        tau_c: float = 0.5,
        gate_init: float = 0.9,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"LC-Net mode must be one of {', '.join(MODES)}, got {mode!r}")
        backbone_keys = BackboneKeys.of(backbone)
        stem, stages, pool, fc, family = split_resnet(backbone, who="LC-Net")
        self.mode, self.family = mode, family
        self.stem = stem
        kwargs = {"hidden": hidden, "tau_l": tau_l, "tau_c": tau_c, "gate_init": gate_init}
        self.stages = nn.ModuleList(
            nn.Sequential(*(_gated_block(b, family, mode, **kwargs) for b in stage)) for stage in stages
        )
        self.pool = pool
        self.fc = fc
        # my state_dict key -> the backbone's, matched by tensor identity (the modules moved)
        self._backbone_keys = BackboneKeys(backbone_keys, self)
        self._input_hw: tuple[int, int] | None = None

    @property
    def blocks(self) -> list[LCNetBlock]:
        return [block for stage in self.stages for block in stage]

    @property
    def gating(self) -> bool:
        return all(b.gating for b in self.blocks)

    @gating.setter
    def gating(self, on: bool) -> None:
        """False runs the plain static backbone (every block, every channel, no scaling)."""
        for block in self.blocks:
            block.gating = bool(on)

    def heads(self) -> list[nn.Module]:
        return [h for b in self.blocks for h in (b.lnet, b.cnet) if h is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.__dict__["_input_hw"] = tuple(x.shape[-2:])
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """The latency harness's oracle for `x` (DESIGN §4): the model decides now (its own
        forward), and the returned function computes the same logits written out by hand with
        those decisions and no heads (`reference_impls.lcnet.oracle`). None for bottleneck
        blocks."""
        from reference_impls.lcnet.oracle import (
            forward_with_decisions,
            model_decisions,
            supports_oracle,
        )

        if not supports_oracle(self):
            return None
        decisions = model_decisions(self, x)
        return lambda: forward_with_decisions(self, x, decisions)

    # --- cost -------------------------------------------------------------------------------
    def _fixed_macs(self, hw: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
        """Stem + classifier MACs, and each block's input size."""
        stem, hw = _module_convs_macs(self.stem, hw)
        sizes = []
        for block in self.blocks:
            sizes.append(hw)
            c1, hw1 = _conv_macs(block.conv1.conv, hw)
            hw2 = _conv_out_hw(block.conv2.conv, hw1)
            hw = _conv_out_hw(block.conv3.conv, hw2) if block.conv3 is not None else hw2
        return stem + self.fc.in_features * self.fc.out_features, sizes

    def full_macs(self, input_hw: tuple[int, int]) -> int:
        """MACs of the static backbone (no gates, no heads) at input size `input_hw`."""
        fixed, sizes = self._fixed_macs(input_hw)
        return fixed + sum(b.full_macs(hw) for b, hw in zip(self.blocks, sizes, strict=True))

    @property
    def macs_full(self) -> int:
        if self._input_hw is None:
            raise RuntimeError("macs_full needs a forward pass first (it depends on the input size)")
        return self.full_macs(self._input_hw)

    def expected_macs(self, kind: str = "soft") -> torch.Tensor:
        """Per-sample expected MACs of the last forward, heads included (see
        `LCNetBlock.expected_macs`). `kind`: `soft` (the spec's differentiable estimate), `ste`
        (hard values forward, soft gradient) or `hard` (the executed cost)."""
        if self._input_hw is None:
            raise RuntimeError("expected_macs needs a forward pass first")
        total: torch.Tensor | int = self._fixed_macs(self._input_hw)[0]
        for block in self.blocks:
            total = total + block.expected_macs(kind)
        if not isinstance(total, torch.Tensor):
            raise RuntimeError("expected_macs: no gated block in the last forward")
        return total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, family={self.family!r}"


# --------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------

BACKBONES: dict[str, dict[str, Any]] = {
    "cifar_resnet20": {"label": "CIFAR ResNet-20 (option A)", "datasets": ("cifar10", "fashion-mnist", "digits"), "classes": 10},
    "cifar_resnet56": {"label": "CIFAR ResNet-56 (option A)", "datasets": ("cifar10",), "classes": 10},
    "cifar_resnet110": {"label": "CIFAR ResNet-110 (option A)", "datasets": ("cifar10",), "classes": 10},
    "resnet18": {"label": "torchvision ResNet-18", "datasets": ("imagenet",), "classes": 1000},
    "resnet34": {"label": "torchvision ResNet-34", "datasets": ("imagenet",), "classes": 1000},
    "resnet50": {"label": "torchvision ResNet-50 (C-Net gates conv1 of each bottleneck)", "datasets": ("imagenet",), "classes": 1000},
}
_MODE_LABELS = {
    "l": "L-Net only (block skipping + learned scaling)",
    "c": "C-Net only (channel gating of each block's first conv + learned scaling)",
    "lc": "LC-Net (L-Net then C-Net, hierarchical)",
}


def build_lcnet(
    backbone: str,
    mode: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    hidden: int = 16,
    tau_l: float = 0.5,
    tau_c: float = 0.5,
    gate_init: float = 0.9,
    **backbone_kwargs: Any,
) -> LCNet:
    """LC-Net `mode` on a fresh registered `backbone` (extra kwargs go to the backbone)."""
    net = create_model(backbone, num_classes=num_classes, in_chans=in_chans, **backbone_kwargs)
    return LCNet(net, mode, hidden=hidden, tau_l=tau_l, tau_c=tau_c, gate_init=gate_init)


def _make_builder(backbone: str, mode: str, classes: int) -> Callable[..., LCNet]:
    def builder(num_classes: int = classes, in_chans: int = 3, **kwargs: Any) -> LCNet:
        return build_lcnet(backbone, mode, num_classes, in_chans, **kwargs)

    builder.__name__ = builder.__qualname__ = f"lcnet_{mode}_{backbone}"
    builder.__doc__ = f"{_MODE_LABELS[mode]} on {BACKBONES[backbone]['label']}."
    return builder


for _backbone, _meta in BACKBONES.items():
    for _mode in MODES:
        register_model(
            f"lcnet_{_mode}_{_backbone}",
            paper=PAPER,
            variant=f"{_MODE_LABELS[_mode]} on {_meta['label']}",
            kind="dynamic",
            paper_url=PAPER_URL,
            datasets=_meta["datasets"],
            tags=("lcnet", f"mode:{_mode}", f"base:{_backbone}"),
        )(_make_builder(_backbone, _mode, _meta["classes"]))
