"""Training methods of the dynamic baselines: `method: early_exit` in an experiment YAML.

    method: early_exit
    method_args:
      exit_weights: [1.0, 1.0, 1.0]          # per exit, internal ones then the final classifier
      head_lr_mult: 10.0                     # the ICs learn at the stage's lr x 10
      backbone: experiment:baselines/fmnist_resnet20   # optional: start from a trained static ResNet
    stages: [{name: train}]

A `train` stage minimises the weighted sum of every exit's cross-entropy on every sample
(BranchyNet's joint training; SDN's weights grow with depth, ours default to 1 [decision]).
A `calibrate` stage (0 epochs; `method_args.init` names the trained early-exit run) trains
nothing: it picks on `val` the thresholds with the best val score whose mean val MACs stay
within `method_args.macs_fraction` of the network that never exits early
(`benchmarks.exits`), so that a `sweep:` over `macs_fraction` traces the curve, one final
model per budget, whose budget is its parent's training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.dynamic.early_exit import EarlyExitResNet, confidence
from benchmarks import exits
from benchmarks.data import DatasetInfo
from benchmarks.engine import Method, Stage, StepContext, register_method
from benchmarks.engine.method import Tally
from benchmarks.errors import ConfigError
from benchmarks.routing import trace

__all__ = ["EarlyExitMethod"]

_ARGS = frozenset({"exit_weights", "backbone", "init", "runs_root", "macs_fraction", "grid", "head_lr_mult"})
MODES = ("train", "calibrate")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@register_method
class EarlyExitMethod(Method):
    """Joint training of every exit, or calibration of the exits' thresholds on val."""

    name = "early_exit"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.where = cfg.get("source", "config")
        unknown = sorted(set(self.args) - _ARGS)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key 'method_args.{unknown[0]}' for method 'early_exit'; "
                              f"known: {', '.join(sorted(_ARGS))}")  # fmt: skip
        weights = self.args.get("exit_weights")
        if weights is not None and (not isinstance(weights, list) or not weights
                                    or any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 or not math.isfinite(w) for w in weights)):  # fmt: skip
            raise ConfigError(f"{self.where}: key 'method_args.exit_weights' must be a list of numbers >= 0, got {weights!r}")
        self.exit_weights = weights
        fraction = self.args.get("macs_fraction", 1.0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"{self.where}: key 'method_args.macs_fraction' must be in (0, 1], got {fraction!r}")
        self.macs_fraction = float(fraction)
        grid = self.args.get("grid", list(exits.DEFAULT_GRID))
        if not isinstance(grid, list) or not grid or any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in grid):
            raise ConfigError(f"{self.where}: key 'method_args.grid' must be a non-empty list of thresholds, got {grid!r}")
        if any(b < a for a, b in zip(grid, grid[1:], strict=False)):
            raise ConfigError(f"{self.where}: key 'method_args.grid' must be increasing, got {grid}")
        self.grid = [float(g) for g in grid]
        mult = self.args.get("head_lr_mult", 1.0)
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult <= 0:
            raise ConfigError(f"{self.where}: key 'method_args.head_lr_mult' must be a number > 0, got {mult!r}")
        self.head_lr_mult = float(mult)
        self.metric = "f1" if self.info.metric == "f1" else "accuracy"

    # --- model and stages ----------------------------------------------------------------------
    def build_model(self, info: DatasetInfo) -> nn.Module:
        init = self.args.get("init")
        if init is None:
            model = super().build_model(info)
        else:
            from benchmarks.engine.checkpoint import load_parent_model

            model = load_parent_model(self.cfg, self.runs_root)
        if not isinstance(model, EarlyExitResNet):
            raise ConfigError(f"{self.where}: method 'early_exit' trains early-exit networks; "
                              f"'{self.cfg['model']['name']}' is not one")  # fmt: skip
        if self.exit_weights is not None and len(self.exit_weights) != len(model.heads) + 1:
            raise ConfigError(f"{self.where}: method_args.exit_weights needs {len(model.heads) + 1} values "
                              f"(one per internal exit and the final classifier), got {len(self.exit_weights)}")  # fmt: skip
        return model

    def stages(self) -> list[Stage]:
        stages = super().stages()
        for stage in stages:
            mode = stage.args.get("mode", stage.name)
            if mode not in MODES:
                raise ConfigError(f"{self.where}: stages[{stage.index}] '{stage.name}': an early_exit stage is "
                                  f"'train' or 'calibrate' (its name or args.mode), got '{mode}'")  # fmt: skip
            if mode == "calibrate" and stage.epochs != 0:
                raise ConfigError(f"{self.where}: a 'calibrate' stage trains nothing; give it 0 epochs")
            if mode == "calibrate" and "init" not in self.args:
                raise ConfigError(f"{self.where}: a 'calibrate' stage needs 'method_args.init': the trained early-exit run")
        return stages

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        net = _unwrap(model)
        if stage.index == 0 and self.args.get("backbone"):
            from benchmarks.engine.checkpoint import load_backbone_into

            load_backbone_into(net, self.cfg, self.runs_root)
        if stage.args.get("mode", stage.name) == "calibrate":
            return self._calibrate(net, info)
        return model

    def _calibrate(self, net: EarlyExitResNet, info: DatasetInfo) -> nn.Module:
        from benchmarks.data import load_split
        from benchmarks.engine.batches import eval_batches
        from benchmarks.registry import create_model

        val = load_split(info.name, "val", self.data_root, options=self.cfg["dataset"].get("options") or None)
        predictions, confidences, targets, sample = exit_outputs(net, eval_batches(val, self.cfg["train"]["eval_batch_size"]))
        costs = net.exit_path_macs(sample)
        try:
            point = exits.threshold_for_budget(predictions, confidences, targets, costs, self.metric,
                                               self.macs_fraction, self.grid)  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        kwargs = dict(net.arch_config.get("kwargs", {}), thresholds=list(point.thresholds[: len(net.heads)]))
        calibrated = create_model(net.arch_config["name"], **kwargs)
        calibrated.load_state_dict(net.state_dict())
        return calibrated

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Any:
        """With `head_lr_mult` != 1, the ICs learn at the stage's rate × head_lr_mult (a short
        fine-tune from a trained backbone leaves fresh ICs far behind it otherwise)."""
        net = _unwrap(model)
        if self.head_lr_mult == 1.0 or not isinstance(net, EarlyExitResNet):
            return super().trainable_parameters(model, stage)
        from benchmarks.engine.optim import faster_group

        return faster_group(model, net.heads, stage.optimizer, self.head_lr_mult)

    # --- loss and evaluation -------------------------------------------------------------------
    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext):
        net = _unwrap(model)
        outputs = net.exit_logits(images)
        weights = self.exit_weights or [1.0] * len(outputs)
        smoothing = ctx.stage.label_smoothing
        losses = [F.cross_entropy(z, targets, label_smoothing=smoothing) for z in outputs]
        loss = sum(w * part for w, part in zip(weights, losses, strict=True))
        logs = {"loss": loss.detach(), "accuracy": 100.0 * (outputs[-1].argmax(1) == targets).float().mean()}
        for k, z in enumerate(outputs[:-1]):
            logs[f"exit{k}_accuracy"] = 100.0 * (z.argmax(1) == targets).float().mean()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """accuracy (%), loss, f1 (F-score tasks), macs (mean executed MACs per sample, from the
        routing trace, ICs included) and macs_ratio (over the static backbone's MACs)."""
        net = _unwrap(model)
        tally, loss_sum, macs, reference = Tally(), 0.0, 0.0, None
        for images, y in batches:
            if reference is None:
                reference = net.backbone_macs(images[:1])
            with trace(batch_size=len(images)) as t:
                logits = net(images)
            macs += float(t.macs_executed.sum())
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            tally.update(logits.argmax(1), y)
        metrics = {"accuracy": tally.accuracy(), "loss": loss_sum / tally.total, "macs": macs / tally.total,
                   "macs_ratio": macs / tally.total / reference}  # fmt: skip
        if self.metric == "f1":
            metrics["f1"] = tally.f1()
        return metrics


@torch.no_grad()
def exit_outputs(net: EarlyExitResNet, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions (N, K), confidences (N, K), targets (N,), first image) of every exit, with
    every exit computed for every row."""
    was_training = net.training
    net.eval()
    preds, confs, targets, first = [], [], [], None
    try:
        for images, y in batches:
            first = images[:1] if first is None else first
            outputs = net.exit_logits(images)
            preds.append(torch.stack([z.argmax(1) for z in outputs], 1))
            confs.append(torch.stack([confidence(z, net.criterion) for z in outputs], 1))
            targets.append(y)
    finally:
        net.train(was_training)
    if first is None:
        raise ConfigError("cannot calibrate exits on an empty split")
    return torch.cat(preds), torch.cat(confs), torch.cat(targets), first
