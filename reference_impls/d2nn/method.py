"""Training D2NN through the engine: the `d2nn` method and the `d2nn_static` method of its
static baselines.

`d2nn` has two stages (DESIGN §6, spec "Learning"):

* `pretrain` — every regular node is trained with all branches enabled (policy "all"; the loss
  is the sum of the exits' cross-entropies), or, for designs whose alternatives replace each
  other (the chain), along uniformly random paths (cross-entropy of the output).
* `joint` — backpropagation and Q-learning together: ε-greedy routing (ε decays linearly from
  1.0 to 0.05 over the first 60% of the stage's steps), cross-entropy of the output through the
  executed path for the regular nodes, and the mini-bag Q-learning loss (weight `q_weight`) for
  the control nodes, whose inputs are detached. Per-sample cost is the executed MACs the routing
  trace records (controllers included) over the MACs of the design's reference path.

A stage's kind is its name, or `args.mode` (pretrain | joint).

`method_args` (YAML `method_args:`): `lam` (λ of the reward, default 0.5), `bag_size` (m;
default 32 for F-score tasks, 1 for accuracy), `q_weight` (1.0), `epsilon` ({start: 1.0,
end: 0.05, decay_fraction: 0.6}), `q_init` ("optimistic", a number, or null; see below),
`q_lr_scale` (learning rate of the control nodes in the joint stage, as a multiple of the
stage's; default 10, see below). A λ curve is a `sweep:` over `method_args.lam`
(benchmarks.sweeps), one run per point, like any swept experiment.

`d2nn_confidence` turns a trained confidence-threshold cascade (`method_args.init`, e.g.
`experiment:d2nn/fmnist_cascade_confidence`) into one operating point: its single stage,
`calibrate` (0 epochs: it trains nothing), picks on `val` the thresholds with the best val
score whose val MACs stay within `method_args.macs_fraction` of the reference path
(reference_impls.d2nn.confidence). A sweep over `macs_fraction` traces the baseline's curve;
every point's budget is its parent's training.

[decision] Optimistic initial Q-values: when the joint stage starts, the bias of each control
node's last linear layer is set to `q_init` ("optimistic": λ, the largest reward a sample can
get). With γ = 1 the targets of early decisions are the Q-values of later control nodes; from
a zero start those look worse than stopping, and a cascade learns to stop at its first exit
before its later controllers have been visited enough to learn their values.

[decision] Control nodes learn at 10× the joint stage's learning rate (`q_lr_scale`). Their
only signal is the Q-loss on noisy (bag-level) rewards; at the regular nodes' rate, a few
hundred joint steps taught them little more than one value per action, so every sample took
the same action (on Fashion-MNIST the hierarchical root never chose the trousers or bags
branch: 27.5% of val samples misrouted, against 14% with the faster rate).

The task comes from the shared `dataset.options` (`benchmarks.data.options`), applied by the
engine and the harness alike: `positive_classes: [8]` makes Fashion-MNIST the binary "bag vs
rest" task (10% positives) scored by the F-score of class 1, like LFW-B's faces vs background;
`train_subset: N` trains on a stratified seeded subset (the CPU-sized runs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.data import DatasetInfo
from benchmarks.engine import Method, Stage, StepContext, register_method
from benchmarks.engine.method import Tally
from benchmarks.errors import ConfigError
from benchmarks.registry import create_model, get_model_spec
from benchmarks.routing import trace
from reference_impls.d2nn.confidence import DEFAULT_GRID, threshold_for_budget
from reference_impls.d2nn.graph import D2NN
from reference_impls.d2nn.learning import bag_ids, bag_q_loss, bag_rewards, epsilon_at, q_targets

__all__ = ["D2NNConfidenceMethod", "D2NNMethod", "D2NNStaticMethod", "initial_q_values"]


def _check_number(where: str, key: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: key 'method_args.{key}' must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{where}: key 'method_args.{key}' must be {bound}, got {value!r}")
    return float(value)


@torch.no_grad()
def initial_q_values(model: D2NN, value: float) -> None:
    """Set the bias of each control node's last linear layer to `value` (controls without
    parameters, such as confidence thresholds, are left alone)."""
    for name in model.controls:
        linears = [m for m in model.nodes[name].modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].bias is not None:
            linears[-1].bias.fill_(value)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@register_method
class D2NNStaticMethod(Method):
    """Cross-entropy training of a D2NN static baseline, with the F-score (binary tasks) and
    executed MACs logged at evaluation."""

    name = "d2nn_static"
    _ARGS: frozenset[str] = frozenset()

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.where = cfg.get("source", "config")
        unknown = sorted(set(self.args) - self._ARGS)
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown key 'method_args.{unknown[0]}' for method '{self.name}'; "
                f"known: {', '.join(sorted(self._ARGS))}"
            )
        self.metric = "f1" if self.info.metric == "f1" else "accuracy"

    # --- model -------------------------------------------------------------------------------
    def build_model(self, info: DatasetInfo) -> nn.Module:
        name = self.cfg["model"]["name"]
        kwargs: dict[str, Any] = {"num_classes": info.num_classes, "in_chans": info.input_shape[0]}
        given = dict(self.cfg["model"].get("kwargs", {}))
        accepts = inspect.signature(get_model_spec(name).builder).parameters
        if "hierarchy" in accepts and "hierarchy" not in given and info.hierarchy:
            kwargs["hierarchy"] = [list(classes) for _, classes in info.hierarchy]
        kwargs.update(given)
        try:
            return create_model(name, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.where}: key 'model.kwargs' does not fit model '{name}': {exc}") from exc

    # Training: the engine's supervised cross-entropy (Method.loss).

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """accuracy (%), loss, f1 (% of class 1, F-score tasks), macs (mean executed MACs per
        sample, from the routing trace); for a D2NN also macs_ratio (theoretical MACs over the
        reference path) and reward (λ·A + (1 − λ)·E over the whole split)."""
        model = _unwrap(model)
        tally = Tally()
        loss_sum = macs = theoretical = 0.0
        scored = 0
        reference = None
        costs: dict = {}  # the static parts' counts, replayed across the batches
        for images, targets in batches:
            if isinstance(model, D2NN) and reference is None:
                reference = model.reference_macs(images[:1])
            with trace(batch_size=len(images), cache=costs, model=model) as t:
                logits = model(images)
            macs += float(t.macs_executed.sum())
            theoretical += float(t.macs_theoretical.sum())
            finite = logits.gather(1, targets[:, None]).squeeze(1).isfinite()
            if bool(finite.any()):
                loss_sum += F.cross_entropy(logits[finite], targets[finite], reduction="sum").item()
                scored += int(finite.sum())
            tally.update(logits.argmax(1), targets)
        total = tally.total
        metrics = {
            "accuracy": tally.accuracy(),
            "loss": loss_sum / max(scored, 1),
            "macs": macs / total,
        }
        if scored < total:  # hierarchical: the true class was in a branch that did not run
            metrics["misrouted"] = 100.0 * (total - scored) / total
        if self.metric == "f1":
            metrics["f1"] = tally.f1()
        if reference is not None:
            ratio = theoretical / total / reference
            score = metrics[self.metric] / 100.0
            metrics["macs_ratio"] = ratio
            metrics["reward"] = self.lam * score - (1.0 - self.lam) * ratio
        return metrics

    lam: float = 1.0


@register_method
class D2NNMethod(D2NNStaticMethod):
    """D2NN: pretrain every branch, then joint backpropagation + Q-learning."""

    name = "d2nn"
    _ARGS = frozenset({"lam", "bag_size", "q_weight", "epsilon", "q_init", "q_lr_scale"})
    MODES = ("pretrain", "joint")

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        args, where = self.args, self.where
        self.lam = _check_number(where, "lam", args.get("lam", 0.5), 0.0, 1.0)
        self.q_weight = _check_number(where, "q_weight", args.get("q_weight", 1.0), 0.0)
        default_bag = 32 if self.metric == "f1" else 1
        bag = args.get("bag_size", default_bag)
        if isinstance(bag, bool) or not isinstance(bag, int) or bag < 1:
            raise ConfigError(f"{where}: key 'method_args.bag_size' must be a positive integer, got {bag!r}")
        self.bag_size = bag
        schedule = args.get("epsilon") or {}
        if not isinstance(schedule, dict) or set(schedule) - {"start", "end", "decay_fraction"}:
            raise ConfigError(
                f"{where}: key 'method_args.epsilon' must be a mapping with keys start, end, "
                f"decay_fraction; got {schedule!r}"
            )
        self.epsilon = {
            key: _check_number(where, f"epsilon.{key}", schedule.get(key, default), 0.0, 1.0)
            for key, default in (("start", 1.0), ("end", 0.05), ("decay_fraction", 0.6))
        }
        q_init = args.get("q_init", "optimistic")
        if q_init == "optimistic":
            q_init = self.lam
        elif q_init is not None:
            q_init = _check_number(where, "q_init", q_init, -1e6)
        self.q_init = q_init
        self.q_lr_scale = _check_number(where, "q_lr_scale", args.get("q_lr_scale", 10.0), 1e-6)

    def build_model(self, info: DatasetInfo) -> nn.Module:
        model = super().build_model(info)
        if not isinstance(model, D2NN):
            raise ConfigError(
                f"{self.where}: method 'd2nn' trains D2NN graphs; model '{self.cfg['model']['name']}' "
                "is not one (train static baselines with method 'd2nn_static')"
            )
        return model

    def stages(self) -> list[Stage]:
        stages = super().stages()
        for stage in stages:
            mode = stage.args.get("mode", stage.name)
            if mode not in self.MODES:
                raise ConfigError(
                    f"{self.where}: stages[{stage.index}] '{stage.name}': a d2nn stage is "
                    f"'pretrain' or 'joint' (its name or args.mode), got '{mode}'"
                )
            policy = stage.args.get("policy")
            if policy is not None and policy not in ("all", "random"):
                raise ConfigError(
                    f"{self.where}: stages[{stage.index}].args.policy must be 'all' or 'random', got {policy!r}"
                )
        return stages

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Any:
        """In the joint stage with `q_lr_scale` != 1, two parameter groups: the regular nodes
        at the stage's learning rate, the control nodes at `q_lr_scale` times it."""
        params = [p for p in model.parameters() if p.requires_grad]
        if stage.args.get("mode", stage.name) != "joint" or self.q_lr_scale == 1.0:
            return params
        net = _unwrap(model)
        control = {id(p) for c in net.controls for p in net.nodes[c].parameters()}
        default_lr = 0.1 if stage.optimizer.get("name", "sgd") == "sgd" else 1e-3
        lr = float(stage.optimizer.get("lr", default_lr)) * self.q_lr_scale
        groups = [{"params": [p for p in params if id(p) not in control]}]
        controllers = [p for p in params if id(p) in control]
        if controllers:
            groups.append({"params": controllers, "lr": lr})
        return groups

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        if stage.args.get("mode", stage.name) == "joint" and self.q_init is not None:
            initial_q_values(_unwrap(model), self.q_init)
        return model

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if ctx.stage.args.get("mode", ctx.stage.name) == "pretrain":
            return self._pretrain_loss(model, images, targets, ctx)
        return self._joint_loss(model, images, targets, ctx)

    def _pretrain_loss(self, model, images, targets, ctx):
        net: D2NN = _unwrap(model)
        policy = ctx.stage.args.get("policy", net.pretrain_policy)
        smoothing = ctx.stage.label_smoothing
        if policy == "random":
            run = model(images, epsilon=1.0, return_run=True)
            exits = [run.output]
        else:
            run = model(images, policy="all", return_run=True)
            exits = [run.output if name == net.output_node else run.outputs[name] for name in net.exits]
        loss = sum(F.cross_entropy(logits, targets, label_smoothing=smoothing) for logits in exits)
        accuracy = sum((logits.argmax(1) == targets).float().mean() for logits in exits) / len(exits)
        return loss, {"loss": loss.detach(), "accuracy": 100.0 * accuracy}

    def _joint_loss(self, model, images, targets, ctx):
        net: D2NN = _unwrap(model)
        reference = net.reference_macs(images[:1])
        epsilon = epsilon_at(ctx.progress, **self.epsilon)
        with trace(batch_size=len(images)) as t:
            run = model(images, epsilon=epsilon, return_run=True)
        cost = t.macs_theoretical.to(images.device, torch.float64) / reference
        logits = run.output
        # cross-entropy through the executed path; a hierarchical sample routed away from its
        # class has a -inf target logit and teaches the regular nodes nothing
        finite = logits.gather(1, targets[:, None]).squeeze(1).isfinite()
        ce = (
            F.cross_entropy(logits[finite], targets[finite], label_smoothing=ctx.stage.label_smoothing, reduction="sum")
            / len(targets)
        )
        predictions = logits.detach().argmax(1)
        bags = bag_ids(len(targets), self.bag_size, images.device)
        rewards = bag_rewards(predictions, targets, cost, self.lam, bags, self.metric)
        controls = [c for c in net.controls if c in run.q]
        if controls:
            visited = torch.stack([run.ran[c] for c in controls], 1)
            taken = torch.stack(
                [run.q[c].gather(1, run.actions[c].clamp_min(0)[:, None]).squeeze(1) for c in controls], 1
            )
            best = torch.stack([run.q[c].detach().max(1).values for c in controls], 1)
            q_loss = bag_q_loss(taken, q_targets(visited, best, rewards), visited, bags)
        else:
            q_loss = logits.new_zeros(())
        loss = ce + self.q_weight * q_loss
        accuracy = (predictions == targets).float().mean()
        return loss, {
            "loss": loss.detach(),
            "ce": ce.detach(),
            "q_loss": q_loss.detach(),
            "accuracy": 100.0 * accuracy,
            "reward": float(rewards.mean()),
            "macs_ratio": float(cost.mean()),
            "epsilon": epsilon,
        }


