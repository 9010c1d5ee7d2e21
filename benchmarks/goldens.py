"""CI goldens (DESIGN §7): deterministic CPU numbers that must not drift.

`results/expected/quick.json` pins, for every experiment of the `quick` suite (seed 0, one
CPU thread, deterministic algorithms), the val/test accuracy, the per-sample MAC aggregates,
the parameter count and the routing summary (executed-unit histogram and per-unit execution
rates on test); and, for every registered static or pruned architecture, its exact MACs and
params at its first dataset's resolution. `tests/test_goldens.py` recomputes them and fails
with a readable diff (experiment, metric, expected vs got) when any implementation moves one.

    python -m benchmarks.goldens check                      # compare a fresh run (exit 1 on drift)
    python -m benchmarks.goldens update                     # regenerate, deliberately
    python -m benchmarks.goldens update --only digits_cnn   # just one experiment
    python -m benchmarks.goldens update --set digits_cnn:train.epochs=4   # a CI-sized override

What "must not drift" means (`TOLERANCES`): MACs and params are exact (for a dynamic model
whose cost depends on the input, its mean/percentile MACs follow its learned routing and may
move by 0.5% relative); accuracy may move by 0.5 points (one of digits' 360 test images:
floating-point summation order differs between CPU kernels); unit execution rates by 0.01.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.errors import ConfigError, DynbenchError
from benchmarks.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_DIR = REPO_ROOT / "results" / "expected"
SCHEMA = 1
SEED = 0

TOLERANCES: dict[str, float] = {
    "accuracy": 0.5,  # absolute, points
    "dynamic_macs": 0.005,  # relative, input-dependent MAC aggregates only
    "unit_rates": 0.01,  # absolute, fraction of samples
}
SPLIT_METRICS = (
    "accuracy", "macs_mean", "macs_std", "macs_p50", "macs_p90", "macs_p99", "macs_min",
    "macs_max", "macs_theoretical_mean", "macs_controller_mean",
)  # fmt: skip
UPDATE_HINT = "python -m benchmarks.goldens update"


def golden_file(suite: str = "quick") -> Path:
    return EXPECTED_DIR / f"{suite}.json"


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Pin torch's intra-op threads (summation order depends on it); restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _round(value: Any, digits: int = 6) -> Any:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() else round(value, digits)


def resolve_golden_config(config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The quick-size config of `config` with `overrides` applied on top of its quick part."""
    from benchmarks.config import apply_overrides, find_config, load_config, resolve_config

    cfg = load_config(find_config(config), quick=True)
    if overrides:
        source = cfg.pop("source")
        cfg = resolve_config(apply_overrides(cfg, overrides), where=f"{source} (golden overrides)")
        cfg["source"] = source
    return cfg


