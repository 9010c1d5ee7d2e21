"""Checkpoints: weights as safetensors plus a JSON architecture config; training state
(optimizer, scheduler, RNG, position) as a torch file loaded with `weights_only=True`.

Every file is written atomically, so a kill at any moment leaves the previous checkpoint
whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from benchmarks.errors import CheckpointError
from benchmarks.io import atomic_path, atomic_write_json
from benchmarks.registry import create_model


def save_weights(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """`<path>.safetensors` (tensors) and `<path>.json` (architecture config + meta)."""
    path = Path(path)
    state = {k: v.detach().contiguous().clone().cpu() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp))
    arch = getattr(_unwrap(model), "arch_config", None)
    if arch is None:
        raise CheckpointError("model has no arch_config: build it with benchmarks.registry.create_model")
    atomic_write_json(path.with_suffix(".json"), {"arch": arch, "meta": meta or {}})
    return path.with_suffix(".safetensors")


def read_arch(path: str | os.PathLike) -> dict[str, Any]:
    json_path = Path(path).with_suffix(".json")
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        return record
    except FileNotFoundError:
        raise CheckpointError(f"architecture config {json_path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"architecture config {json_path} is not valid JSON: {exc}") from exc


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    weights = Path(path).with_suffix(".safetensors")
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"weights file {weights} is missing") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"weights file {weights} cannot be read: {exc}") from exc
    missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"weights file {weights} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def build_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its JSON architecture config and load its weights."""
    record = read_arch(path)
    try:
        arch = record["arch"]
        model = create_model(arch["name"], **arch.get("kwargs", {}))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"architecture config {Path(path).with_suffix('.json')} is malformed: {exc}") from exc
    return load_weights(model, path), record.get("meta", {})


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training state {path} is missing") from None
    except Exception as exc:
        raise CheckpointError(f"training state {path} cannot be loaded safely: {exc}") from exc


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


EXPERIMENT_PREFIX = "experiment:"


def experiment_run_folder(
    name: str, seed: int, *, quick: bool = False, runs_root: str | os.PathLike | None = None
) -> Path:
    """The run folder of bundled experiment `name` (e.g. `baselines/cifar10_resnet56`) for
    `seed`, as `dynbench train` / `reproduce` name it under `runs_root` (default results/runs)."""
    from benchmarks.config import find_config, load_config
    from benchmarks.runs import DEFAULT_RUNS_ROOT, RunFolder, single_seed_config

    cfg = load_config(find_config(name), quick=quick)
    root = Path(runs_root) if runs_root is not None else DEFAULT_RUNS_ROOT
    return RunFolder.for_config(single_seed_config(cfg, seed), root).path


def resolve_checkpoint(
    value: str | os.PathLike,
    *,
    key: str,
    seed: int = 0,
    quick: bool = False,
    runs_root: str | os.PathLike | None = None,
) -> Path:
    """The checkpoint stem a config names under `key` (e.g. `method_args.init`):
    `experiment:<suite>/<name>` (that experiment's finished run for the same seed and quick
    setting), a run folder (its checkpoint selected on val), a checkpoint's `.safetensors` /
    `.json` file, or its path without suffix."""
    from benchmarks.runs import RunFolder

    if isinstance(value, str) and value.startswith(EXPERIMENT_PREFIX):
        name = value[len(EXPERIMENT_PREFIX):]
        run = RunFolder(experiment_run_folder(name, seed, quick=quick, runs_root=runs_root))
        if not run.is_complete():
            raise CheckpointError(
                f"{key}: experiment '{name}' has no finished run at {run.path}; run "
                f"`dynbench train {name}` first (or list it before this one in the suite)"
            )
        return run.checkpoint_dir / "best"
    path = Path(value).expanduser()
    if path.is_dir():
        stem = path / "checkpoints" / "best"
        if not stem.with_suffix(".safetensors").is_file():
            raise CheckpointError(
                f"{key}: '{path}' is not a finished run folder (no {stem.with_suffix('.safetensors')})"
            )
        return stem
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    if not path.with_suffix(".safetensors").is_file():
        raise CheckpointError(
            f"{key}: no checkpoint at '{value}' (expected experiment:<suite>/<name>, a run "
            "folder, a checkpoint's .safetensors/.json file, or its path without suffix)"
        )
    return path
