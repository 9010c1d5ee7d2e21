"""Training checks: what short training runs must still do (tier 2 of DESIGN §7).

Training turns the last-bit differences between CPU kernels into different models, so its
outcome cannot be pinned exactly. Each check instead runs a CI-sized experiment (or two) and
reduces it to one number, which must lie in a band, plus invariants that must always hold:

* `digits_cnn`: test accuracy of the small CNN after 4 epochs; the training loss falls.
* `lcnet_rho`: LC-Net's executed MACs as a fraction of its backbone's, after fine-tuning at
  the cost target rho = 0.5; the gate heads' MACs are counted.
* `d2nn_lambda`: the D2NN cascade's mean MACs at lambda = 0.1 divided by those at 0.9 (the
  reward weighs accuracy by lambda and efficiency by 1 - lambda, so cost falls with lambda).

A band is measured, not guessed: `python -m benchmarks.goldens measure` runs every check under
every kernel setting of the portability matrix and several seeds, and writes the spread and the
band `mean ± BAND_MULTIPLE · std` (at least `mean ± MIN_HALF_WIDTH`) into
`results/expected/training.json` with every measured value.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.goldens.report import Mismatch

SCHEMA = 1
KIND = "dynbench-training-checks"
BAND_MULTIPLE = 4.0  # band half-width, in standard deviations of the measured spread
MIN_HALF_WIDTH = 0.01  # of the value's unit: a spread of zero still leaves room for one more flip


@dataclass(frozen=True)
class Run:
    config: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingCheck:
    name: str
    what: str
    runs: tuple[Run, ...]
    value: Callable[[list[dict[str, Any]]], float]
    invariants: Callable[[list[dict[str, Any]]], list[str]]


def _test(result: dict[str, Any], key: str) -> float:
    return float(result["splits"]["test"][key])


def _loss_falls(result: dict[str, Any]) -> list[str]:
    losses = result["train_loss"]
    if len(losses) >= 2 and not losses[-1] < losses[0]:
        return [f"training loss did not fall ({losses[0]:.4f} -> {losses[-1]:.4f})"]
    return []


def _controllers_counted(result: dict[str, Any]) -> list[str]:
    ctrl = _test(result, "macs_controller_mean")
    return [] if ctrl > 0 else ["controller MACs are 0 for a model that routes"]


def _cost_falls(results: list[dict[str, Any]]) -> list[str]:
    low, high = (_test(r, "macs_mean") for r in results)
    return [] if low <= high else [f"cost rose as lambda fell: {high:,.0f} MACs at 0.9 -> {low:,.0f} at 0.1"]


_D2NN_STAGES = "stages=[{name: pretrain, epochs: 2}, {name: joint, epochs: 3, optimizer: {name: adam, lr: 0.002}}]"

CHECKS: tuple[TrainingCheck, ...] = (
    TrainingCheck(
        "digits_cnn", "test accuracy (%) of the small CNN on digits after 4 epochs",
        (Run("quick/digits_cnn", ("train.epochs=4",)),),
        value=lambda rs: _test(rs[0], "accuracy"),
        invariants=lambda rs: _loss_falls(rs[0]),
    ),
    TrainingCheck(
        "lcnet_rho", "LC-Net executed MACs / backbone MACs on digits test, trained at rho 0.5",
        (Run("lcnet/digits_resnet20_lc"),),
        value=lambda rs: _test(rs[0], "macs_mean") / rs[0]["macs_full"],
        invariants=lambda rs: _controllers_counted(rs[0]),
    ),
    TrainingCheck(
        "d2nn_lambda", "D2NN cascade mean MACs at lambda 0.1 / at lambda 0.9 (digits test)",
        tuple(Run("d2nn/digits_d2nn_cascade", (f"method_args.lam={lam}", _D2NN_STAGES))
              for lam in (0.1, 0.9)),  # fmt: skip
        value=lambda rs: _test(rs[0], "macs_mean") / _test(rs[1], "macs_mean"),
        invariants=_cost_falls,
    ),
)


def get_check(name: str) -> TrainingCheck:
    from benchmarks.errors import UnknownNameError

    for check in CHECKS:
        if check.name == name:
            return check
    raise UnknownNameError("training check", name, [c.name for c in CHECKS])


def train_and_evaluate(run: Run, seed: int, workdir: str | os.PathLike) -> dict[str, Any]:
    """One CI-sized run through the engine: val/test metrics, MACs, the training-loss curve."""
    import csv

    from benchmarks.config import find_config, load_config
    from benchmarks.data import dataset_info
    from benchmarks.engine import Trainer, load_selected_model
    from benchmarks.evaluation import finalize_run

    cfg = load_config(find_config(run.config), quick=True, overrides=run.overrides)
    cfg.pop("sweep", None)  # a check trains the experiment's own point, not its sweep
    trainer = Trainer(cfg, seed, runs_root=workdir, device="cpu", progress=False, log=lambda msg: None)
    trainer.fit()
    folder = trainer.run
    rows = finalize_run(folder)
    with open(folder.metrics_log, encoding="utf-8", newline="") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss") not in (None, "")]
    model = load_selected_model(folder)
    info = dataset_info(cfg["dataset"]["name"], cfg["dataset"].get("options") or None)
    full = model.full_macs(tuple(info.input_shape[1:])) if hasattr(model, "full_macs") else None
    return {
        "splits": {r["split"]: r for r in rows},
        "train_loss": losses,
        "macs_full": float(full) if full else None,
    }


def run_check(check: TrainingCheck, seed: int = 0) -> tuple[float, list[str]]:
    """(value, broken invariants) of one check, trained in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"dynbench-check-{check.name}-") as workdir:
        results = [train_and_evaluate(run, seed, workdir) for run in check.runs]
    value = float(check.value(results))
    return value, check.invariants(results)


