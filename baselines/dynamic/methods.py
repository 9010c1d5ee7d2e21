"""Training methods of the dynamic baselines: `method: early_exit | skipnet | blockdrop |
convnet_aig | fbs` in an experiment YAML (the last four: `ControllerMethod`, below).

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

__all__ = ["BlockDropMethod", "ControllerMethod", "ConvNetAIGMethod", "EarlyExitMethod", "FBSMethod", "SkipNetMethod", "routed_metrics"]

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
        costs: dict = {}  # the static parts' counts, replayed across the batches
        for images, y in batches:
            if reference is None:
                reference = net.backbone_macs(images[:1])
            with trace(batch_size=len(images), cache=costs, model=net) as t:
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


# --------------------------------------------------------------------------------------------
# SkipNet, BlockDrop, ConvNet-AIG and FBS: a controller on a trained static backbone
# --------------------------------------------------------------------------------------------


def _arg_number(where: str, key: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{where}: key '{key}' must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: key '{key}' must be <= {high}, got {value!r}")
    return float(value)


@torch.no_grad()
def routed_metrics(net: nn.Module, batches, metric: str) -> dict[str, float]:
    """accuracy (%), loss, f1 (F-score tasks), macs (mean MACs per sample with the model's
    decisions, controllers included: the trace's theoretical count, which the sparse engine
    executes exactly), macs_ratio (over the static backbone's MACs) and, for block-skipping
    models, exec_rate (mean fraction of blocks run). Runs in the masked engine: every row's
    decisions in one pass, the per-pattern grouping of the sparse engine avoided."""
    from baselines.dynamic.block_skipping import static_backbone_macs
    from benchmarks.routing import set_engine

    engine = getattr(net, "engine", "sparse")
    set_engine(net, "masked")
    tally, loss_sum, macs, runs, reference = Tally(), 0.0, 0.0, 0.0, None
    costs: dict = {}  # the static parts' counts, replayed across the batches
    try:
        for images, y in batches:
            if reference is None:
                reference = static_backbone_macs(net, images[:1])
            with trace(batch_size=len(images), cache=costs, model=net) as t:
                logits = net(images)
            macs += float(t.macs_theoretical.sum())
            blocks = [v for k, v in t.units_executed.items() if k.startswith("blocks.")]
            if blocks:
                runs += float(torch.stack([b.float() for b in blocks]).mean(0).sum())
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            tally.update(logits.argmax(1), y)
    finally:
        set_engine(net, engine)
    if tally.total == 0:
        raise ConfigError("cannot evaluate on an empty split")
    metrics = {"accuracy": tally.accuracy(), "loss": loss_sum / tally.total, "macs": macs / tally.total,
               "macs_ratio": macs / tally.total / reference}  # fmt: skip
    if runs:
        metrics["exec_rate"] = runs / tally.total
    if metric == "f1":
        metrics["f1"] = tally.f1()
    return metrics


class ControllerMethod(Method):
    """What SkipNet, BlockDrop, ConvNet-AIG and FBS share: the model class they train, the
    trained static backbone they start from (`method_args.backbone`), controllers that learn
    at lr × `head_lr_mult`, training in the masked engine, and `routed_metrics` on val."""

    model_class: type[nn.Module] = nn.Module
    args_allowed: frozenset[str] = frozenset()
    stage_modes: tuple[str, ...] = ("train",)

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.where = cfg.get("source", "config")
        allowed = self.args_allowed | {"backbone", "runs_root", "head_lr_mult"}
        unknown = sorted(set(self.args) - allowed)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key 'method_args.{unknown[0]}' for method '{self.name}'; "
                              f"known: {', '.join(sorted(allowed))}")  # fmt: skip
        self.head_lr_mult = _arg_number(self.where, "method_args.head_lr_mult", self.args.get("head_lr_mult", 1.0),
                                        low=0.0, low_open=True)  # fmt: skip
        self.metric = "f1" if self.info.metric == "f1" else "accuracy"

    def build_model(self, info: DatasetInfo) -> nn.Module:
        try:
            model = super().build_model(info)
        except ValueError as exc:  # e.g. a density outside (0, 1]
            raise ConfigError(f"{self.where}: model '{self.cfg['model']['name']}': {exc}") from None
        if not isinstance(model, self.model_class):
            raise ConfigError(f"{self.where}: method '{self.name}' trains {self.model_class.__name__} models; "
                              f"'{self.cfg['model']['name']}' is not one")  # fmt: skip
        return model

    def stage_mode(self, stage: Stage) -> str:
        mode = stage.args.get("mode", stage.name if stage.name in self.stage_modes else self.stage_modes[-1])
        if mode not in self.stage_modes:
            raise ConfigError(f"{self.where}: stages[{stage.index}] '{stage.name}': a {self.name} stage is one of "
                              f"{', '.join(self.stage_modes)} (its name or args.mode), got '{mode}'")  # fmt: skip
        return mode

    def stages(self) -> list[Stage]:
        stages = super().stages()
        for stage in stages:
            self.stage_mode(stage)
        return stages

    def controllers(self, net: nn.Module) -> list[nn.Module]:
        return [m for m in net.modules() if getattr(m, "_dynbench_controller", False)]

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        from benchmarks.routing import set_engine

        net = _unwrap(model)
        if stage.index == 0 and self.args.get("backbone"):
            from benchmarks.engine.checkpoint import load_backbone_into

            load_backbone_into(net, self.cfg, self.runs_root)
        set_engine(net, "masked")  # training computes every row (differentiable decisions)
        return model

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Any:
        if self.head_lr_mult == 1.0:
            return super().trainable_parameters(model, stage)
        from benchmarks.engine.optim import faster_group

        return faster_group(model, self.controllers(_unwrap(model)), stage.optimizer, self.head_lr_mult)

    def _logs(self, loss: torch.Tensor, ce: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        return {"loss": loss.detach(), "ce": ce.detach(), "accuracy": 100.0 * (logits.argmax(1) == targets).float().mean()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        return routed_metrics(_unwrap(model), batches, self.metric)


@register_method
class ConvNetAIGMethod(ControllerMethod):
    """ConvNet-AIG: cross-entropy + `target_weight` × mean over blocks of (execution rate − t)²,
    with straight-through Gumbel decisions (Veit & Belongie, §3.3).

        method: convnet_aig
        method_args: {backbone: experiment:..., target: 0.5, target_weight: 2.0, head_lr_mult: 10}

    Selection [decision]: the most accurate val epoch whose execution rate is within
    `select_tolerance` (0.05) of the target, as LC-Net's band around ρ.
    """

    name = "convnet_aig"
    args_allowed = frozenset({"target", "target_weight", "select_tolerance"})

    def __init__(self, cfg: dict[str, Any]):
        from baselines.dynamic.convnet_aig import ConvNetAIG

        self.model_class = ConvNetAIG
        super().__init__(cfg)
        self.target = _arg_number(self.where, "method_args.target", self.args.get("target", 0.5), low=0.0, high=1.0, low_open=True)
        self.target_weight = _arg_number(self.where, "method_args.target_weight", self.args.get("target_weight", 2.0), low=0.0)
        self.select_tolerance = _arg_number(self.where, "method_args.select_tolerance", self.args.get("select_tolerance", 0.05), low=0.0)

    def selection_band(self, stage: Stage) -> tuple[str, float, float] | None:
        return ("val_exec_rate", self.target - self.select_tolerance, self.target + self.select_tolerance)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext):
        net = _unwrap(model)
        logits = model(images)
        ce = F.cross_entropy(logits, targets, label_smoothing=ctx.stage.label_smoothing)
        rates = net.execution_rates()
        loss = ce + self.target_weight * ((rates - self.target) ** 2).mean()
        logs = self._logs(loss, ce, logits, targets)
        logs["exec_rate"] = rates.detach().mean()
        return loss, logs


@register_method
class SkipNetMethod(ControllerMethod):
    """SkipNet's two stages (Wang et al., §3.3):

    * `soft`: supervised pre-training with soft gates (each block's output blended with its
      shortcut by the gate's probability), cross-entropy only;
    * `rl`: hybrid RL: decisions sampled from the gates; the network learns the cross-entropy of
      the sampled path, the gates learn by REINFORCE with the per-sample reward
      −cross-entropy − α × (fraction of gated blocks run), against the batch-mean reward as
      baseline [decision: the paper's per-gate rewards summed into one return, undiscounted].

        method: skipnet
        method_args: {backbone: experiment:..., alpha: 0.1, head_lr_mult: 10}
        stages: [{name: soft, epochs: ...}, {name: rl, epochs: ...}]
    """

    name = "skipnet"
    args_allowed = frozenset({"alpha"})
    stage_modes = ("soft", "rl")

    def __init__(self, cfg: dict[str, Any]):
        from baselines.dynamic.skipnet import SkipNet

        self.model_class = SkipNet
        super().__init__(cfg)
        self.alpha = _arg_number(self.where, "method_args.alpha", self.args.get("alpha", 0.1), low=0.0)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext):
        net = _unwrap(model)
        mode = self.stage_mode(ctx.stage)
        net.set_policy("soft" if mode == "soft" else "sample")
        logits = model(images)
        per_sample = F.cross_entropy(logits, targets, reduction="none", label_smoothing=ctx.stage.label_smoothing)
        ce = per_sample.mean()
        loss = ce
        if mode == "rl":
            actions = torch.stack(net.actions, 1)  # (N, gated blocks)
            probs = torch.stack(net.probabilities, 1).clamp(1e-6, 1 - 1e-6)
            reward = -per_sample.detach() - self.alpha * actions.mean(1)
            advantage = reward - reward.mean()
            log_prob = (actions * probs.log() + (1 - actions) * (1 - probs).log()).sum(1)
            loss = ce - (log_prob * advantage).mean()
        logs = self._logs(loss, ce, logits, targets)
        if mode == "rl":
            logs["exec_rate"] = actions.mean()
        return loss, logs


@register_method
class BlockDropMethod(ControllerMethod):
    """BlockDrop's training (Wu et al., §3.2–3.3):

    * `policy`: the ResNet frozen (and its BatchNorm statistics), the policy learns by
      REINFORCE: decisions sampled from the probabilities bounded by α (0.8):
      α·p + (1 − α)·(1 − p); reward 1 − (kept / K)² if the prediction is right, −`penalty`
      otherwise; the greedy policy's reward on the same image as baseline (self-critical).
      Curriculum: over the first `curriculum` fraction of the stage, the policy decides only
      the last c blocks (c growing from 1 to K), the others run.
    * `joint`: the same, and the ResNet learns the cross-entropy of the sampled path.

        method: blockdrop
        method_args: {backbone: experiment:..., penalty: 5.0, alpha: 0.8, curriculum: 0.5}
        stages: [{name: policy, epochs: ...}, {name: joint, epochs: ...}]

    `method_args.policy` (optional) starts the policy network from another BlockDrop run's (a
    run, experiment or checkpoint, as `backbone`); one trained for a backbone with another
    number of blocks is refused.
    """

    name = "blockdrop"
    args_allowed = frozenset({"penalty", "alpha", "curriculum", "policy"})
    stage_modes = ("policy", "joint")

    def __init__(self, cfg: dict[str, Any]):
        from baselines.dynamic.blockdrop import BlockDrop

        self.model_class = BlockDrop
        super().__init__(cfg)
        self.penalty = _arg_number(self.where, "method_args.penalty", self.args.get("penalty", 5.0), low=0.0)
        self.alpha = _arg_number(self.where, "method_args.alpha", self.args.get("alpha", 0.8), low=0.5, high=1.0)
        self.curriculum = _arg_number(self.where, "method_args.curriculum", self.args.get("curriculum", 0.0), low=0.0, high=1.0)

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        model = super().start_stage(model, stage, info)
        if stage.index == 0 and self.args.get("policy"):
            from safetensors.torch import load_file

            from benchmarks.engine.checkpoint import checkpoint_of

            stem = checkpoint_of(self.cfg, "policy", self.runs_root)
            try:
                _unwrap(model).load_policy_state(load_file(str(stem.with_suffix(".safetensors"))))
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"{self.where}: method_args.policy: {stem.with_suffix('.safetensors')}: {exc}") from None
        return model

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Any:
        if self.stage_mode(stage) == "policy":  # the ResNet is frozen
            return [p for p in _unwrap(model).policy.parameters() if p.requires_grad]
        return super().trainable_parameters(model, stage)

    def learned_blocks(self, ctx: StepContext, total: int) -> int:
        """The blocks the policy decides at this step (the last ones; the curriculum)."""
        if self.curriculum == 0:
            return total
        return max(1, min(total, 1 + int(ctx.progress / self.curriculum * (total - 1))))

    def reward(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        used = keep.float().mean(1)
        return torch.where(logits.argmax(1) == targets, 1.0 - used**2, torch.full_like(used, -self.penalty))

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext):
        net = _unwrap(model)
        joint = self.stage_mode(ctx.stage) == "joint"
        if not joint:
            for part in net.backbone_modules():
                part.eval()
        k = net.num_blocks
        learned = self.learned_blocks(ctx, k)
        fixed = torch.zeros(k, dtype=torch.bool, device=images.device)
        fixed[: k - learned] = True  # always run under the curriculum
        probs = net.policy(images)
        bounded = self.alpha * probs + (1 - self.alpha) * (1 - probs)
        sample = torch.bernoulli(bounded.detach()).bool() | fixed
        greedy = (probs.detach() >= 0.5) | fixed
        with torch.no_grad():
            greedy_reward = self.reward(net.execute(images, greedy), targets, greedy)
        with torch.set_grad_enabled(joint):
            logits = net.execute(images, sample)
        advantage = self.reward(logits.detach(), targets, sample) - greedy_reward
        u = sample.float()
        b = bounded.clamp(1e-6, 1 - 1e-6)
        log_prob = ((u * b.log() + (1 - u) * (1 - b).log()) * (~fixed).float()).sum(1)
        loss = -(log_prob * advantage).mean()
        ce = F.cross_entropy(logits, targets, label_smoothing=ctx.stage.label_smoothing)
        if joint:
            loss = loss + ce
        logs = self._logs(loss, ce, logits, targets)
        logs["exec_rate"] = greedy.float().mean()
        return loss, logs


@register_method
class FBSMethod(ControllerMethod):
    """FBS (Gao et al., §3): cross-entropy + `lasso` × the mean L1 norm of every saliency
    vector (the paper's sparsity term), in the masked engine; the density is the model's
    (`model.kwargs.density`, swept).

        method: fbs
        method_args: {backbone: experiment:..., lasso: 1.0e-4, head_lr_mult: 10}
    """

    name = "fbs"
    args_allowed = frozenset({"lasso"})

    def __init__(self, cfg: dict[str, Any]):
        from baselines.dynamic.fbs import FBSResNet

        self.model_class = FBSResNet
        super().__init__(cfg)
        self.lasso = _arg_number(self.where, "method_args.lasso", self.args.get("lasso", 1e-4), low=0.0)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext):
        net = _unwrap(model)
        logits = model(images)
        ce = F.cross_entropy(logits, targets, label_smoothing=ctx.stage.label_smoothing)
        l1 = torch.stack([s.abs().sum(1).mean() for s in net.saliencies()]).mean()
        loss = ce + self.lasso * l1
        logs = self._logs(loss, ce, logits, targets)
        logs["saliency_l1"] = l1.detach()
        return loss, logs
