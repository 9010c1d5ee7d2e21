"""Early-exit networks: internal classifiers on a CIFAR ResNet, each sample leaving at the first
exit confident enough (BranchyNet, Teerapittayanon et al., ICPR 2016; SDN, Kaya et al., ICML
2019).

* [paper] Internal classifiers (ICs) are attached after intermediate layers of a backbone and
  trained jointly with it on a weighted sum of the exits' cross-entropies. At inference a
  sample leaves at the first exit whose confidence passes that exit's threshold (BranchyNet:
  entropy below a threshold; SDN: the top softmax probability above one); later layers never
  run for it. Thresholds trace the accuracy-cost curve.
* [decision] Exits sit after residual blocks given by their index in the flattened block list
  (`exits`, default: the last block of every stage but the last, as BranchyNet's branches
  after early groups). An IC is global average pooling and one linear layer (SDN adds a mixed
  max/avg pooling and a conv feature reduction; ours is the cheapest head that reads a stage).
* [decision] Confidence is the top softmax probability (`criterion: max_softmax`) or one
  minus the normalised entropy (`entropy`, so that both mean "stop when confidence ≥ t").
* [decision] Thresholds are calibrated on `val` to a MACs budget by the `early_exit` method's
  `calibrate` stage (`benchmarks.exits`), one final model per budget, as for D2NN's
  confidence cascade.
* Execution goes through `benchmarks.routing`: each block and each IC runs only on the rows
  still in the network (`route`), the decision is `decide_threshold` (its margin recorded in
  traces), and the ICs are controllers (their MACs are reported as `macs_controller`): they
  exist to decide who leaves. The final classifier is a regular layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from baselines.static.cifar_resnet import CifarResNet
from benchmarks.registry import create_model, register_model
from benchmarks.routing import DynamicModule, decide_threshold, mark_controller

__all__ = ["CRITERIA", "EarlyExitResNet", "ExitHead"]

CRITERIA = ("max_softmax", "entropy")
BRANCHYNET = "Teerapittayanon et al., BranchyNet (ICPR 2016); Kaya et al., Shallow-Deep Networks (ICML 2019)"
BRANCHYNET_URL = "https://arxiv.org/abs/1709.01686"
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "digits")
NEVER = 2.0  # a threshold no confidence reaches: the exit never stops a sample


class ExitHead(nn.Sequential):
    """An internal classifier: global average pooling, then one linear layer."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        mark_controller(self)


def confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-sample confidence in [0, 1] of one exit's logits."""
    probs = logits.float().softmax(1)
    if criterion == "max_softmax":
        return probs.max(1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    return 1.0 - entropy / math.log(probs.shape[1])


class EarlyExitResNet(DynamicModule):
    """A CIFAR ResNet with internal classifiers after chosen blocks.

    `forward` (eval): the sample-routed network; every block and IC runs only on the rows that
    have not left. `exit_logits` (training, calibration): every exit's logits for every row.
    """

    def __init__(
        self,
        backbone: CifarResNet,
        exits: Sequence[int] | None = None,
        thresholds: Sequence[float] | None = None,
        criterion: str = "max_softmax",
    ):
        super().__init__()
        blocks = backbone.blocks
        if exits is None:  # after the last block of every stage but the last
            exits = [(s + 1) * backbone.n - 1 for s in range(len(backbone.stages) - 1)]
        exits = [int(e) for e in exits]
        if not exits or sorted(set(exits)) != exits or exits[0] < 0 or exits[-1] >= len(blocks) - 1:
            raise ValueError(
                f"exits must be increasing block indices in [0, {len(blocks) - 2}] (the last block "
                f"feeds the final classifier), got {exits}"
            )
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        thresholds = [NEVER] * len(exits) if thresholds is None else [float(t) for t in thresholds]
        if len(thresholds) != len(exits):
            raise ValueError(f"thresholds needs one value per exit ({len(exits)}), got {thresholds}")
        if any(not math.isfinite(t) or t < 0 for t in thresholds):
            raise ValueError(f"thresholds must be finite and >= 0, got {thresholds}")
        self.stem = backbone.stem
        self.blocks = nn.ModuleList(blocks)
        self.pool, self.fc = backbone.pool, backbone.fc
        self.exit_after = exits
        self.heads = nn.ModuleList(ExitHead(blocks[e].bn2.num_features, backbone.num_classes) for e in exits)
        self.thresholds = thresholds
        self.criterion = criterion

    # --- the backbone --------------------------------------------------------------------------
    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a trained static CIFAR ResNet's state_dict (its keys) into the backbone; the ICs
        keep theirs."""
        mine = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        n = len(self.blocks) // 3
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "stages":  # stages.S.B.rest -> blocks.(S*n+B).rest
                key = ".".join(["blocks", str(int(parts[1]) * n + int(parts[2])), *parts[3:]])
            if key not in mine or mine[key].shape != value.shape:
                raise KeyError(f"'{'.'.join(parts)}' does not fit (no '{key}' of that shape)")
            mapped[key] = value
        missing = sorted(k for k in mine if not k.startswith("heads.") and k not in mapped)
        if missing:
            raise KeyError(f"the backbone state lacks {missing[:5]}")
        self.load_state_dict({**mine, **mapped})

    @torch.no_grad()
    def backbone_macs(self, x: torch.Tensor) -> int:
        """MACs of the static backbone (no IC) on one sample like `x`, counted by the trace."""
        from benchmarks.routing import trace

        with trace(batch_size=1) as t:
            h = self.stem(x[:1])
            for block in self.blocks:
                h = block(h)
            self._final(h)
        return int(t.macs_executed[0])

    @torch.no_grad()
    def exit_path_macs(self, x: torch.Tensor) -> list[int]:
        """MACs (ICs included) of a sample that leaves at exit k, for every k (the last: the
        final classifier), counted by the trace on one sample like `x` in eval mode."""
        from benchmarks.routing import trace

        saved, was_training = list(self.thresholds), self.training
        self.eval()
        costs = []
        try:
            for k in range(len(self.heads) + 1):
                self.thresholds = [0.0 if j == k else NEVER for j in range(len(self.heads))]
                with trace(batch_size=1) as t:
                    self(x[:1])
                costs.append(int(t.macs_executed[0]))
        finally:
            self.thresholds = saved
            self.train(was_training)
        return costs

    @torch.no_grad()
    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The latency harness's oracle for `x` (DESIGN §4): the model decides now (its own
        forward, traced: the exit each sample left at is the last one whose head ran for it),
        and the returned function runs the blocks for the rows still in, and each exit's head
        only for the rows that leave there; no confidence is computed. Index tensors are made
        here, so it reads nothing back from the device."""
        from benchmarks.routing import trace

        with trace(batch_size=x.shape[0]) as t:
            self(x)
        units = t.units_executed
        n, final = x.shape[0], len(self.heads)
        exit_of = torch.full((n,), final, dtype=torch.long)
        for k in reversed(range(len(self.heads))):  # the earliest exit whose head ran, unless it continued
            none = torch.zeros(n, dtype=torch.bool)
            left = units.get(f"heads.{k}", none).bool() & ~units.get(f"blocks.{self.exit_after[k] + 1}", none).bool()
            exit_of[left] = k
        still = torch.arange(n)  # original rows of the compact batch, in order
        plan: dict[int, tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for k, after in enumerate(self.exit_after):
            leaving = exit_of[still] == k
            if bool(leaving.any()):
                plan[after] = (k, leaving.nonzero().squeeze(1).to(x.device), (~leaving).nonzero().squeeze(1).to(x.device),
                               still[leaving].to(x.device))  # fmt: skip
            still = still[~leaving]
        rest = still.to(x.device)
        everyone = bool(len(still) == n)
        blocks = list(self.blocks)

        def forward() -> torch.Tensor:
            h = self.stem(x)
            parts: list[tuple[torch.Tensor, torch.Tensor]] = []
            for i, block in enumerate(blocks):
                h = block(h)
                step = plan.get(i)
                if step is not None:
                    k, leave, stay, rows = step
                    parts.append((rows, self.heads[k](h.index_select(0, leave))))
                    if stay.numel() == 0:
                        h = None
                        break
                    h = h.index_select(0, stay)
            if h is not None:
                z = self._final(h)
                if everyone:
                    return z
                parts.append((rest, z))
            out = parts[0][1].new_empty((n, parts[0][1].shape[1]))
            for rows, z in parts:
                out.index_copy_(0, rows, z)
            return out

        return forward

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits (internal ones, then the final classifier) for every row."""
        out = []
        h = self.stem(x)
        heads = dict(zip(self.exit_after, self.heads, strict=True))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in heads:
                out.append(heads[i](h))
        out.append(self._final(h))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.exit_logits(x)[-1]
        h = self.stem(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        logits: torch.Tensor | None = None
        heads = dict(zip(self.exit_after, range(len(self.heads)), strict=True))
        for i, block in enumerate(self.blocks):
            h = self.route(block, h, active, default=0.0, unit=f"blocks.{i}")
            if i not in heads:
                continue
            k = heads[i]
            z = self.route(self.heads[k], h, active, default=0.0, unit=f"heads.{k}")
            logits = torch.zeros_like(z) if logits is None else logits
            leave = decide_threshold(confidence(z, self.criterion), self.thresholds[k], unit=f"exit.{k}") & active
            logits = torch.where(leave[:, None], z, logits)
            active = active & ~leave
            if not bool(active.any()):  # everyone has left: nothing later runs
                return logits
        final = self.route(self._final, h, active, default=0.0, unit="fc")
        return final if logits is None else torch.where(active[:, None], final, logits)


def _early_exit(depth: int, num_classes: int, in_chans: int, exits: Sequence[int] | None,
                thresholds: Sequence[float] | None, criterion: str, **backbone_kwargs) -> EarlyExitResNet:  # fmt: skip
    backbone = create_model(f"cifar_resnet{depth}", num_classes=num_classes, in_chans=in_chans, **backbone_kwargs)
    return EarlyExitResNet(backbone, exits, thresholds, criterion)


_VARIANT = "CIFAR ResNet-{} with internal classifiers; a sample leaves at the first confident exit"


@register_model("early_exit_cifar_resnet20", paper=BRANCHYNET, paper_url=BRANCHYNET_URL, kind="dynamic",
                variant=_VARIANT.format(20), datasets=DATASETS, tags=("early-exit", "mode:exit", "base:cifar_resnet20"))  # fmt: skip
def early_exit_cifar_resnet20(num_classes: int = 10, in_chans: int = 3, exits: Sequence[int] | None = None,
                              thresholds: Sequence[float] | None = None, criterion: str = "max_softmax",
                              **kwargs) -> EarlyExitResNet:  # fmt: skip
    return _early_exit(20, num_classes, in_chans, exits, thresholds, criterion, **kwargs)


@register_model("early_exit_cifar_resnet56", paper=BRANCHYNET, paper_url=BRANCHYNET_URL, kind="dynamic",
                variant=_VARIANT.format(56), datasets=DATASETS, tags=("early-exit", "mode:exit", "base:cifar_resnet56"))  # fmt: skip
def early_exit_cifar_resnet56(num_classes: int = 10, in_chans: int = 3, exits: Sequence[int] | None = None,
                              thresholds: Sequence[float] | None = None, criterion: str = "max_softmax",
                              **kwargs) -> EarlyExitResNet:  # fmt: skip
    return _early_exit(56, num_classes, in_chans, exits, thresholds, criterion, **kwargs)


@register_model("early_exit_cifar_resnet110", paper=BRANCHYNET, paper_url=BRANCHYNET_URL, kind="dynamic",
                variant=_VARIANT.format(110), datasets=DATASETS, tags=("early-exit", "mode:exit", "base:cifar_resnet110"))  # fmt: skip
def early_exit_cifar_resnet110(num_classes: int = 10, in_chans: int = 3, exits: Sequence[int] | None = None,
                               thresholds: Sequence[float] | None = None, criterion: str = "max_softmax",
                               **kwargs) -> EarlyExitResNet:  # fmt: skip
    return _early_exit(110, num_classes, in_chans, exits, thresholds, criterion, **kwargs)
