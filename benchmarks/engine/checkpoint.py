"""Checkpoints: weights as safetensors plus a JSON architecture config; training state
(optimizer, scheduler, RNG, position) as a torch file loaded with `weights_only=True`.

Every epoch commits once. Its files (the last weights, the weights selected on val so far,
the training state) are written into `checkpoints/.pending-<tag>/`, a manifest naming them
with their sha256 is written last, and one rename makes the folder `checkpoints/epoch-<tag>/`:
a kill at any moment leaves either the new epoch whole or the previous one. Resuming takes
the newest committed epoch whose files match its manifest (falling back to the one before,
and removing what is pending or broken), so an interrupted run resumes to the bit-identical
result. The selected weights are then published as `checkpoints/best.*` for readers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from benchmarks.errors import CheckpointError
from benchmarks.io import atomic_path, atomic_write_json, sha256_file
from benchmarks.registry import create_model


def save_weights(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """`<path>.safetensors` (tensors) and `<path>.json` (architecture config + meta)."""
    path = Path(path)
    state = {k: v.detach().contiguous().clone().cpu() for k, v in _unwrap(model).state_dict().items()}
    arch = getattr(_unwrap(model), "arch_config", None)
    if arch is None:
        raise CheckpointError("model has no arch_config: build it with benchmarks.registry.create_model")
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp))
    _step(f"{path.name}.safetensors")
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
    try:
        missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: weights of another architecture
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"weights file {weights} does not fit the model ({detail[:400]})") from None
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


# --------------------------------------------------------------------------------------------
# One atomic commit per epoch

#: Called with a label after every write step of a checkpoint commit. Fault-injection tests set
#: it to kill the process at a chosen step; it is None otherwise.
WRITE_HOOK: Callable[[str], None] | None = None
MANIFEST = "manifest.json"
KEEP_COMMITTED = 2  # the newest epoch and the one before (the fallback)


def _step(label: str) -> None:
    if WRITE_HOOK is not None:
        WRITE_HOOK(label)


def epoch_tag(stage: int, epoch: int) -> str:
    return f"{stage:03d}-{epoch:04d}"


def _committed(directory: Path) -> list[Path]:
    """Committed epoch folders, newest first."""
    return sorted((p for p in directory.glob("epoch-*") if p.is_dir()), key=lambda p: p.name, reverse=True)


def commit_epoch(
    directory: str | os.PathLike,
    tag: str,
    model: nn.Module,
    last_meta: dict[str, Any],
    state: dict[str, Any],
    best_meta: dict[str, Any] | None,
) -> Path:
    """Commit one epoch: `last.*` (the model now), `best.*` (the model now when `best_meta` is
    given, else the previous epoch's best), `state.pt`, then the manifest, then the rename.
    Publishes `best.*` and prunes older epochs afterwards. Returns the committed folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pending = directory / f".pending-{tag}"
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir()
    previous = next(iter(_committed(directory)), None)
    save_weights(model, pending / "last", last_meta)
    _step("last.json")
    if best_meta is not None:
        save_weights(model, pending / "best", best_meta)
        _step("best.json")
    elif previous is not None and (previous / "best.safetensors").is_file():
        for suffix in (".safetensors", ".json"):  # unchanged: share the previous files
            os.link(previous / f"best{suffix}", pending / f"best{suffix}")
        _step("best weights linked")
    save_state(state, pending / "state.pt")
    _step("training state")
    files = sorted(p.name for p in pending.iterdir())
    atomic_write_json(pending / MANIFEST, {"tag": tag, "files": {name: sha256_file(pending / name) for name in files}})
    _step("manifest")
    committed = directory / f"epoch-{tag}"
    shutil.rmtree(committed, ignore_errors=True)  # a stale folder of an earlier attempt
    os.rename(pending, committed)
    _step("commit")
    publish_best(directory, committed)
    for old in _committed(directory)[KEEP_COMMITTED:]:
        shutil.rmtree(old, ignore_errors=True)
    _step("prune")
    return committed


def publish_best(directory: str | os.PathLike, committed: Path) -> None:
    """Copy the committed epoch's `best.*` to `checkpoints/best.*` (each file atomically)."""
    directory = Path(directory)
    for suffix in (".safetensors", ".json"):
        source = committed / f"best{suffix}"
        if source.is_file():
            with atomic_path(directory / f"best{suffix}") as tmp:
                shutil.copyfile(source, tmp)
            _step(f"publish best{suffix}")


def verify_committed(folder: Path) -> str | None:
    """None when every file of the folder's manifest is there with its sha256; else why not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no readable manifest ({exc})"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its sha256"
    return None


def latest_committed(
    directory: str | os.PathLike, log: Callable[[str], None] | None = None, clean: bool = True
) -> Path | None:
    """The newest committed epoch whose files verify. With `clean`, pending and broken
    folders and stray temporary files are removed (with a message)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    strays = [*directory.glob(".pending-*"), *directory.glob(".*.tmp")] if clean else []
    for stray in strays:
        if stray.is_dir():
            shutil.rmtree(stray, ignore_errors=True)
        else:
            stray.unlink(missing_ok=True)
    for folder in _committed(directory):
        problem = verify_committed(folder)
        if problem is None:
            return folder
        if clean:
            if log:
                log(f"checkpoint {folder} is incomplete ({problem}); falling back to the one before")
            shutil.rmtree(folder, ignore_errors=True)
    return None


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


def checkpoint_of(cfg: dict[str, Any], key: str, runs_root: str | os.PathLike | None = None) -> Path:
    """The checkpoint stem `method_args.<key>` of `cfg` names (`resolve_checkpoint` for the
    config's seed and quick setting; experiments resolve under `method_args.runs_root`, else
    `runs_root`, the training run's own root)."""
    return resolve_checkpoint(
        str(cfg["method_args"][key]),
        key=f"method_args.{key}",
        seed=int(cfg.get("seed", 0)),
        quick=bool(cfg.get("quick", False)),
        runs_root=cfg.get("method_args", {}).get("runs_root") or runs_root,
    )


def load_parent_model(cfg: dict[str, Any], runs_root: str | os.PathLike | None = None, key: str = "init") -> nn.Module:
    """The trained model a run starts from (`method_args.<key>`), which must be an instance of
    the config's `model.name`."""
    from benchmarks.errors import ConfigError

    stem = checkpoint_of(cfg, key, runs_root)
    model, _ = build_from_checkpoint(stem)
    expected = cfg["model"]["name"]
    if model.arch_config["name"] != expected:
        raise ConfigError(
            f"method_args.{key}: {stem.with_suffix('.json')} holds a '{model.arch_config['name']}', "
            f"but model.name is '{expected}'"
        )
    return model


def load_backbone_into(model: nn.Module, cfg: dict[str, Any], runs_root: str | os.PathLike | None = None,
                       key: str = "backbone") -> nn.Module:  # fmt: skip
    """Load the trained static network `method_args.<key>` names into a dynamic model built on
    it (its `load_backbone_state`)."""
    stem = checkpoint_of(cfg, key, runs_root)
    static, _ = build_from_checkpoint(stem)
    try:
        model.load_backbone_state(static.state_dict())
    except KeyError as exc:
        raise CheckpointError(
            f"method_args.{key}: {stem.with_suffix('.safetensors')} does not fit the backbone of "
            f"this {type(model).__name__}: {exc.args[0]}"
        ) from None
    return model
