"""Run folders: one per resolved single-seed config, named by the config's hash.

    results/runs/<experiment>-s<seed>-<hash12>/
        config.yaml        the resolved config (what the hash covers)
        environment.json   versions, device, threads, git commit
        metrics.csv        one row per epoch (the metrics log)
        checkpoints/       last.* every epoch, best.* on a new best val metric
        metrics.json       final metrics: the epoch selected on val, val and test metrics
        results.csv        the tidy result rows of this run

The same config always maps to the same folder, so a finished run is reused, and an
interrupted one is resumed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.config import config_hash
from benchmarks.errors import ConfigError
from benchmarks.io import atomic_write_json, atomic_write_text, ensure_dir

DEFAULT_RUNS_ROOT = Path("results/runs")


def single_seed_config(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of one run: `seeds` replaced by the run's `seed`."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.pop("seeds", None)
    run_cfg["seed"] = int(seed)
    return run_cfg


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def for_config(cls, run_cfg: dict[str, Any], root: str | os.PathLike | None = None) -> RunFolder:
        if "seed" not in run_cfg:
            raise ValueError("RunFolder.for_config needs a single-seed config (see single_seed_config)")
        root = Path(root) if root is not None else DEFAULT_RUNS_ROOT
        name = f"{run_cfg['name']}-s{run_cfg['seed']}-{config_hash(run_cfg)[:12]}"
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
        ensure_dir(self.path)
        ensure_dir(self.checkpoint_dir)
        atomic_write_text(self.config_file, yaml.safe_dump(run_cfg, sort_keys=True))
        atomic_write_json(self.environment_file, environment)
        return self

    def load_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"'{self.path}' is not a run folder (no config.yaml)") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_file} is malformed")
        return data

    def is_complete(self) -> bool:
        return self.metrics_file.is_file() and self.results_file.is_file()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_file, metrics)
