"""The model registry, in the style of timm.

Model constructors in `baselines/` and `reference_impls/` register themselves with
`@register_model("id", paper=..., variant=...)`; the rest of the suite reaches models only
through `create_model(id, **kwargs)` and `list_models(pattern)`. Ids are stable: a result row,
a checkpoint's architecture config and a leaderboard record all name a model by its id.

The model packages are imported lazily, on the first registry lookup, so that importing
`benchmarks` stays cheap and never imports a specific model module.

Models from outside the repository arrive as plugins: an installed distribution that declares
an entry point in the group `dynbench.models` (pointing at a module whose import registers its
models with `@register_model`) is imported at that same first lookup, never before:

    [project.entry-points."dynbench.models"]
    my_models = "my_package.models"

A plugin that fails to import is named with its error (`plugin_errors()`), and the other
models stay available; two sources registering one id are refused, naming both.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from benchmarks.errors import DynbenchError, UnknownNameError

# Packages whose import registers models. Each package's __init__ imports its model files.
MODEL_PACKAGES: tuple[str, ...] = (
    "baselines.static",
    "baselines.pruning",
    "baselines.dynamic",
    "reference_impls.d2nn",
    "reference_impls.lcnet",
)

KINDS = ("static", "pruned", "dynamic")
PLUGIN_GROUP = "dynbench.models"


class PluginError(DynbenchError):
    """A model plugin that cannot be used: its import failed, or it clashes with another."""


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

    @property
    def base(self) -> str | None:
        """The static model this one is built on (its `base:` tag), e.g. LC-Net's backbone or
        an L1-pruned network's unpruned architecture; None when it names none."""
        return self._tag_value("base")

    @property
    def reference(self) -> str | None:
        """The static network a dynamic model is timed and costed against when it has no
        backbone (its `reference:` tag): a D2NN design's reference path, trained alone."""
        return self._tag_value("reference")

    def _tag_value(self, key: str) -> str | None:
        for tag in self.tags:
            if tag.startswith(f"{key}:"):
                return tag[len(key) + 1:]
        return None

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
_OWNERS: dict[str, str] = {}  # model id -> "dynbench" or the plugin that registered it
_PLUGIN_ERRORS: dict[str, str] = {}  # plugin -> why its import failed
_source = "dynbench"  # who is registering right now
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
            first, second = _OWNERS.get(name, "dynbench"), _source
            if first != "dynbench" or second != "dynbench":
                raise PluginError(
                    f"model id '{name}' is registered by both {first} ({_REGISTRY[name].module}) "
                    f"and {second} ({fn.__module__}); refusing both plugins' claim. Rename one of them."
                )
            raise ValueError(
                f"model id '{name}' is registered twice "
                f"({_REGISTRY[name].module} and {fn.__module__})"
            )
        _OWNERS[name] = _source
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
    _load_plugins()


def _plugin_label(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin '{ep.name}' ({ep.value}{where})"


def _load_plugins() -> None:
    """Import every `dynbench.models` entry point; a failed import is remembered and its
    partial registrations removed, a clash between two sources is refused."""
    global _source
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        label = _plugin_label(ep)
        before = set(_REGISTRY)
        _source = label
        try:
            ep.load()
        except PluginError:
            raise
        except Exception as exc:  # any error in a user's module: name it, keep the rest
            for name in set(_REGISTRY) - before:
                del _REGISTRY[name]
                _OWNERS.pop(name, None)
            _PLUGIN_ERRORS[label] = f"{type(exc).__name__}: {exc}"
        finally:
            _source = "dynbench"


def plugin_errors() -> dict[str, str]:
    """Plugins whose import failed, with the error (their models are not registered)."""
    _ensure_loaded()
    return dict(_PLUGIN_ERRORS)


def model_source(name: str) -> str:
    """'dynbench' or the plugin that registered model `name`."""
    _ensure_loaded()
    return _OWNERS.get(name, "dynbench")


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
        if _PLUGIN_ERRORS:
            failed = "; ".join(f"{p}: {e}" for p, e in _PLUGIN_ERRORS.items())
            raise PluginError(f"{UnknownNameError('model', name, _REGISTRY)} (plugins that failed to import: {failed})") from None
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
