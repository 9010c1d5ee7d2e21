"""Small gated models built on `benchmarks.routing`, for tests of the routing contract, the
cost model and anything else that needs a dynamic model (latency, evaluation, leaderboard).

Every model takes `num_classes` and `in_chans`, runs on digits (1×8×8) and Fashion-MNIST
(1×28×28) inputs, and makes input-dependent decisions from random initialisation (gates sit
near their thresholds, so a batch of real images mixes decisions).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.routing import DynamicModule, GatedConv2d, mark_controller, route, set_engine


def _head(cin: int, hidden: int, cout: int, calibrate: str | None = "median") -> nn.Sequential:
    """A controller head. `calibrate`: how `calibrate()` centres it on real data ("median":
    each output's median at 0, i.e. half the samples on each side of a sigmoid ≥ 0.5 or > 0
    threshold; "argmax": the two outputs win equally often; None: left alone)."""
    head = mark_controller(nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, cout)))
    head.calibrate = calibrate
    return head


class _LCBody(nn.Module):
    """Residual branch of an LC-Net-style block: C-Net gates conv1's output channels (and
    conv2's matching input channels); the output is scaled by the L-Net value `s`."""

    def __init__(self, cin: int, cout: int, stride: int, cnet: bool, tau: float, hidden: int):
        super().__init__()
        self.conv1 = GatedConv2d(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.conv2 = GatedConv2d(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.cnet = _head(cin, hidden, cout) if cnet else None
        self.tau = tau
        self.pad = (cout - cin) // 2
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gate = None
        if self.cnet is not None:
            c = torch.sigmoid(self.cnet(x.mean((2, 3))))
            gate = c * (c >= self.tau)
        h = self.conv1(x, gate)
        h = self.conv2(h, in_mask=gate)
        return F.relu(self.shortcut(x) + s[:, None, None, None] * h)


class LCBlock(DynamicModule):
    """L-Net decides per sample whether the block runs (identity otherwise)."""

    def __init__(self, cin: int, cout: int, stride: int, lnet: bool, cnet: bool, tau: float,
                 hidden: int = 16):
        super().__init__()
        self.body = _LCBody(cin, cout, stride, cnet, tau, hidden)
        downsample = stride != 1 or cin != cout
        self.lnet = _head(cin, hidden, 1) if lnet and not downsample else None
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lnet is None:
            return self.body(x, x.new_ones(x.shape[0]))
        s = torch.sigmoid(self.lnet(x.mean((2, 3)))).squeeze(1)
        return self.route(self.body, x, s >= self.tau, s)


class ToyLCResNet(DynamicModule):
    """CIFAR-style ResNet (option-A shortcuts) with L-Net block skipping and C-Net channel
    gating; `depth=56` is ResNet-56-sized."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 1,
                 lnet: bool = True, cnet: bool = True, tau: float = 0.5):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(LCBlock(cin, cout, stride if i == 0 else 1, lnet, cnet, tau))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as after training
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class IfGatedNet(nn.Module):
    """A gate whose output only feeds a Python `if` (no routing primitive at all)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.gate = mark_controller(
            nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 1))
        )
        self.small = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * in_chans, num_classes)
        )
        self.big = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate(x).mean() > 0:
            return self.big(x)
        return self.small(x)


class ToyHierarchical(DynamicModule):
    """D2NN-style hierarchy: a Q-network picks one of two branches per sample; the classes of
    the branch that did not run get -inf logits (constant default)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, split: int = 4):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.q = _head(8, 8, 2, calibrate="argmax")
        self.left = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, split),
        )
        self.right = nn.Sequential(
            nn.Conv2d(8, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes - split),
        )
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        choice = self.q(h.mean((2, 3))).argmax(1)
        inf = float("-inf")
        left = self.route(self.left, h, choice == 0, default=inf, out_shape=(self.split,))
        right = self.route(
            self.right, h, choice == 1, default=inf,
            out_shape=(self.right[-1].out_features,),
        )
        return torch.cat([left, right], 1)


class ToyEarlyExit(DynamicModule):
    """Early exit: confident samples keep the first head's logits (a tensor default), the
    others run the rest of the network, whose cheap fallback is a callable default."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, threshold: float = 0.2):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.exit1 = mark_controller(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        )
        self.rest = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage1(x)
        logits1 = self.exit1(h)
        confident = logits1.softmax(1).amax(1) >= self.threshold
        return self.route(self.rest, h, ~confident, default=logits1)