# --------------------------------------------------------------------------------------------
# Bands


def band(values: Sequence[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = max(BAND_MULTIPLE * std, MIN_HALF_WIDTH * max(1.0, abs(mean)))
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "low": mean - half, "high": mean + half}


def document(measured: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The training-checks golden from measured values {check: [{setting, seed, value, broken}]}."""
    checks = {}
    for check in CHECKS:
        rows = measured.get(check.name, [])
        if not rows:
            continue
        values = [r["value"] for r in rows]
        checks[check.name] = {
            "what": check.what,
            "runs": [{"config": r.config, "overrides": list(r.overrides)} for r in check.runs],
            "band": band(values),
            "broken_invariants": sorted({b for r in rows for b in r.get("broken", [])}),
            "measured": rows,
        }
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "rule": f"band = mean ± max({BAND_MULTIPLE:g}·std, {MIN_HALF_WIDTH:g}·max(1, |mean|)) over every kernel setting × seed measured",
        "checks": checks,
    }


def read(path: str | os.PathLike) -> dict[str, Any]:
    from benchmarks.goldens.report import read_golden_file

    doc = read_golden_file(path, KIND, SCHEMA, "dynbench training-checks golden", "measure it with `python -m benchmarks.goldens measure`")
    return doc


def verify(doc: dict[str, Any], names: Sequence[str] | None = None, seed: int = 0,
           log: Callable[[str], None] | None = None) -> dict[str, list[Mismatch]]:  # fmt: skip
    """Run each pinned check once; a value outside its band or a broken invariant is a mismatch."""
    out = {}
    for name, pinned in doc["checks"].items():
        if names and name not in names:
            continue
        value, broken = run_check(get_check(name), seed)
        b = pinned["band"]
        moved = [Mismatch(name, "invariant", "holds", text, "always") for text in broken]
        if not (b["low"] <= value <= b["high"]) or math.isnan(value):
            moved.append(Mismatch(name, "value", f"{b['low']:.4g}..{b['high']:.4g}", value,
                                  f"band: mean {b['mean']:.4g} ± {BAND_MULTIPLE:g} std ({b['std']:.3g})"))  # fmt: skip
        out[name] = moved
        if log:
            log(f"{name}: {value:.4f} in [{b['low']:.4f}, {b['high']:.4f}]" + (f", {len(moved)} problem(s)" if moved else ""))
    return out
