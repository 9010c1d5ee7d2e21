"""The method interface: what a training method plugs into the engine.

A method provides its model builder, its loss and its stages; the engine owns the loop.
`SupervisedMethod` (cross-entropy, one or more plain stages) is the default; D2NN, LC-Net and
the pruning baselines subclass it and override what differs (an extra loss term, a stage that
prunes the network before fine-tuning, a different validation metric).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.config import deep_merge
from benchmarks.data import DatasetInfo, dataset_info
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.registry import create_model


@dataclass(frozen=True)
class Stage:
    """One training stage (pretrain, joint, prune, fine-tune, ...)."""

    name: str
    index: int
    epochs: int
    batch_size: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    augment: str = "none"
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    select: bool = False  # the model is selected on val over this stage's epochs
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """Where the loop is; passed to the method's loss and hooks."""

    stage: Stage
    epoch: int  # 0-based within the stage
    step: int  # 0-based within the stage
    total_steps: int  # of the stage

    @property
    def progress(self) -> float:
        """Fraction of the stage done, in [0, 1] (schedules such as D2NN's epsilon use it)."""
        return self.step / max(1, self.total_steps)


class Method:
    """Supervised training with cross-entropy. Subclass and override to add behaviour."""

    name: ClassVar[str] = "supervised"
    #: the `kind` of the models this method produces, when it differs from the registry's
    #: kind of the architecture (a pruning method turns a static network into a pruned one)
    result_kind: ClassVar[str | None] = None

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.args = dict(cfg.get("method_args", {}))
        #: where runs of this suite live (set by the Trainer); `experiment:<name>` references
        #: in method_args resolve there unless method_args.runs_root says otherwise
        self.runs_root: Path | None = None
        #: the data root of the run (set by the Trainer), for methods that read a split
        #: outside the loop (e.g. a calibration on val)
        self.data_root: str | Path | None = None
        #: the dataset as the models see it (after `dataset.options`: padding, binary task)
        self.info = dataset_info(cfg["dataset"]["name"], cfg["dataset"].get("options") or None)

    # --- model ---------------------------------------------------------------------------
    def build_model(self, info: DatasetInfo) -> nn.Module:
        kwargs = {"num_classes": info.num_classes, "in_chans": info.input_shape[0]}
        kwargs.update(self.cfg["model"].get("kwargs", {}))
        name = self.cfg["model"]["name"]
        try:
            return create_model(name, **kwargs)
        except TypeError as exc:
            where = self.cfg.get("source", "config")
            raise ConfigError(f"{where}: key 'model.kwargs' does not fit model '{name}': {exc}") from exc

    # --- stages --------------------------------------------------------------------------
    _STAGE_KEYS = {
        "name", "epochs", "batch_size", "optimizer", "scheduler", "augment",
        "label_smoothing", "grad_clip", "select", "args",
    }

    def stages(self) -> list[Stage]:
        """The config's `stages` (each merged over `train`), or one stage named 'train'."""
        train = self.cfg["train"]
        declared = self.cfg.get("stages") or [{"name": "train"}]
        where = self.cfg.get("source", "config")
        stages = []
        for index, raw in enumerate(declared):
            unknown = set(raw) - self._STAGE_KEYS
            if unknown:
                raise ConfigError(
                    f"{where}: stages[{index}] has unknown key '{sorted(unknown)[0]}'; "
                    f"allowed: {', '.join(sorted(self._STAGE_KEYS))}"
                )
            merged = deep_merge({k: train[k] for k in self._STAGE_KEYS & set(train)}, raw)
            epochs = merged.get("epochs", train["epochs"])
            if not isinstance(epochs, int) or epochs < 0:
                raise ConfigError(f"{where}: stages[{index}].epochs must be an integer >= 0")
            stages.append(
                Stage(
                    name=raw["name"],
                    index=index,
                    epochs=epochs,
                    batch_size=int(merged.get("batch_size", train["batch_size"])),
                    optimizer=dict(merged.get("optimizer", train["optimizer"])),
                    scheduler=dict(merged.get("scheduler", train["scheduler"])),
                    augment=merged.get("augment", train["augment"]),
                    label_smoothing=float(merged.get("label_smoothing", train["label_smoothing"])),
                    grad_clip=float(merged.get("grad_clip", train["grad_clip"])),
                    select=bool(raw.get("select", index == len(declared) - 1)),
                    args=dict(raw.get("args", {})),
                )
            )
        return stages

    def selection_band(self, stage: Stage) -> tuple[str, float, float] | None:
        """(logged metric, low, high): an epoch of `stage` is selected on val only among the
        epochs whose metric lies in [low, high] (the closest one when none does), e.g. a
        dynamic model's cost around its target. None: no band (the default)."""
        return None

    def start_stage(self, model: nn.Module, stage: Stage, info: DatasetInfo) -> nn.Module:
        """Called once when a stage begins (not on resume inside it). May return a new model,
        e.g. a physically pruned one; its `arch_config` must describe it for checkpoints."""
        return model

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> Iterable[nn.Parameter]:
        return (p for p in model.parameters() if p.requires_grad)

    # --- loss and evaluation -----------------------------------------------------------------
    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one batch and metrics to log (batch means)."""
        logits = model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=ctx.stage.label_smoothing)
        correct = (logits.argmax(1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": 100.0 * correct}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """Metrics of the model on a split (eval mode is set by the caller): accuracy and
        loss, plus the F-score of class 1 for binary tasks whose metric is F1."""
        tally, loss_sum = Tally(), 0.0
        for images, targets in batches:
            logits = model(images)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            tally.update(logits.argmax(1), targets)
        metrics = {"accuracy": tally.accuracy(), "loss": loss_sum / tally.total}
        if self.info.metric == "f1":
            metrics["f1"] = tally.f1()
        return metrics


@dataclass
class Tally:
    """Running counts of a split's predictions: accuracy and the F-score of class 1."""

    total: int = 0
    correct: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        positive, actual = predictions == 1, targets == 1
        self.correct += int((predictions == targets).sum())
        self.tp += int((positive & actual).sum())
        self.fp += int((positive & ~actual).sum())
        self.fn += int((~positive & actual).sum())
        self.total += len(targets)

    def accuracy(self) -> float:
        if self.total == 0:
            raise ConfigError("cannot evaluate on an empty split")
        return 100.0 * self.correct / self.total

    def f1(self) -> float:
        return f1_percent(self.tp, self.fp, self.fn)


def f1_percent(tp: int, fp: int, fn: int) -> float:
    """F-score of the positive class, in percent (0 when nothing is predicted or present)."""
    denominator = 2 * tp + fp + fn
    return 100.0 * 2 * tp / denominator if denominator else 0.0


_METHODS: dict[str, type[Method]] = {"supervised": Method}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to configs by its `name`."""
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from benchmarks.registry import _ensure_loaded

    _ensure_loaded()  # model packages register their methods too
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, _METHODS) from None
