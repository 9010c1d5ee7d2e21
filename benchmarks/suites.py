"""Reproduction suites: named lists of experiments, run end to end.

`reproduce(suite)` trains (or reuses: same config hash, same run folder) every experiment of
the suite for every seed, has the harness evaluate each selected model once on `test`,
collects the result rows, renders the suite's tables (seed means, and the comparison with
published numbers: `benchmarks.tables`) and its trade-off figures (`benchmarks.figures`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.config import CONFIG_ROOT, find_config, load_config
from benchmarks.errors import ConfigError, UnknownNameError
from benchmarks.io import ensure_dir
from benchmarks.results import collect_results, write_results
from benchmarks.runs import RunFolder, single_seed_config
from benchmarks.sweeps import CONFIRM_POINTS, expand

SUITES_FILE = CONFIG_ROOT / "suites.yaml"


def load_suites() -> dict[str, dict[str, Any]]:
    """The suites of suites.yaml. A suite lists `experiments`, or `include`s other suites (its
    experiments are then the union of theirs, each run with its own suite's `quick` setting)."""
    data = yaml.safe_load(SUITES_FILE.read_text(encoding="utf-8")) or {}
    for name, suite in data.items():
        if not isinstance(suite, dict):
            raise ConfigError(f"{SUITES_FILE}: suite '{name}' must be a mapping")
        if not isinstance(suite.get("experiments", []), list):
            raise ConfigError(f"{SUITES_FILE}: suite '{name}': 'experiments' must be a list")
        if "experiments" not in suite and "include" not in suite:
            raise ConfigError(f"{SUITES_FILE}: suite '{name}' needs an 'experiments' list or an 'include' list")
        for other in suite.get("include", []):
            if other not in data:
                raise ConfigError(f"{SUITES_FILE}: suite '{name}' includes unknown suite '{other}'")
        for i, item in enumerate(suite.get("comparisons", [])):
            if not isinstance(item, dict) or set(item) != {"candidate", "baseline"} or not all(isinstance(v, str) for v in item.values()):
                raise ConfigError(f"{SUITES_FILE}: suite '{name}': comparisons[{i}] must be {{candidate: EXPERIMENT, baseline: EXPERIMENT}}, got {item!r}")
    return data


def suite_comparisons(suite: str, suites: dict[str, dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """The comparisons `suite` and the suites it includes declare (each once)."""
    suites = load_suites() if suites is None else suites
    if suite not in suites:
        return []
    found: list[dict[str, str]] = []
    for name in suite_members(suite, suites):
        for item in suites[name].get("comparisons", []):
            if item not in found:
                found.append(dict(item))
    return found


def figure_groups(suite: str, suites: dict[str, dict[str, Any]] | None = None) -> list[list[str]] | None:
    """The experiment groups a suite's figures are split by: the connected groups of its
    declared comparisons when there are several (e.g. one per D2NN design), else None. An
    experiment in no comparison joins the group of the experiments that start from it (a
    trained confidence cascade, with its calibrated operating points)."""
    from benchmarks.figures import comparison_groups
    from benchmarks.protocol import parent_references

    suites = load_suites() if suites is None else suites
    groups = comparison_groups(suite_comparisons(suite, suites))
    if len(groups) <= 1:
        return None
    prefix = "experiment:"
    for name, quick in suite_experiments(suite, suites):
        cfg = load_config(find_config(name), quick=quick)
        for parent in parent_references(cfg):
            parent_name = parent[len(prefix):].rsplit("/", 1)[-1] if parent.startswith(prefix) else None
            home = next((g for g in groups if cfg["name"] in g), None)
            if parent_name and home is not None and not any(parent_name in g for g in groups):
                home.append(parent_name)
    return groups


def run_job(cfg: dict[str, Any], seed: int, runs_root: Path, data_root: Any, device: str | None, log=None) -> tuple[Path, bool]:
    """Train (or reuse) and evaluate one run; (its folder, whether it was trained here)."""
    from benchmarks.engine import Trainer
    from benchmarks.evaluation import finalize_run

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run = RunFolder.for_config(single_seed_config(cfg, seed), runs_root, device)
    if run.is_complete():
        return run.path, False
    trainer = Trainer(cfg, seed, runs_root=runs_root, data_root=data_root, device=device, log=log)
    trainer.preflight()  # bad input fails before this run's folder exists
    with trainer.exclusive():  # a second process waits here, then reuses what the first made
        problem = run.completion_problem()
        if problem is None:
            return run.path, False
        if problem != "not finished":
            log(f"{run.path.name}: {problem}; resuming and evaluating it again")
        trainer.fit()
        finalize_run(run, data_root)
    return run.path, True


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Pool initializer: end this worker when the `reproduce` process that started it is gone
    (killed, say), instead of running on with the queued runs. A run it leaves half done is
    resumed by the next `reproduce`, like any interrupted run."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _job_in_process(cfg: dict[str, Any], seed: int, runs_root: Path, data_root: Any, device: str | None, threads: int) -> tuple[Path, bool]:
    import torch

    torch.set_num_threads(threads)
    return run_job(cfg, seed, runs_root, data_root, device, log=lambda msg: print(msg, file=sys.stderr, flush=True))


def _parents(cfg: dict[str, Any]) -> set[Path]:
    """Config files of the experiments a run starts from (`experiment:` references)."""
    from benchmarks.protocol import parent_references

    prefix = "experiment:"
    return {find_config(v[len(prefix):]).resolve() for v in parent_references(cfg) if v.startswith(prefix)}


def _run_parallel(suite: str, work: list[tuple[dict[str, Any], int]], runs_root: Path, data_root: Any,
                  device: str | None, jobs: int, log, launcher: str = "local", threads: int | None = None,
                  cluster: dict[str, Any] | None = None) -> list[tuple[Path, bool]]:  # fmt: skip
    """Run `work` in `jobs` processes, in waves: a run whose parent experiment has runs in the
    suite waits for them. CPU threads are split between the processes (and recorded in each
    run's identity, as always)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)  # the run folders are named with the workers' thread count
    level: dict[int, int] = {}
    sources = [Path(cfg.get("source", "")).resolve() for cfg, _ in work]
    parents = [_parents(cfg) for cfg, _ in work]

    def depth(i: int, seen: tuple[int, ...] = ()) -> int:
        if i not in level:
            mine = [j for j in range(len(work)) if sources[j] in parents[i] and j != i and j not in seen]
            level[i] = 1 + max((depth(j, (*seen, i)) for j in mine), default=-1)
        return level[i]

    for i in range(len(work)):
        depth(i)
    outcomes: dict[int, tuple[Path, bool]] = {}
    executor = _cluster_executor(launcher, runs_root, jobs, threads, cluster or {}) if launcher != "local" else None
    where = f"{jobs} processes" if executor is None else f"a {launcher} job array (at most {jobs} at once)"
    context = multiprocessing.get_context("spawn")
    pool_context = (ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_exit_with_parent,
                                        initargs=(os.getpid(),)) if executor is None else contextlib.nullcontext())  # fmt: skip
    with pool_context as pool:
        for wave in sorted(set(level.values())):
            batch = [i for i in range(len(work)) if level[i] == wave]
            log(f"[{suite}] {len(batch)} run(s) in {where} ({threads} thread(s) each)"
                + (f", once the {sum(level[i] < wave for i in level)} run(s) before them are done" if wave else ""))  # fmt: skip
            args = [(work[i][0], work[i][1], runs_root, data_root, device, threads) for i in batch]
            if executor is None:
                pending = [pool.submit(_job_in_process, *a) for a in args]
            else:
                pending = executor.map_array(_job_in_process, *zip(*args, strict=True))
            for i, job in zip(batch, pending, strict=True):
                outcomes[i] = job.result()
                log(f"[{suite}] {'trained' if outcomes[i][1] else 'reused'} {outcomes[i][0].name}")
    return [outcomes[i] for i in range(len(work))]


LAUNCHERS = ("local", "slurm", "submitit-local")


def _require_submitit(launcher: str) -> None:
    """Fail before anything is written when a cluster launcher lacks submitit."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--launcher {launcher} needs submitit, which is not installed: pip install submitit "
            "(or pip install 'dynbench[cluster]')"
        ) from None


def _cluster_executor(launcher: str, runs_root: Path, jobs: int, threads: int, cluster: dict[str, Any]) -> Any:
    """A submitit executor: SLURM (`slurm`), or submitit's local executor (`submitit-local`, the
    same code path on this machine, for trying a suite before a cluster). Job files and logs go
    to `<runs>/../submitit/`, which SLURM jobs need on a shared filesystem."""
    _require_submitit(launcher)
    import submitit

    executor = submitit.AutoExecutor(folder=runs_root.parent / "submitit" / "%j", cluster="slurm" if launcher == "slurm" else "local")
    parameters: dict[str, Any] = {"name": "dynbench", "timeout_min": int(cluster.get("timeout_min", 240)),
                                  "cpus_per_task": threads, "slurm_array_parallelism": jobs}  # fmt: skip
    if cluster.get("partition"):
        parameters["slurm_partition"] = cluster["partition"]
    executor.update_parameters(**parameters)
    return executor


def tracked_outputs(out: Path, suite: str) -> list[str]:
    """The files `reproduce` would write for `suite` under `out` (its tables and figures) that
    git tracks: the reference results of a checkout. Empty outside a git work tree."""
    import subprocess

    anchor = out.resolve()
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    specs = [str(out.resolve() / "tables" / f"{suite}.*"), str(out.resolve() / "tables" / f"{suite}_*"),
             str(out.resolve() / "figures" / f"{suite}_*")]  # fmt: skip
    try:
        found = subprocess.run(["git", "-C", str(anchor), "ls-files", "--full-name", "--", *specs],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return found.stdout.split() if found.returncode == 0 else []


def suite_members(suite: str, suites: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """`suite` and, recursively, the suites it includes (each once, in order)."""
    suites = load_suites() if suites is None else suites
    if suite not in suites:
        raise UnknownNameError("suite", suite, suites)
    members: list[str] = []

    def visit(name: str) -> None:
        if name in members:
            return
        members.append(name)
        for other in suites[name].get("include", []):
            visit(other)

    visit(suite)
    return members


def suite_experiments(suite: str, suites: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, bool]]:
    """(experiment config, quick) pairs of `suite`, included suites' first-seen order, no repeats."""
    suites = load_suites() if suites is None else suites
    seen: list[tuple[str, bool]] = []
    for name in suite_members(suite, suites):
        quick = bool(suites[name].get("quick", False))
        for experiment in suites[name].get("experiments", []):
            if (experiment, quick) not in seen:
                seen.append((experiment, quick))
    return seen


@dataclass
class SuiteReport:
    suite: str
    rows_file: Path
    tables: list[Path]
    runs: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    drifted: int = 0
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
    update_reference: bool = False,
    confirm_above: int | None = CONFIRM_POINTS,
    jobs: int = 1,
    launcher: str = "local",
    threads: int | None = None,
    cluster: dict[str, Any] | None = None,
    latency: bool = True,
) -> SuiteReport:
    """Train (or reuse), evaluate and tabulate every run of `suite` (sweeps expanded). With
    `jobs` > 1 the runs go to that many local processes (CPU threads split between them),
    a run starting only once the runs it starts from (`experiment:` references) are done."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if launcher not in LAUNCHERS:
        raise UnknownNameError("launcher", launcher, LAUNCHERS)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if launcher != "local":
        _require_submitit(launcher)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    suites = load_suites()
    if suite not in suites:
        raise UnknownNameError("suite", suite, suites)
    experiments = suite_experiments(suite, suites)
    # Validate every config before any folder is made: a typo fails fast, with nothing written.
    configs = [
        point
        for name, suite_quick in experiments
        for point in expand(load_config(find_config(name), quick=suite_quick if quick is None else quick), confirm_above)
    ]
    tracked = tracked_outputs(Path(out), suite)
    if tracked and not update_reference:
        shown = ", ".join(tracked[:3]) + (", ..." if len(tracked) > 3 else "")
        raise ConfigError(
            f"reproducing '{suite}' into '{out}' would overwrite {len(tracked)} reference file(s) "
            f"tracked in this checkout ({shown}); write elsewhere with --out DIR, or pass "
            "--update-reference to regenerate the reference on purpose"
        )
    out = ensure_dir(out)
    runs_root = ensure_dir(out / "runs")
    tables_dir = ensure_dir(out / "tables")
    started = time.perf_counter()
    report = SuiteReport(suite, tables_dir / f"{suite}.csv", [])
    work = [(cfg, seed) for cfg in configs for seed in (list(range(seeds)) if seeds else cfg["seeds"])]
    if jobs > 1 or launcher != "local":
        outcomes = _run_parallel(suite, work, runs_root, data_root, device, jobs, log, launcher, threads, cluster)
    else:
        outcomes = []
        for number, (cfg, seed) in enumerate(work, start=1):
            elapsed = time.perf_counter() - started
            eta = f", about {elapsed / (number - 1) * (len(work) - number + 1):.0f}s left" if number > 1 else ""
            log(f"[{suite} {number}/{len(work)}{eta}] {cfg['name']} seed {seed}")
            outcomes.append(run_job(cfg, seed, runs_root, data_root, device, log))
    for path, trained in outcomes:
        report.runs.append(path)
        report.trained += trained
        report.reused += not trained
    frame = collect_results(run / "results.csv" for run in report.runs)
    latency_file = tables_dir / f"{suite}_latency.csv"
    if latency:
        from benchmarks.io import atomic_write_text
        from benchmarks.suite_latency import measure_runs

        timed = measure_runs(report.runs, data_root, log)
        atomic_write_text(latency_file, timed.to_csv(index=False, float_format="%.6g"))
    else:
        latency_file.unlink(missing_ok=True)  # a table never shows latencies of other weights
    write_results(frame, report.rows_file)
    # Seed means, the comparison with published numbers (architecture counts need no
    # training) and the trade-off figures.
    from benchmarks.figures import make_figures
    from benchmarks.tables import build_tables

    log(f"[{suite}] tables: comparing with published numbers")
    tables = build_tables(suite, tables_dir, rows=frame, runs_root=runs_root)
    report.tables = [report.rows_file, *tables.files]
    report.drifted = len(tables.failures)
    report.figures = make_figures(suite, frame, out / "figures", published=tables.published, log=log,
                                  groups=figure_groups(suite, suites))  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report
