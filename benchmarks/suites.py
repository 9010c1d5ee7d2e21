"""Reproduction suites: named lists of experiments, run end to end.

`reproduce(suite)` trains (or reuses: same config hash, same run folder) every experiment of
the suite for every seed, has the harness evaluate each selected model once on `test`,
collects the result rows and renders the suite's tables.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.config import CONFIG_ROOT, find_config, load_config
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.io import atomic_write_text, ensure_dir
from benchmarks.results import collect_results, to_latex, to_markdown, write_results
from benchmarks.runs import RunFolder, single_seed_config

SUITES_FILE = CONFIG_ROOT / "suites.yaml"
TABLE_COLUMNS = ["experiment", "model", "kind", "dataset", "split", "seed", "accuracy", "macs_mean", "params", "selected_epoch"]


def load_suites() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(SUITES_FILE.read_text(encoding="utf-8")) or {}
    for name, suite in data.items():
        if not isinstance(suite, dict) or not isinstance(suite.get("experiments"), list):
            raise ConfigError(f"{SUITES_FILE}: suite '{name}' needs an 'experiments' list")
    return data


@dataclass
class SuiteReport:
    suite: str
    rows_file: Path
    tables: list[Path]
    runs: list[Path] = field(default_factory=list)
    reused: int = 0
    trained: int = 0
    seconds: float = 0.0


def reproduce(
    suite: str,
    out: str | os.PathLike = "results",
    data_root: str | os.PathLike | None = None,
    seeds: int | None = None,
    quick: bool | None = None,
    device: str | None = None,
    log=None,
) -> SuiteReport:
    from benchmarks.engine import Trainer
    from benchmarks.evaluation import finalize_run

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    suites = load_suites()
    if suite not in suites:
        raise UnknownNameError("suite", suite, suites)
    spec = suites[suite]
    use_quick = spec.get("quick", False) if quick is None else quick
    out = ensure_dir(out)
    runs_root = ensure_dir(out / "runs")
    tables_dir = ensure_dir(out / "tables")
    # Validate every config before any training: a typo fails fast, with nothing written.
    configs = [load_config(find_config(name), quick=use_quick) for name in spec["experiments"]]
    started = time.perf_counter()
    report = SuiteReport(suite, tables_dir / f"{suite}.csv", [])
    jobs = [(cfg, seed) for cfg in configs for seed in (list(range(seeds)) if seeds else cfg["seeds"])]
    for number, (cfg, seed) in enumerate(jobs, start=1):
        run = RunFolder.for_config(single_seed_config(cfg, seed), runs_root)
        elapsed = time.perf_counter() - started
        eta = f", about {elapsed / (number - 1) * (len(jobs) - number + 1):.0f}s left" if number > 1 else ""
        log(f"[{suite} {number}/{len(jobs)}{eta}] {cfg['name']} seed {seed}")
        if run.is_complete():
            report.reused += 1
        else:
            Trainer(cfg, seed, runs_root=runs_root, data_root=data_root, device=device, log=log).fit()
            finalize_run(run, data_root)
            report.trained += 1
        report.runs.append(run.path)
    frame = collect_results(run / "results.csv" for run in report.runs)
    write_results(frame, report.rows_file)
    columns = [c for c in TABLE_COLUMNS if c in frame.columns]
    md = tables_dir / f"{suite}.md"
    atomic_write_text(md, f"# Suite `{suite}`\n\n" + to_markdown(frame, columns))
    tex = tables_dir / f"{suite}.tex"
    atomic_write_text(tex, to_latex(frame, columns))
    report.tables = [report.rows_file, md, tex]
    report.seconds = time.perf_counter() - started
    return report
