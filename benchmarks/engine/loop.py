"""The training loop every method shares.

`Trainer(cfg, seed).fit()` trains one run: it seeds everything, builds the model through the
method, runs the method's stages epoch by epoch, evaluates on `val` after each epoch, logs
metrics, checkpoints atomically every epoch, keeps the checkpoint selected on `val`, and
resumes from the last checkpoint when the run folder already has one. It never touches the
test split: the harness evaluates `test` once, after training (`benchmarks.evaluation`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from benchmarks.data import dataset_info, load_split
from benchmarks.engine import distributed
from benchmarks.engine.batches import (
    epoch_generator,
    eval_batches,
    num_train_batches,
    train_batches,
)
from benchmarks.engine.checkpoint import (
    build_from_checkpoint,
    commit_epoch,
    epoch_tag,
    latest_committed,
    load_state,
    load_weights,
    publish_best,
    save_weights,
)
from benchmarks.engine.method import Method, Stage, StepContext, get_method
from benchmarks.engine.optim import build_optimizer, build_scheduler
from benchmarks.environment import environment_record
from benchmarks.errors import TrainingDiverged
from benchmarks.io import atomic_write_text
from benchmarks.runs import RunFolder, single_seed_config


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # CUDA lacks deterministic kernels for a few ops: warn there instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False


def _finite(value: torch.Tensor | float) -> bool:
    return bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(value)


class Trainer:
    """Trains one run (one config, one seed) into its run folder."""

    def __init__(
        self,
        cfg: dict[str, Any],
        seed: int,
        runs_root: str | os.PathLike | None = None,
        data_root: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        log=None,
    ):
        self.cfg = single_seed_config(cfg, seed)
        self.seed = int(seed)
        self.data_root = data_root
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.run = RunFolder.for_config(self.cfg, runs_root, self.device)
        self.dist = distributed.context()
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.method: Method = get_method(self.cfg["method"])(self.cfg)
        self.method.runs_root = self.run.path.parent
        self.method.data_root = data_root
        self.options = self.cfg["dataset"].get("options") or None
        self.info = dataset_info(self.cfg["dataset"]["name"], self.options)
        train = self.cfg["train"]
        self.use_amp = bool(train["amp"]) and self.device.type == "cuda"
        self.channels_last = bool(train["channels_last"]) and self.device.type == "cuda"
        self._prepared: tuple[Any, Any, list[Stage], nn.Module] | None = None

    # --- helpers -------------------------------------------------------------------------
    def _to_device(self, images: torch.Tensor, targets: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def evaluate(self, model: nn.Module, split_data) -> dict[str, float]:
        batches = (self._to_device(x, y) for x, y in eval_batches(split_data, self.cfg["train"]["eval_batch_size"]))
        return self.evaluate_batches(model, batches)

    def evaluate_batches(self, model: nn.Module, batches) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.method.evaluate(distributed.unwrap(model), batches)
        model.train(was_training)
        return metrics

    def _write_log(self, history: list[dict[str, Any]]) -> None:
        if not self.dist.is_main or not history:
            return
        columns = list(dict.fromkeys(k for row in history for k in row))
        lines = [",".join(columns)]
        for row in history:
            lines.append(",".join("" if row.get(c) is None else f"{row[c]:.10g}" if isinstance(row.get(c), float) else str(row[c]) for c in columns))
        atomic_write_text(self.run.metrics_log, "\n".join(lines) + "\n")

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or resume) the run; return the selection summary. Holds the run folder's
        lock (one process per run) while it trains."""
        prepared = self.preflight()
        with self.exclusive():
            return self._fit(*prepared)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """The run folder's lock (one process per run). Under torchrun the ranks of one job
        share the run and synchronise through barriers, so they take no lock."""
        return self.run.lock(self.log) if self.dist.world_size == 1 else contextlib.nullcontext()

    def preflight(self) -> tuple[Any, Any, list[Stage], nn.Module]:
        """Everything the user's input can make fail, before any file is written: the data
        (present, manifests verified), the stages, the model (its kwargs), the first stage's
        start (e.g. an init checkpoint or a pruning spec) and the selection metric. `fit`
        runs it (once: the result is kept)."""
        if self._prepared is None:
            self._prepared = self._preflight()
        return self._prepared

    def _preflight(self) -> tuple[Any, Any, list[Stage], nn.Module]:
        seed_everything(self.seed, self.cfg["deterministic"])
        train_data = load_split(self.info.name, "train", self.data_root, options=self.options)
        val_data = load_split(self.info.name, "val", self.data_root, options=self.options)
        if self.cfg["train"]["data_on_device"]:
            train_data, val_data = (on_device(split, self.device) for split in (train_data, val_data))
        stages = self.method.stages()
        model = self.method.build_model(self.info)
        if stages:
            model = self.method.start_stage(model, stages[0], self.info)
        if any(stage.select for stage in stages):
            self._check_select_metric(model, val_data)
        return train_data, val_data, stages, model

    def _check_select_metric(self, model: nn.Module, val_data) -> None:
        """`select.metric` must be something the epoch log holds: a val metric the method
        reports (found by evaluating one val batch), a train_* metric, or lr."""
        key = self.cfg["select"]["metric"]
        if key.startswith("train_") or key == "lr":
            return
        rng = torch.get_rng_state()
        try:
            first = next(iter(eval_batches(val_data, min(8, self.cfg["train"]["eval_batch_size"]))))
            metrics = self.evaluate_batches(self._prepare_model(model), iter([self._to_device(*first)]))
        finally:
            torch.set_rng_state(rng)
        logged = sorted(f"val_{k}" for k in metrics)
        if key not in logged:
            from benchmarks.errors import ConfigError

            raise ConfigError(
                f"{self.cfg.get('source', 'config')}: select.metric '{key}' is not logged by method "
                f"'{self.cfg['method']}'; it logs {', '.join(logged)} (and train_* metrics)"
            )

    def _fit(self, train_data, val_data, stages: list[Stage], fresh_model: nn.Module) -> dict[str, Any]:
        if self.dist.is_main:
            self.run.create(self.cfg, environment_record(self.device, amp=self.use_amp, channels_last=self.channels_last, world_size=self.dist.world_size))
        distributed.barrier()
        best_path = self.run.checkpoint_dir / "best"

        history: list[dict[str, Any]] = []
        best = {"metric": None, "epoch": None, "stage": None, "metrics": {}}
        start_stage, start_epoch, resumed_state = 0, 0, None
        if self.dist.is_main:  # removes pending and broken epochs, with a message
            latest_committed(self.run.checkpoint_dir, log=self.log)
        distributed.barrier()
        committed = latest_committed(self.run.checkpoint_dir, clean=False)
        if committed is not None:
            resumed_state = load_state(committed / "state.pt")
            model, _ = build_from_checkpoint(committed / "last")
            history = list(resumed_state["history"])
            if self.dist.is_main:  # a kill may have come before these were written
                publish_best(self.run.checkpoint_dir, committed)
                self._write_log(history)
            best = dict(resumed_state["best"])
            start_stage, start_epoch = resumed_state["stage"], resumed_state["epoch"] + 1
            if start_epoch >= stages[start_stage].epochs:
                start_stage, start_epoch = start_stage + 1, 0
            self.log(f"[{self.run.path.name}] resuming at stage {start_stage} epoch {start_epoch} from {committed.name}")
        else:
            model = fresh_model  # built and started on stage 0 by the preflight
        select_key, select_mode = self.cfg["select"]["metric"], self.cfg["select"]["mode"]

        for stage in stages[start_stage:]:
            resuming_inside = resumed_state is not None and stage.index == start_stage and start_epoch > 0
            started_by_preflight = resumed_state is None and stage.index == 0
            if not resuming_inside and not started_by_preflight:
                model = self.method.start_stage(model, stage, self.info)
            model = self._prepare_model(model)
            ddp_model = distributed.wrap(model, self.device)
            optimizer = build_optimizer(self.method.trainable_parameters(model, stage), stage.optimizer)
            steps_per_epoch = num_train_batches(len(train_data), stage.batch_size, self.dist.world_size)
            scheduler = build_scheduler(optimizer, stage.scheduler, steps_per_epoch, stage.epochs)
            first_epoch = 0
            if resuming_inside:
                optimizer.load_state_dict(resumed_state["optimizer"])
                scheduler.load_state_dict(resumed_state["scheduler"])
                torch.set_rng_state(resumed_state["rng_cpu"])
                if torch.cuda.is_available() and "rng_cuda" in resumed_state:
                    torch.cuda.set_rng_state_all(list(resumed_state["rng_cuda"]))
                first_epoch = start_epoch
            for epoch in range(first_epoch, stage.epochs):
                best_meta = None
                row = self._train_epoch(ddp_model, model, optimizer, scheduler, stage, epoch, steps_per_epoch, train_data, committed)
                val_metrics = self.evaluate(model, val_data)
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                history.append(row)
                if stage.select:
                    value = row.get(select_key)
                    if value is None:
                        from benchmarks.errors import ConfigError

                        raise ConfigError(f"select.metric '{select_key}' is not logged; logged: {', '.join(row)}")
                    rank = selection_rank(value, select_mode, row, self.method.selection_band(stage))
                    improved = best["metric"] is None or rank < tuple(best.get("rank") or selection_rank(best["metric"], select_mode, {}, None))
                    if improved:
                        best = {"metric": value, "epoch": epoch + 1, "stage": stage.name, "metrics": dict(row), "rank": list(rank)}
                        best_meta = {"stage": stage.name, "epoch": epoch + 1, select_key: value}
                if self.dist.is_main:
                    state = {
                        "stage": stage.index,
                        "epoch": epoch,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng_cpu": torch.get_rng_state(),
                        "history": history,
                        "best": best,
                    }
                    if torch.cuda.is_available():
                        state["rng_cuda"] = torch.cuda.get_rng_state_all()
                    committed = commit_epoch(
                        self.run.checkpoint_dir, epoch_tag(stage.index, epoch), model,
                        {"stage": stage.name, "epoch": epoch + 1}, state, best_meta,
                    )  # fmt: skip
                    self._write_log(history)
                self.log(
                    f"[{self.run.path.name}] {stage.name} epoch {epoch + 1}/{stage.epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
                )
        if best["epoch"] is None:
            # No stage selects (e.g. zero epochs): the final weights are the model.
            save_weights(model, best_path, {"stage": stages[-1].name if stages else "", "epoch": None})
        return {"run_dir": str(self.run.path), "selected": best}

    def _train_epoch(self, ddp_model, model, optimizer, scheduler, stage: Stage, epoch: int, steps_per_epoch: int, train_data, committed: Path | None) -> dict[str, Any]:
        model.train()
        generator = epoch_generator(self.seed, stage.index, epoch)
        batches = train_batches(train_data, stage.batch_size, generator, stage.augment, (self.dist.rank, self.dist.world_size))
        sums: dict[str, float] = {}
        count = 0
        started = time.perf_counter()
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False, disable=not self.progress or None, file=sys.stderr)
        for step_in_epoch, (images, targets) in enumerate(bar):
            images, targets = self._to_device(images, targets)
            ctx = StepContext(stage, epoch, epoch * steps_per_epoch + step_in_epoch, steps_per_epoch * stage.epochs)
            with self._autocast():
                loss, logs = self.method.loss(ddp_model, images, targets, ctx)
            loss_value = loss.detach()
            if not _finite(loss_value):
                kept = (
                    f"The last good checkpoint is kept at {committed / 'last.safetensors'}"
                    if committed is not None else "No epoch had finished, so there is no checkpoint to keep"
                )  # fmt: skip
                raise TrainingDiverged(
                    f"[{self.run.path.name}] the loss became {loss_value.item()} at stage '{stage.name}', "
                    f"epoch {epoch + 1}, step {step_in_epoch + 1}; training stopped. {kept} "
                    f"(lower the learning rate, or check the data)."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stage.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
            optimizer.step()
            scheduler.step()
            batch = len(targets)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + float(value) * batch
            count += batch
            if self.progress and step_in_epoch % 10 == 0:
                bar.set_postfix(loss=f"{loss_value.item():.3f}")
        row: dict[str, Any] = {"stage": stage.name, "epoch": epoch + 1}
        row.update({f"train_{k}": v / max(count, 1) for k, v in sums.items()})
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["epoch_seconds"] = time.perf_counter() - started
        return row


def on_device(split: Any, device: torch.device) -> Any:
    """`split` with its images and labels moved to `device` once (`train.data_on_device`): on
    a GPU, batches are then sliced where the model runs, with no copy per step. The order of
    batches and the augmentation draws stay those of the CPU generator, so a run's numbers
    do not depend on this switch. In-memory splits only (others are returned as they are)."""
    from benchmarks.data import TensorSplit

    if not isinstance(split, TensorSplit) or split.transform is not None or device.type == "cpu":
        return split
    return TensorSplit(split.images.to(device), split.targets.to(device), split.info, split.split)


def selection_rank(value: float, mode: str, row: dict[str, Any], band: tuple[str, float, float] | None) -> tuple[float, float, float]:
    """Sort key of an epoch for selection (smaller is better): epochs whose `band` metric lies
    inside [low, high] first, then those closest to it, then the selection metric. Without a
    band, the selection metric alone."""
    distance = 0.0
    if band is not None:
        key, low, high = band
        measured = row.get(key)
        distance = math.inf if measured is None else max(0.0, low - measured, measured - high)
    return (float(distance > 0), distance, -value if mode == "max" else value)


def load_selected_model(run: RunFolder) -> nn.Module:
    """The checkpoint selected on val (best.*), rebuilt from its architecture config."""
    model, _ = build_from_checkpoint(run.checkpoint_dir / "best")
    return model


__all__ = ["Trainer", "load_selected_model", "load_weights", "seed_everything"]
