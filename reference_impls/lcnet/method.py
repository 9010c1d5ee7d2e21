"""LC-Net training in the engine: `method: lcnet` in an experiment YAML.

    method: lcnet
    method_args:
      backbone: experiment:lcnet/cifar10_resnet56_static   # or a run folder / checkpoint path
      rho: 0.5          # target ratio E[MACs] / MACs(static backbone)
      beta: 2.0         # weight of the cost term
    dataset:
      options: {pad_to: 32}    # the data layer's options (Fashion-MNIST on CIFAR ResNets)

Loss [decision]: cross-entropy + β · (E[MACs] / MACs_full − ρ)², where E[MACs] is the batch
mean of the differentiable expected cost computed from the gate values (block MACs × L-Net
value, conv MACs × kept-channel fraction, gate heads included; `LCNet.expected_macs`) and
MACs_full is the static backbone's cost at the same input size. Decisions are hard in the
forward pass, with straight-through gradients.

Stages: the first stage that starts loads the trained static backbone named by
`method_args.backbone` into the LC-Net model (the gate heads keep their initialisation). A
stage with `args: {gating: false}` trains the plain backbone instead (every block, every
channel, no cost term) — the self-contained two-stage recipe of the quick digits experiment.
Static models train with plain cross-entropy under this method.

`cost_estimate` [decision]: `ste` (default) computes E[MACs] from the hard decisions in the
forward pass (it is the executed cost) with the soft values' gradient; `soft` uses the sigmoid
values themselves, as the spec first proposed. Measured on digits (ρ = 0.5), `soft` let the
gates settle just above the threshold: estimate 0.58, executed 0.77 of the backbone's MACs.

Selection [decision]: a gated stage keeps the most accurate val epoch among those whose
executed cost on val is within `select_tolerance` (default 0.05) of the stage's ρ, or the
epoch closest to that band when none is inside (`selection_band`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.data import DatasetInfo
from benchmarks.engine.checkpoint import load_backbone_into, resolve_checkpoint
from benchmarks.engine.method import Method, Stage, StepContext, register_method
from benchmarks.errors import ConfigError
from reference_impls.lcnet.model import COST_ESTIMATES, LCNet

__all__ = ["LCNetMethod", "resolve_backbone_checkpoint"]

_METHOD_ARGS = {"backbone", "runs_root", "rho", "beta", "cost_estimate", "head_lr_mult", "select_tolerance"}
_STAGE_ARGS = {"gating", "rho", "beta"}
def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel



def resolve_backbone_checkpoint(
    value: str | Path, *, seed: int = 0, quick: bool = False, runs_root: str | Path | None = None
) -> Path:
    """The checkpoint stem of `method_args.backbone` (see `resolve_checkpoint`)."""
    return resolve_checkpoint(value, key="method_args.backbone", seed=seed, quick=quick, runs_root=runs_root)


def _number(where: str, key: str, value: Any, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{where}: key '{key}' must be >= {low}, got {value!r}")
    return float(value)


@register_method
class LCNetMethod(Method):
    """LC-Net training (see the module docstring)."""

    name = "lcnet"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        where = cfg.get("source", "config")
        unknown = sorted(set(self.args) - _METHOD_ARGS)
        if unknown:
            raise ConfigError(
                f"{where}: method_args has unknown key '{unknown[0]}' for method 'lcnet'; "
                f"allowed: {', '.join(sorted(_METHOD_ARGS))}"
            )
        self.rho = _number(where, "method_args.rho", self.args.get("rho", 0.5), 0.0)
        self.beta = _number(where, "method_args.beta", self.args.get("beta", 2.0), 0.0)
        self.head_lr_mult = _number(where, "method_args.head_lr_mult", self.args.get("head_lr_mult", 1.0), 0.0)
        self.select_tolerance = _number(where, "method_args.select_tolerance", self.args.get("select_tolerance", 0.05), 0.0)
        self.cost_estimate = self.args.get("cost_estimate", "ste")
        if self.cost_estimate not in COST_ESTIMATES:
            raise ConfigError(
                f"{where}: key 'method_args.cost_estimate' must be one of "
                f"{', '.join(COST_ESTIMATES)}, got {self.cost_estimate!r}"
            )

    # --- stages ----------------------------------------------------------------------------
    def _stage_arg(self, stage: Stage, key: str, default: Any) -> Any:
        unknown = sorted(set(stage.args) - _STAGE_ARGS)
        if unknown:
            where = self.cfg.get("source", "config")
            raise ConfigError(
                f"{where}: stage '{stage.name}' args has unknown key '{unknown[0]}' for method "
                f"'lcnet'; allowed: {', '.join(sorted(_STAGE_ARGS))}"
            )
        return stage.args.get(key, default)

    def selection_band(self, stage: Stage) -> tuple[str, float, float] | None:
        """A gated stage selects its epoch on val among those whose executed cost ratio on
        val lies within `select_tolerance` (0.05) of the stage's target ρ [decision]: the most
        accurate epoch is often one that has not yet come down to its target."""
        if not self._stage_arg(stage, "gating", True):
            return None
        rho = float(self._stage_arg(stage, "rho", self.rho))
        return ("val_macs_ratio", rho - self.select_tolerance, rho + self.select_tolerance)

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        net = _unwrap(model)
        if isinstance(net, LCNet):
            net.gating = bool(self._stage_arg(stage, "gating", True))
            net.set_engine("masked")  # training computes everything (differentiable)
            if stage.index == 0 and self.args.get("backbone"):
                load_backbone_into(net, self.cfg, self.runs_root)
        return model

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Iterable[Any]:
        """Two groups when `head_lr_mult` != 1: the gate heads learn at lr × head_lr_mult."""
        net = _unwrap(model)
        if not isinstance(net, LCNet) or self.head_lr_mult == 1.0:
            return super().trainable_parameters(model, stage)
        from benchmarks.engine.optim import faster_group

        return faster_group(model, net.heads(), stage.optimizer, self.head_lr_mult)

    # --- loss and evaluation -------------------------------------------------------------
    def cost_ratio(self, net: LCNet, kind: str | None = None) -> torch.Tensor:
        """E[MACs] / MACs_full of the last forward (batch mean)."""
        return net.expected_macs(kind or self.cost_estimate).mean() / net.macs_full

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        net = _unwrap(model)
        gating = True
        if isinstance(net, LCNet):
            gating = bool(self._stage_arg(ctx.stage, "gating", True))
            net.gating = gating  # also after a resume inside the stage
            if net.engine != "masked":
                net.set_engine("masked")
        logits = model(images)
        ce = F.cross_entropy(logits, targets, label_smoothing=ctx.stage.label_smoothing)
        logs = {"ce": ce.detach(), "accuracy": 100.0 * (logits.argmax(1) == targets).float().mean()}
        loss = ce
        if isinstance(net, LCNet) and gating:
            rho = _number(self.cfg.get("source", "config"), "args.rho", self._stage_arg(ctx.stage, "rho", self.rho), 0.0)
            beta = _number(self.cfg.get("source", "config"), "args.beta", self._stage_arg(ctx.stage, "beta", self.beta), 0.0)
            ratio = self.cost_ratio(net)
            loss = ce + beta * (ratio - rho) ** 2
            logs["macs_ratio_est"] = ratio.detach()
            with torch.no_grad():
                logs["macs_ratio"] = self.cost_ratio(net, "hard")
        logs["loss"] = loss.detach()
        return loss, logs

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """Accuracy and loss; for LC-Net also the mean executed-MACs ratio (analytic, from the
        hard decisions of the masked-engine-equivalent forward)."""
        net = _unwrap(model)
        if not isinstance(net, LCNet) or not net.gating:
            return super().evaluate(model, batches)
        engine = net.engine
        net.set_engine("masked")  # every row's gates are visible to the analytic count
        try:
            total, correct, loss_sum, macs = 0, 0, 0.0, 0.0
            for images, targets in batches:
                logits = model(images)
                loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
                correct += (logits.argmax(1) == targets).sum().item()
                macs += float(net.expected_macs("hard").sum())
                total += len(targets)
        finally:
            net.set_engine(engine)
        if total == 0:
            raise ConfigError("cannot evaluate on an empty split")
        return {
            "accuracy": 100.0 * correct / total,
            "loss": loss_sum / total,
            "macs_ratio": macs / total / net.macs_full,
        }
