"""Sweeps as data: a `sweep:` key in an experiment YAML is a grid over any config keys.

    sweep:
      method_args.lam: [0.9, 0.95, 0.98, 0.99]
      seeds: [[0], [1], [2]]          # any key, dotted, with the list of values it takes

`expand(cfg)` turns one config into one config per grid point (the cartesian product, in
the order the keys are written), each a complete experiment of its own: named
`<name>--<key><value>...`, validated like any config, and so content-addressed into its own
run folder. Every suite command (`dynbench reproduce`) expands sweeps the same way, for every
method, so operating points are rows of the one results schema.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from typing import Any

from benchmarks.errors import ConfigError

#: a grid larger than this needs the user's explicit yes (`dynbench reproduce --yes`)
CONFIRM_POINTS = 10_000
#: config sections whose keys are free-form (a method's, a model's or a dataset's own)
OPEN_SECTIONS = ("method_args", "model.kwargs", "dataset.options")


def grid(cfg: dict[str, Any]) -> dict[str, list[Any]]:
    """The config's sweep as {dotted key: values}, validated against the config's keys."""
    raw = cfg.get("sweep") or {}
    where = cfg.get("source", "config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: key 'sweep' must map config keys to lists of values, got {type(raw).__name__}")
    out: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(key, str) or not key or key in ("sweep", "name", "quick"):
            raise ConfigError(f"{where}: sweep key {key!r} cannot be swept")
        if not _known_key(cfg, key):
            raise ConfigError(
                f"{where}: sweep over unknown key '{key}': not a key of this config (free-form keys "
                f"are allowed under {', '.join(OPEN_SECTIONS)})"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: sweep key '{key}' needs a non-empty list of values, got {values!r}")
        out[key] = values
    return out


def size(cfg: dict[str, Any]) -> int:
    return math.prod(len(v) for v in grid(cfg).values()) if cfg.get("sweep") else 1


def _known_key(cfg: dict[str, Any], key: str) -> bool:
    if any(key == s or key.startswith(s + ".") for s in OPEN_SECTIONS):
        return True
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


def _slug(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]
    text = value if isinstance(value, str) else format(value, "g") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "", f"{short}{text}")[:40]


def expand(cfg: dict[str, Any], confirm_above: int | None = CONFIRM_POINTS) -> list[dict[str, Any]]:
    """One resolved config per grid point (the config itself when it has no sweep)."""
    from benchmarks.config import resolve_config

    axes = grid(cfg)
    if not axes:
        return [cfg]
    where = cfg.get("source", "config")
    points = math.prod(len(v) for v in axes.values())
    if confirm_above is not None and points > confirm_above:
        raise ConfigError(
            f"{where}: its sweep has {points:,} points (more than {confirm_above:,}); pass --yes "
            "to run them all"
        )
    out = []
    base = {k: v for k, v in cfg.items() if k not in ("sweep", "source", "quick", "sweep_of")}
    for values in itertools.product(*axes.values()):
        point = copy.deepcopy(base)
        for key, value in zip(axes, values, strict=True):
            _set(point, key, value)
        point["name"] = f"{cfg['name']}--" + "-".join(_slug(k, v) for k, v in zip(axes, values, strict=True))
        resolved = resolve_config(point, where=f"{where} (sweep point {point['name']})")
        resolved["quick"] = cfg.get("quick", False)
        resolved["sweep_of"] = cfg["name"]
        if "source" in cfg:
            resolved["source"] = cfg["source"]
        out.append(resolved)
    return out
