"""The pruning baselines as training methods of the engine (`method:` in an experiment YAML).

Each is plain supervised training plus what the paper adds, driven by stage `args`:

* `l1_filter` (Li et al.): a stage with `args: {prune: <Table 1 id>}` (or `ratios: {layer:
  fraction}` and optionally `strategy`) starts by pruning the trained network with `l1_prune`,
  then fine-tunes the narrower network.
* `network_slimming` (Liu et al.): `args: {sparsity: λ}` adds λ Σ|γ| to the loss (default
  `method_args.sparsity`, else 0); `args: {prune_ratio: r}` starts the stage with `slim_prune`.
* `magnitude`: `args: {amount: a}` starts the stage with global magnitude pruning; the zeroed
  weights stay zero while fine-tuning (their gradients are masked, also after a resume).

A pruning stage returns a new network whose `arch_config` describes it, so per-epoch
checkpoints rebuild and resume it like any other model.

`method_args.init` starts from trained weights instead of training the base network again:
`experiment:<suite>/<name>` (the finished run of that experiment for the same seed and quick
setting, under `method_args.runs_root`, default the training run's own runs folder) or a checkpoint path (its stem,
`.safetensors` or `.json`). The checkpoint's architecture must be the config's `model.name`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn as nn

from baselines.pruning.l1_filter import L1PruneSpec, l1_prune
from baselines.pruning.magnitude import magnitude_prune
from baselines.pruning.slimming import bn_l1_penalty, slim_prune
from benchmarks.data import DatasetInfo
from benchmarks.engine.method import Method, Stage, StepContext, register_method
from benchmarks.errors import ConfigError

__all__ = ["L1FilterMethod", "MagnitudeMethod", "NetworkSlimmingMethod"]

def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


def _known_args(method: Method, stage: Stage, allowed: set[str]) -> dict[str, Any]:
    unknown = set(stage.args) - allowed
    if unknown:
        where = method.cfg.get("source", "config")
        raise ConfigError(
            f"{where}: stage '{stage.name}' args has unknown key '{sorted(unknown)[0]}' for method "
            f"'{method.name}'; allowed: {', '.join(sorted(allowed))}"
        )
    return stage.args


class _PruningMethod(Method):
    """Supervised training that may start from a trained checkpoint (`method_args.init`)."""

    method_args: ClassVar[frozenset[str]] = frozenset({"init", "runs_root"})
    result_kind: ClassVar[str | None] = "pruned"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        unknown = sorted(set(self.args) - self.method_args)
        if unknown:
            raise ConfigError(
                f"{cfg.get('source', 'config')}: method_args has unknown key '{unknown[0]}' for "
                f"method '{self.name}'; allowed: {', '.join(sorted(self.method_args))}"
            )

    def build_model(self, info: DatasetInfo) -> nn.Module:
        init = self.args.get("init")
        if init is None:
            return super().build_model(info)
        from benchmarks.engine.checkpoint import load_parent_model

        return load_parent_model(self.cfg, self.runs_root)


@register_method
class L1FilterMethod(_PruningMethod):
    name = "l1_filter"

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        args = _known_args(self, stage, {"prune", "ratios", "strategy"})
        if "prune" in args and "ratios" in args:
            raise ConfigError(f"stage '{stage.name}': give either args.prune (a Table 1 id) or args.ratios, not both")
        if "prune" in args:
            return l1_prune(model, str(args["prune"]))
        if "ratios" in args:
            ratios = args["ratios"]
            if not isinstance(ratios, dict):
                raise ConfigError(f"stage '{stage.name}': args.ratios must map layer numbers to fractions")
            spec = L1PruneSpec({int(k): v for k, v in ratios.items()}, args.get("strategy", "independent"))
            return l1_prune(model, spec)
        return model


@register_method
class NetworkSlimmingMethod(_PruningMethod):
    name = "network_slimming"
    method_args = _PruningMethod.method_args | {"sparsity"}

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        args = _known_args(self, stage, {"sparsity", "prune_ratio"})
        if "prune_ratio" in args:
            return slim_prune(model, args["prune_ratio"])
        return model

    def _sparsity(self, stage: Stage) -> float:
        value = stage.args.get("sparsity", self.args.get("sparsity", 0.0))
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"stage '{stage.name}': sparsity (λ) must be a non-negative number, got {value!r}")
        return float(value)

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().loss(model, images, targets, ctx)
        lam = self._sparsity(ctx.stage)
        if lam > 0:
            penalty = bn_l1_penalty(_unwrap(model))
            loss = loss + lam * penalty
            logs["bn_l1"] = penalty.detach()
        return loss, logs


@register_method
class MagnitudeMethod(_PruningMethod):
    name = "magnitude"

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        args = _known_args(self, stage, {"amount"})
        if "amount" in args:
            return magnitude_prune(model, args["amount"])
        return model

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Iterable[nn.Parameter]:
        # Called when a stage starts and when it resumes: the zeros in the loaded weights are
        # the mask, so pruned weights get no gradient (and no momentum or decay) either way.
        if "amount" in stage.args:
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    mask = (module.weight.detach() != 0).to(module.weight.dtype)
                    module.weight.register_hook(lambda grad, mask=mask: grad * mask)
        return super().trainable_parameters(model, stage)
