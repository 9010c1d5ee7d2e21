"""Run folders: one per resolved single-seed config, named by the config's hash.

    results/runs/<experiment>-s<seed>-<hash12>/
        config.yaml        the resolved config (what the hash covers)
        environment.json   versions, device, threads, git commit
        metrics.csv        one row per epoch (the metrics log)
        checkpoints/       last.* every epoch, best.* on a new best val metric
        metrics.json       final metrics: the epoch selected on val, val and test metrics
        results.csv        the tidy result rows of this run
        complete.json      written last: the sha256 of every file above that a result needs

The same config, on the same kind of device with the same CPU thread count and kernel
capability (summation order, and so the numbers, depend on them), always maps to the same folder, so a finished run is
reused and an interrupted one is resumed. A run is finished only when `complete.json` exists
and every file it names still has its recorded sha256.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.config import config_hash
from benchmarks.errors import ConfigError
from benchmarks.io import atomic_write_json, atomic_write_text, ensure_dir, sha256_file

DEFAULT_RUNS_ROOT = Path("results/runs")


def single_seed_config(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one run: `seeds` replaced by the run's `seed`."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.pop("seeds", None)
    run_cfg["seed"] = int(seed)
    return run_cfg


def execution_identity(device: Any = None) -> dict[str, Any]:
    """What besides the config changes a run's numbers: the device type and, on the CPU, the
    intra-op thread count (it changes summation order) and the kernels ATen dispatches to
    (`ATEN_CPU_CAPABILITY`: default, avx2, avx512)."""
    import torch

    kind = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    if kind != "cpu":
        return {"device": kind}
    return {"device": kind, "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


_HELD: dict[Path, int] = {}  # run folders this process holds the lock of (re-entrant)
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """One process per run folder: an advisory `fcntl` lock on `<folder>/.lock`. A second
    process waits, with a message naming the holder; a lock left by a killed process is
    released by the kernel, so it never blocks anyone. Re-entrant within a process."""
    import fcntl

    folder = ensure_dir(folder).resolve()
    with _HELD_GUARD:
        if _HELD.get(folder):
            _HELD[folder] += 1
            held_already = True
        else:
            held_already = False
    if held_already:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[folder] -= 1
        return
    path = folder / ".lock"
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if log:
                log(f"{folder.name}: {holder} is running this run; waiting for it to finish (Ctrl-C stops waiting)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        with _HELD_GUARD:
            _HELD[folder] = 1
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(folder, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


#: files whose sha256 the completion record holds (relative to the run folder)
COMPLETION_FILES = ("config.yaml", "metrics.csv", "metrics.json", "results.csv", "checkpoints/best.safetensors", "checkpoints/best.json")


#: train keys that say where data live, not what is computed: left out of a run's identity, so
#: that adding one (data_on_device came after many runs) does not orphan the runs made before
PLACEMENT_KEYS = ("data_on_device",)


def _numbers_only(run_cfg: dict[str, Any]) -> dict[str, Any]:
    train = run_cfg.get("train")
    if not isinstance(train, dict) or not any(k in train for k in PLACEMENT_KEYS):
        return run_cfg
    return {**run_cfg, "train": {k: v for k, v in train.items() if k not in PLACEMENT_KEYS}}


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def for_config(cls, run_cfg: dict[str, Any], root: str | os.PathLike | None = None, device: Any = None) -> RunFolder:
        """The folder of a single-seed config run on `device` (default: CUDA if present, else
        the CPU) with the current thread count."""
        if "seed" not in run_cfg:
            raise ValueError("RunFolder.for_config needs a single-seed config (see single_seed_config)")
        root = Path(root) if root is not None else DEFAULT_RUNS_ROOT
        identity = config_hash({**_numbers_only(run_cfg), "execution": execution_identity(device)})
        name = f"{run_cfg['name']}-s{run_cfg['seed']}-{identity[:12]}"
        return cls(root / name)

    # --- files ----------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def environment_file(self) -> Path:
        return self.path / "environment.json"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def results_file(self) -> Path:
        return self.path / "results.csv"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # --- state ----------------------------------------------------------------------------
    def create(self, run_cfg: dict[str, Any], environment: dict[str, Any]) -> RunFolder:
        text = yaml.safe_dump(run_cfg, sort_keys=True)
        if self.config_file.is_file():
            existing = self.config_file.read_text(encoding="utf-8", errors="replace")
            if existing != text:
                raise ConfigError(
                    f"run folder '{self.path}' holds a different config.yaml (written by another "
                    "dynbench version, or edited); refusing to reuse or overwrite it. Move it "
                    "away, or write to another --out"
                )
        ensure_dir(self.path)
        ensure_dir(self.checkpoint_dir)
        atomic_write_text(self.config_file, text)
        atomic_write_json(self.environment_file, environment)
        return self

    def load_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"'{self.path}' is not a run folder (no config.yaml)") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.config_file} is malformed ({type(exc).__name__}); the run folder was edited or damaged") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_file} is malformed")
        return data

    @property
    def completion_file(self) -> Path:
        return self.path / "complete.json"

    def mark_complete(self) -> None:
        """Write the completion record last: the sha256 of every file a result needs."""
        files = {name: sha256_file(self.path / name) for name in COMPLETION_FILES if (self.path / name).is_file()}
        atomic_write_json(self.completion_file, {"files": files})

    def completion_problem(self) -> str | None:
        """None when the run is finished and intact; otherwise what is wrong with it."""
        import json

        try:
            record = json.loads(self.completion_file.read_text(encoding="utf-8"))
            files = record["files"]
        except FileNotFoundError:
            return "not finished"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"its completion record is unreadable ({exc})"
        for name in COMPLETION_FILES:
            if name not in files and (self.path / name).is_file():
                return f"{name} is not covered by its completion record"
        for name, digest in files.items():
            path = self.path / name
            if not path.is_file():
                return f"{name} is missing"
            if sha256_file(path) != digest:
                return f"{name} does not match its recorded sha256 (edited or truncated?)"
        return None

    def is_complete(self) -> bool:
        return self.completion_problem() is None

    def lock(self, log: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]:
        return run_lock(self.path, log)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """metrics.json; a metric that is not a finite number (a diverged model's loss) is
        written as null, which JSON can hold, rather than failing the run at its last step."""
        atomic_write_json(self.metrics_file, _finite_or_null(metrics))
