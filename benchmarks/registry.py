"""The model registry, in the style of timm.

Model constructors in `baselines/` and `reference_impls/` register themselves with
`@register_model("id", paper=..., variant=...)`; the rest of the suite reaches models only
through `create_model(id, **kwargs)` and `list_models(pattern)`. Ids are stable: a result row,
a checkpoint's architecture config and a leaderboard record all name a model by its id.

The model packages are imported lazily, on the first registry lookup, so that importing
`benchmarks` stays cheap and never imports a specific model module.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from benchmarks.errors import UnknownNameError

# Packages whose import registers models. Each package's __init__ imports its model files.
MODEL_PACKAGES: tuple[str, ...] = (
    "baselines.static",
    "baselines.pruning",
    "baselines.dynamic",
    "reference_impls.d2nn",
    "reference_impls.lcnet",
)

KINDS = ("static", "pruned", "dynamic")


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model id."""

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    variant: str = ""
    kind: str = "static"
    paper_url: str = ""
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.builder.__module__

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "paper": self.paper,
            "variant": self.variant,
            "paper_url": self.paper_url,
            "datasets": list(self.datasets),
            "tags": list(self.tags),
            "module": self.module,
        }


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register_model(
    name: str,
    *,
    paper: str,
    variant: str = "",
    kind: str = "static",
    paper_url: str = "",
    datasets: tuple[str, ...] | list[str] = (),
    tags: tuple[str, ...] | list[str] = (),
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model constructor under a stable id.

    `paper` names the publication the architecture comes from and `variant` what distinguishes
    this id (for example "option-A shortcuts"). `kind` is one of static, pruned, dynamic.
    Extra keyword arguments are default constructor arguments recorded with the spec.
    """
    if kind not in KINDS:
        raise ValueError(f"register_model('{name}'): kind must be one of {KINDS}, got '{kind}'")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].builder is not fn:
            raise ValueError(
                f"model id '{name}' is registered twice "
                f"({_REGISTRY[name].module} and {fn.__module__})"
            )
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=fn,
            paper=paper,
            variant=variant,
            kind=kind,
            paper_url=paper_url,
            datasets=tuple(datasets),
            tags=tuple(tags),
            defaults=dict(defaults),
        )
        return fn

    return decorator


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for package in MODEL_PACKAGES:
        importlib.import_module(package)
    _loaded = True


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted model ids matching a shell-style `pattern`, optionally of one `kind`."""
    _ensure_loaded()
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (kind is None or spec.kind == kind)
    )


def get_model_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, _REGISTRY) from None


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name`; the result carries `arch_config` (id + kwargs) for checkpoints."""
    spec = get_model_spec(name)
    arguments = {**spec.defaults, **kwargs}
    model = spec.builder(**arguments)
    model.arch_config = {"name": name, "kwargs": arguments}
    return model