class ToyFBSNet(DynamicModule):
    """FBS-style chain: each gated convolution keeps its top-k salient channels per sample and
    passes the decision on as the next convolution's `in_mask`; includes a depthwise stage."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16,
                 keep: float = 0.5):
        super().__init__()
        self.keep = keep
        self.c1 = GatedConv2d(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.s1 = _head(in_chans, 8, width, calibrate=None)
        self.c2 = GatedConv2d(
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
            nn.ReLU6(),
        )
        self.c3 = GatedConv2d(nn.Conv2d(width, 2 * width, 1), None, nn.ReLU())
        self.s3 = _head(width, 8, 2 * width, calibrate=None)
        self.fc = nn.Linear(2 * width, num_classes)

    def _topk(self, saliency: torch.Tensor) -> torch.Tensor:
        k = max(1, int(round(self.keep * saliency.shape[1])))
        s = F.relu(saliency)
        threshold = s.topk(k, dim=1).values[:, -1:]
        return s * (s >= threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g1 = self._topk(self.s1(x.mean((2, 3))))
        h = self.c1(x, g1)
        h = self.c2(h, gate=g1 != 0, in_mask=g1)  # depthwise: same channel set
        g3 = self._topk(self.s3(h.mean((2, 3))))
        h = self.c3(h, g3, in_mask=g1)
        return self.fc(h.mean((2, 3)))


class ToyNested(DynamicModule):
    """Routing inside routing: an outer skip decision, and inside it a second one."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.g1 = _head(8, 8, 1)
        self.inner = _Inner()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        keep = self.g1(h.mean((2, 3))).squeeze(1) > 0
        h = route(self.inner, h, keep, unit="outer", engine=self.engine)
        return self.fc(h.mean((2, 3)))


class _Inner(DynamicModule):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.g = _head(8, 8, 1)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        keep = self.g(h.mean((2, 3))).squeeze(1) > 0
        return route(self.b, h, keep, unit="inner", engine=self.engine)


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, passes: int = 3) -> nn.Module:
    """Centre every controller head on the batch `x` (use a `val` split, never `test`), so
    that decisions are mixed across samples: in the masked engine every head sees every row."""
    heads = [m for m in model.modules() if getattr(m, "calibrate", None) in ("median", "argmax")]
    engines = {m: m.engine for m in model.modules() if isinstance(m, DynamicModule)}
    set_engine(model, "masked")
    try:
        for _ in range(passes):
            seen: dict[int, torch.Tensor] = {}
            hooks = [
                h[-1].register_forward_hook(
                    lambda mod, args, out, key=id(h), seen=seen: seen.setdefault(key, out.detach())
                )
                for h in heads
            ]
            try:
                model(x)
            finally:
                for hook in hooks:
                    hook.remove()
            for h in heads:
                z = seen[id(h)]
                if h.calibrate == "median":
                    h[-1].bias -= z.median(0).values
                else:
                    h[-1].bias[0] -= (z[:, 0] - z[:, 1]).median()
        if isinstance(model, ToyEarlyExit):
            logits = model.exit1(model.stage1(x))
            model.threshold = float(logits.softmax(1).amax(1).median())
    finally:
        for m, engine in engines.items():
            m.engine = engine
    return model


TOY_MODELS = {
    "lcnet": lambda: ToyLCResNet(depth=14),
    "lnet": lambda: ToyLCResNet(depth=14, cnet=False),
    "cnet": lambda: ToyLCResNet(depth=14, lnet=False),
    "hierarchical": ToyHierarchical,
    "early_exit": ToyEarlyExit,
    "fbs": ToyFBSNet,
    "nested": ToyNested,
}


def build_toy(name: str, seed: int = 0, calibrate_on: torch.Tensor | None = None) -> nn.Module:
    """A seeded toy model in eval mode, its gates calibrated on `calibrate_on` (default: the
    first 96 images of the digits `val` split) so that a batch of real images mixes decisions."""
    torch.manual_seed(seed)
    model = TOY_MODELS[name]().eval()
    if calibrate_on is None:
        calibrate_on = _calibration_images()
    return calibrate(model, calibrate_on)


@functools.lru_cache(maxsize=1)
def _calibration_images() -> torch.Tensor:
    from benchmarks.data import load_split

    return load_split("digits", "val").images[:96]