@register_method
class D2NNConfidenceMethod(D2NNStaticMethod):
    """A trained confidence-threshold cascade calibrated on `val` to a MACs budget (no
    training: one `calibrate` stage of 0 epochs)."""

    name = "d2nn_confidence"
    _ARGS = frozenset({"init", "runs_root", "macs_fraction", "grid"})

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        if "init" not in self.args:
            raise ConfigError(
                f"{self.where}: method 'd2nn_confidence' needs 'method_args.init': the trained "
                "confidence cascade to calibrate (e.g. experiment:d2nn/fmnist_cascade_confidence)"
            )
        self.macs_fraction = _check_number(self.where, "macs_fraction", self.args.get("macs_fraction", 1.0), 0.0, 1.0)
        if self.macs_fraction == 0:
            raise ConfigError(f"{self.where}: key 'method_args.macs_fraction' must be in (0, 1], got 0")
        grid = self.args.get("grid", list(DEFAULT_GRID))
        if not isinstance(grid, list) or not grid:
            raise ConfigError(f"{self.where}: key 'method_args.grid' must be a non-empty list of thresholds")
        self.grid = [_check_number(self.where, "grid", g, 0.0) for g in grid]

    def stages(self) -> list[Stage]:
        stages = super().stages()
        if len(stages) != 1 or stages[0].epochs != 0:
            raise ConfigError(
                f"{self.where}: method 'd2nn_confidence' trains nothing; give one stage of 0 "
                "epochs, e.g. stages: [{name: calibrate, epochs: 0}]"
            )
        return stages

    def build_model(self, info: DatasetInfo) -> nn.Module:
        from benchmarks.engine.checkpoint import load_parent_model

        return load_parent_model(self.cfg, self.runs_root)

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        from benchmarks.data import load_split
        from benchmarks.engine.batches import eval_batches

        val = load_split(info.name, "val", self.data_root, options=self.cfg["dataset"].get("options") or None)
        try:
            point = threshold_for_budget(
                model, eval_batches(val, self.cfg["train"]["eval_batch_size"]), self.metric, self.macs_fraction, self.grid
            )
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        kwargs = dict(model.arch_config.get("kwargs", {}), thresholds=list(point.thresholds))
        calibrated = create_model(model.arch_config["name"], **kwargs)
        calibrated.load_state_dict(model.state_dict())
        return calibrated
