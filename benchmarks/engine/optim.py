"""Optimizers and learning-rate schedules from config mappings.

Schedules step once per iteration. `multistep` milestones are in epochs by default, or in
iterations with `unit: iterations` (He et al.'s CIFAR recipe: ÷10 at 32k and 48k of 64k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from benchmarks.errors import ConfigError

_OPTIMIZERS = {"sgd", "adam", "adamw"}
_SCHEDULERS = {"constant", "cosine", "multistep"}


def check_optimizer(spec: dict[str, Any], where: str) -> None:
    """Refuse an optimizer spec that would fail or misbehave at its first step: unknown name
    or keys, a learning rate that is not a positive finite number, negative weight decay."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping, got {spec!r}")
    name = spec.get("name", "sgd")
    if name not in _OPTIMIZERS:
        raise ConfigError(f"{where}.name must be one of {', '.join(sorted(_OPTIMIZERS))}, got '{name}'")
    for key, low, inclusive in (("lr", 0.0, False), ("weight_decay", 0.0, True), ("momentum", 0.0, True)):
        if key not in spec:
            continue
        value = spec[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if inclusive else value > low)
        if not ok:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigError(f"{where}.{key} must be a finite number {bound}, got {value!r}")
    try:
        build_optimizer([torch.zeros(1, requires_grad=True)], spec)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(_located(where, str(exc), "train.optimizer")) from None


def check_scheduler(spec: dict[str, Any], where: str) -> None:
    """Refuse a schedule with an unknown name or keys, before anything runs."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping, got {spec!r}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        build_scheduler(optimizer, spec, steps_per_epoch=1, epochs=1)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(_located(where, str(exc), "train.scheduler")) from None


def _located(where: str, message: str, generic: str) -> str:
    """`message` (which may name the generic key) said of the key at `where`."""
    if message.startswith(generic):
        rest = message[len(generic):]
        return f"{where}{rest}" if rest.startswith(".") else f"{where}{rest}"
    return f"{where}: {message}"


def faster_group(model: torch.nn.Module, fast: Iterable[torch.nn.Module], optimizer: dict[str, Any], mult: float) -> list[dict[str, Any]]:
    """Two parameter groups: the parameters of the `fast` modules (e.g. gate heads, internal
    classifiers) at the stage's learning rate × `mult`, the rest at the stage's rate."""
    fast_ids = {id(p) for module in fast for p in module.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(optimizer.get("lr", 0.1))
    return [
        {"params": [p for p in params if id(p) not in fast_ids]},
        {"params": [p for p in params if id(p) in fast_ids], "lr": lr * mult},
    ]


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: dict[str, Any]) -> torch.optim.Optimizer:
    spec = dict(spec)
    name = spec.pop("name", "sgd")
    if name not in _OPTIMIZERS:
        raise ConfigError(f"train.optimizer.name must be one of {', '.join(sorted(_OPTIMIZERS))}, got '{name}'")
    params = list(params)
    try:
        if name == "sgd":
            spec.setdefault("lr", 0.1)
            return torch.optim.SGD(params, **spec)
        if name == "adam":
            return torch.optim.Adam(params, **spec)
        return torch.optim.AdamW(params, **spec)
    except TypeError as exc:
        raise ConfigError(f"train.optimizer: {exc}") from exc


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: dict[str, Any], steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    spec = dict(spec)
    name = spec.pop("name", "constant")
    if name not in _SCHEDULERS:
        raise ConfigError(f"train.scheduler.name must be one of {', '.join(sorted(_SCHEDULERS))}, got '{name}'")
    total = max(1, steps_per_epoch * epochs)
    warmup = int(spec.pop("warmup_epochs", 0) * steps_per_epoch)
    if name == "constant":
        factor = lambda step: 1.0  # noqa: E731
    elif name == "cosine":
        floor = float(spec.pop("min_factor", 0.0))

        def factor(step: int) -> float:
            t = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        unit = spec.pop("unit", "epochs")
        if unit not in ("epochs", "iterations"):
            raise ConfigError("train.scheduler.unit must be 'epochs' or 'iterations'")
        scale = steps_per_epoch if unit == "epochs" else 1
        milestones = sorted(int(m * scale) for m in spec.pop("milestones", []))
        gamma = float(spec.pop("gamma", 0.1))

        def factor(step: int) -> float:
            return gamma ** sum(step >= m for m in milestones)
    if spec:
        raise ConfigError(f"train.scheduler ({name}): unknown keys {', '.join(sorted(spec))}")
    if warmup and name != "cosine":
        inner = factor

        def factor(step: int) -> float:  # noqa: F811
            return inner(step) * min(1.0, (step + 1) / warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