def run_experiment(
    config: str,
    workdir: str | Path,
    overrides: Sequence[str] = (),
    threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one quick experiment on the CPU; return its golden record."""
    from benchmarks.config import config_hash
    from benchmarks.cost import measure_cost
    from benchmarks.data import load_split
    from benchmarks.engine import Trainer, load_selected_model
    from benchmarks.evaluation import finalize_run
    from benchmarks.registry import get_model_spec
    from benchmarks.runs import RunFolder, single_seed_config

    cfg = resolve_golden_config(config, overrides)
    run_cfg = single_seed_config(cfg, SEED)
    quiet = log or (lambda msg: None)
    with cpu_threads(threads):
        Trainer(cfg, SEED, runs_root=workdir, device="cpu", progress=False, log=quiet).fit()
        run = RunFolder.for_config(run_cfg, workdir)
        rows = finalize_run(run)
        model = load_selected_model(run)
        test = load_split(cfg["dataset"]["name"], "test")
        cost = measure_cost(model, test, batch_size=cfg["train"]["eval_batch_size"])
    spec = get_model_spec(cfg["model"]["name"])
    splits = {row["split"]: {m: _round(row.get(m)) for m in SPLIT_METRICS} for row in rows}
    return {
        "config": config,
        "overrides": list(overrides),
        "seed": SEED,
        "config_hash": config_hash(run_cfg),
        "model": spec.name,
        "kind": spec.kind,
        "method": cfg["method"],
        "params": int(rows[0]["params"]),
        "selected_epoch": rows[0]["selected_epoch"],
        "splits": splits,
        "routing": {
            "units_histogram": {str(k): int(v) for k, v in sorted(cost.summary["units_histogram"].items())},
            "unit_rates": {k: _round(v) for k, v in sorted(cost.summary["unit_rates"].items())},
        },
    }


def architecture_counts(models: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Exact MACs and params of registered static/pruned models at their first dataset."""
    from benchmarks.registry import get_model_spec, is_model, list_models
    from benchmarks.tables import count_architecture

    out = {}
    names = list(models) if models is not None else list_models()
    for name in names:
        if not is_model(name):  # compare() reports a pinned model that disappeared
            continue
        spec = get_model_spec(name)
        if spec.kind == "dynamic" or not spec.datasets:
            continue
        dataset = spec.datasets[0]
        with cpu_threads(1):
            macs, params = count_architecture(name, dataset)
        out[f"{name}@{dataset}"] = {"kind": spec.kind, "macs": int(macs), "params": int(params)}
    return out


def _environment() -> dict[str, str]:
    import platform

    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


def generate(
    suite: str = "quick",
    *,
    only: Sequence[str] | None = None,
    overrides: dict[str, list[str]] | None = None,
    previous: dict[str, Any] | None = None,
    architectures: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A fresh golden document for `suite`. Experiments not in `only` are copied from
    `previous`; each experiment keeps its previous overrides unless `overrides` names it."""
    from benchmarks.suites import suite_experiments

    experiments = [name for name, _ in suite_experiments(suite)]
    previous = previous or {}
    old = previous.get("experiments", {})
    overrides = overrides or {}
    unknown = sorted((set(only or ()) | set(overrides)) - {_short(e) for e in experiments})
    if unknown:
        raise ConfigError(f"not an experiment of suite '{suite}': {', '.join(unknown)} "
                          f"(it has: {', '.join(_short(e) for e in experiments)})")  # fmt: skip
    records = {}
    with tempfile.TemporaryDirectory(prefix="dynbench-goldens-") as workdir:
        for config in experiments:
            name = _short(config)
            if only and name not in only and name in old:
                records[name] = old[name]
                continue
            chosen = overrides.get(name, old.get(name, {}).get("overrides", []))
            log(f"goldens: running {config}" + (f" with {' '.join(chosen)}" if chosen else ""))
            records[name] = run_experiment(config, workdir, chosen)
    doc = {
        "schema": SCHEMA,
        "suite": suite,
        "description": "CI goldens: see benchmarks/goldens.py. Regenerate only deliberately: " + UPDATE_HINT,
        "tolerances": TOLERANCES,
        "environment": _environment(),
        "experiments": records,
    }
    if architectures:
        log("goldens: counting registered static and pruned architectures")
        doc["architectures"] = architecture_counts()
    elif "architectures" in previous:
        doc["architectures"] = previous["architectures"]
    return doc


def _short(config: str) -> str:
    return config.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True)
class Mismatch:
    item: str  # experiment name, or "arch <model>@<dataset>"
    metric: str
    expected: Any
    got: Any
    allowed: str

    def line(self) -> str:
        return f"  {self.item:<28} {self.metric:<26} expected {_show(self.expected):>16}  got {_show(self.got):>16}  ({self.allowed})"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _differs(expected: Any, got: Any, tolerance: float, relative: bool) -> bool:
    if expected is None or got is None:
        return expected is not got
    allowed = tolerance * abs(expected) if relative else tolerance
    return abs(float(got) - float(expected)) > allowed + 1e-9 * max(1.0, abs(float(expected)))


def compare_experiment(name: str, expected: dict[str, Any], got: dict[str, Any], tolerances: dict[str, float]) -> list[Mismatch]:
    out = []
    for key in ("config_hash", "model", "params"):
        if expected.get(key) != got.get(key):
            hint = "the experiment's config changed" if key == "config_hash" else "exact"
            out.append(Mismatch(name, key, expected.get(key), got.get(key), hint))
    for split, metrics in expected.get("splits", {}).items():
        fresh = got.get("splits", {}).get(split, {})
        dynamic_cost = (metrics.get("macs_std") or 0) > 0
        for metric, value in metrics.items():
            if metric == "accuracy":
                tol, rel, text = tolerances["accuracy"], False, f"±{tolerances['accuracy']} pt"
            elif dynamic_cost and metric not in ("macs_theoretical_mean",):
                tol, rel, text = tolerances["dynamic_macs"], True, f"±{100 * tolerances['dynamic_macs']:g}% (input-dependent cost)"
            else:
                tol, rel, text = 0.0, False, "exact"
            if _differs(value, fresh.get(metric), tol, rel):
                out.append(Mismatch(name, f"{split}.{metric}", value, fresh.get(metric), text))
    rates = expected.get("routing", {}).get("unit_rates", {})
    fresh_rates = got.get("routing", {}).get("unit_rates", {})
    for unit in sorted(set(rates) | set(fresh_rates)):
        if _differs(rates.get(unit), fresh_rates.get(unit), tolerances["unit_rates"], False):
            out.append(Mismatch(name, f"routing.{unit}", rates.get(unit), fresh_rates.get(unit), f"±{tolerances['unit_rates']}"))
    return out


def compare(expected: dict[str, Any], got: dict[str, Any]) -> tuple[list[Mismatch], list[str]]:
    """(mismatches, notes). Missing experiments and removed architectures are mismatches;
    architectures registered since the goldens were made are notes (pin them with update)."""
    tolerances = {**TOLERANCES, **expected.get("tolerances", {})}
    mismatches, notes = [], []
    exp_runs, got_runs = expected.get("experiments", {}), got.get("experiments", {})
    for name in sorted(set(exp_runs) | set(got_runs)):
        if name not in got_runs:
            mismatches.append(Mismatch(name, "experiment", "pinned", "not run", "no longer in the suite?"))
        elif name not in exp_runs:
            mismatches.append(Mismatch(name, "experiment", "not pinned", "in the suite", f"pin it: {UPDATE_HINT} --only {name}"))
        else:
            mismatches += compare_experiment(name, exp_runs[name], got_runs[name], tolerances)
    if "architectures" in got:
        exp_arch, got_arch = expected.get("architectures", {}), got["architectures"]
        for key in sorted(set(exp_arch) | set(got_arch)):
            if key not in got_arch:
                mismatches.append(Mismatch(f"arch {key}", "registered", "yes", "no", "model removed or renamed?"))
            elif key not in exp_arch:
                notes.append(f"architecture {key} is not pinned yet ({UPDATE_HINT})")
            else:
                for metric in ("macs", "params"):
                    if exp_arch[key][metric] != got_arch[key][metric]:
                        mismatches.append(Mismatch(f"arch {key}", metric, exp_arch[key][metric], got_arch[key][metric], "exact"))
    return mismatches, notes


def format_mismatches(mismatches: Sequence[Mismatch], path: Path | str, expected: dict[str, Any] | None = None) -> str:
    lines = [f"{len(mismatches)} golden number(s) moved (expected: {path}):"]
    lines += [m.line() for m in mismatches]
    if expected and expected.get("environment") and expected["environment"] != _environment():
        lines.append(f"note: the goldens were made with {expected['environment']}; this run: {_environment()}")
    lines.append(f"If the change is deliberate, regenerate them with `{UPDATE_HINT}` and commit the diff.")
    return "\n".join(lines)


def load_expected(path: str | Path) -> dict[str, Any]:
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"goldens file '{path}' does not exist; create it with `{UPDATE_HINT}`") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"goldens file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f"goldens file '{path}': expected schema {SCHEMA}, got {data.get('schema') if isinstance(data, dict) else data!r}")
    return data


# --------------------------------------------------------------------------------------------
# Command line


def _parse_sets(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError(f"--set '{item}': expected EXPERIMENT:KEY=VALUE, e.g. digits_cnn:train.epochs=4")
        out.setdefault(name, []).append(override)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.goldens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("check", "compare a fresh run with the goldens (exit 1 on drift)"),
                          ("update", "regenerate the goldens (review and commit the diff)")):  # fmt: skip
        p = sub.add_parser(command, help=text)
        p.add_argument("--suite", default="quick")
        p.add_argument("--only", action="append", default=None, help="experiment name (repeatable)")
        p.add_argument("--no-architectures", action="store_true", help="skip the architecture counts")
        if command == "update":
            p.add_argument("--set", action="append", default=[], metavar="EXP:KEY=VALUE",
                           help="config override kept with the experiment's golden (e.g. a shorter run)")  # fmt: skip
    args = parser.parse_args(argv)
    path = golden_file(args.suite)
    try:
        if args.command == "update":
            previous = load_expected(path) if path.is_file() else {}
            doc = generate(args.suite, only=args.only, overrides=_parse_sets(args.set), previous=previous,
                           architectures=not args.no_architectures)  # fmt: skip
            atomic_write_json(path, doc)
            print(f"wrote {path}: {len(doc['experiments'])} experiment(s), {len(doc.get('architectures', {}))} architecture(s)")
            return 0
        expected = load_expected(path)
        # with --only, the other experiments are copied from the goldens (and so match)
        got = generate(args.suite, only=args.only, previous=expected, architectures=not args.no_architectures)
        mismatches, notes = compare(expected, got)
        for note in notes:
            print(f"note: {note}")
        if mismatches:
            print(format_mismatches(mismatches, path, expected), file=sys.stderr)
            return 1
        print(f"goldens match: {len(got['experiments'])} experiment(s), {len(got.get('architectures', {}))} architecture(s)")
        return 0
    except DynbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
