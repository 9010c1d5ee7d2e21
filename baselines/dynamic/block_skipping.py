"""The residual network that SkipNet, BlockDrop and ConvNet-AIG skip blocks of.

The three methods differ only in who decides (a gate per block reading the block input, a
recurrent gate shared by all blocks, a policy network that looks at the image once) and in how
the decision is trained; the execution is the same, and it lives here once:

* [paper, all three] a skipped residual block is replaced by its shortcut: the identity, or,
  where the block changes the map size or width, the shortcut alone (option A: subsampling and
  zero channels; option B / torchvision: the projection, followed by the ReLU that ends every
  block). Its convolutions are not computed for that sample.
* Execution goes through `benchmarks.routing.route` (the rows that keep the block run it; the
  others take the shortcut), so the sparse engine really skips and the trace counts what ran.
  Training runs in the masked engine with 0/1 straight-through or sampled decisions.

`BlockSkippingResNet` keeps the modules of a static ResNet built through the registry (CIFAR
ResNets of `baselines.static`, or torchvision ResNets) and loads that network's trained
checkpoint (`load_backbone_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from benchmarks.backbones import BackboneKeys, WrapsBackbone, shortcut_of, split_resnet
from benchmarks.routing import IDENTITY, DynamicModule, trace

__all__ = ["BlockSkippingResNet", "ShortcutPath", "static_backbone_macs"]


class ShortcutPath:
    """What a skipped block outputs when its shortcut is not the identity: ReLU(shortcut(x)).
    A plain callable, not a module: the shortcut stays registered once, inside its block."""

    def __init__(self, shortcut: nn.Module):
        self.shortcut = shortcut

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x))


class BlockSkippingResNet(WrapsBackbone, DynamicModule):
    """A ResNet whose residual blocks may be skipped per sample (see the module docstring).

    Subclasses add their controllers and call `run_block(i, h, keep)` in `forward`.
    `static_forward` runs the plain backbone (every block, no controller).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        keys = BackboneKeys.of(backbone)
        stem, stages, pool, fc, family = split_resnet(backbone, who=type(self).__name__)
        self.family = family
        self.stem = stem
        self.blocks = nn.ModuleList(block for stage in stages for block in stage)
        self.pool, self.fc = pool, fc
        self.num_classes = fc.out_features
        #: stage index of every block, in order
        self.stage_of = [s for s, stage in enumerate(stages) for _ in stage]
        # what a skipped block outputs: its input, or its shortcut path
        self._defaults: list[Any] = [
            IDENTITY if isinstance(shortcut_of(b), nn.Identity) else ShortcutPath(shortcut_of(b))
            for b in self.blocks
        ]
        self._backbone_keys = BackboneKeys(keys, self)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_in_channels(self, i: int) -> int:
        return self.blocks[i].conv1.in_channels

    def run_block(self, i: int, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Block `i` on the rows where `keep` (boolean, or a 0/1 float straight-through gate)
        says so; the other rows take the block's shortcut."""
        record = self.__dict__.get("_decisions")
        if record is not None:  # `oracle` is reading this forward's decisions
            record[i] = keep.detach() != 0
        return self.route(self.blocks[i], h, keep, default=self._defaults[i], unit=f"blocks.{i}")

    @torch.no_grad()
    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The latency harness's oracle for `x` (DESIGN §4): the model decides now (its own
        forward, every controller), and the returned function runs the backbone with those
        decisions fixed and no controller: per block, the rows that keep it run it (a Python
        branch at batch 1; one gather and one scatter with index tensors made here otherwise),
        the others take its shortcut. It reads nothing back from the device."""
        record: dict[int, torch.Tensor] = {}
        self.__dict__["_decisions"] = record
        try:
            self(x)
        finally:
            del self.__dict__["_decisions"]
        plans: list[tuple[str, Any, Any]] = []  # (how, rows that run, rows that skip)
        for i in range(self.num_blocks):
            keep = record.get(i)
            if keep is None or bool(keep.all()):
                plans.append(("run", None, None))
            elif not bool(keep.any()):
                plans.append(("skip", None, None))
            else:
                plans.append(("some", keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)))
        blocks, defaults = list(self.blocks), self._defaults

        def forward() -> torch.Tensor:
            h = self.stem(x)
            for block, default, (how, run, skip) in zip(blocks, defaults, plans, strict=True):
                if how == "run":
                    h = block(h)
                elif how == "skip":
                    h = h if default is IDENTITY else default(h)
                else:
                    y = block(h.index_select(0, run))
                    if default is IDENTITY:
                        h = h.index_copy(0, run, y)
                    else:
                        d = default(h.index_select(0, skip))
                        h = y.new_empty((h.shape[0], *y.shape[1:])).index_copy(0, run, y).index_copy(0, skip, d)
            return self.classify(h)

        return forward

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def static_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain backbone: every block, no controller."""
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.classify(h)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The parameters taken from the static backbone (not the controllers')."""
        ids = {id(t) for k, t in self.state_dict(keep_vars=True).items() if k in self._backbone_keys.keys}
        return [p for p in self.parameters() if id(p) in ids]

    def backbone_modules(self) -> list[nn.Module]:
        return [self.stem, self.blocks, self.pool, self.fc]


@torch.no_grad()
def static_backbone_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of `model.static_forward` (the plain backbone, no controller) on one sample like
    `x`, counted by the trace."""
    was_training = model.training
    model.eval()
    try:
        with trace(batch_size=1) as t:
            model.static_forward(x[:1])
    finally:
        model.train(was_training)
    return int(t.macs_executed[0])
