"""The D2NN experiment driver: λ sweeps beside static baselines, tables, figure, latency.

    python -m reference_impls.d2nn.sweep benchmarks/configs/d2nn/fmnist_*.yaml \\
        --name fashion-mnist --latency

A *panel* is one D2NN design config. Its `method_args.sweep` maps dotted config keys to value
lists (`{method_args.lam: [0.5, 0.7, ...]}`; several keys give their product); every point is
one run. Its `method_args.baselines` names the configs of the design's static baselines, which
may sweep too (e.g. `model.kwargs.stages: [1, 2, 3, 4]`). A baseline of model
`d2nn_cascade_confidence` is trained once (all exits) and then gets thresholds tuned on `val`
(`reference_impls.d2nn.confidence`), one final model per operating point.

Every run trains through the engine (`Trainer`, same content-addressed run folders; finished
runs are reused) and is evaluated once on `val` and `test` by the harness
(`benchmarks.evaluation.finalize_run`); `dataset.options` (binary task, training subset) are
applied by the data layer for both. The driver pins torch to `--threads` threads (1 by
default: on a shared CPU, more threads than free cores make small convolutions many times
slower).

Outputs in `--report` (default `results/d2nn/`): `<name>_points.csv` / `.md` (every point:
test score, mean executed MACs, MACs normalized to the design's reference path, val
score), `<name>_comparison.md` (D2NN vs each static point at equal MACs), `<name>.png` /
`.svg` (one panel per design), and with `--latency`, `<name>_latency.csv` / `.md` (the cascade
at its cheapest point vs its full static path, batch 1 and 64, realization ratio).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import deep_merge, find_config, read_yaml, resolve_config
from benchmarks.data import load_split
from benchmarks.engine import Trainer, get_method, load_selected_model
from benchmarks.engine.batches import eval_batches
from benchmarks.errors import ConfigError, DynbenchError
from benchmarks.evaluation import evaluate_split, finalize_run
from benchmarks.io import atomic_write_text, ensure_dir
from benchmarks.results import read_results
from benchmarks.runs import RunFolder, single_seed_config
from reference_impls.d2nn.confidence import tune_thresholds
from reference_impls.d2nn.graph import D2NN

POINT_COLUMNS = [
    "panel", "dataset", "design", "kind", "model", "point", "seed", "metric", "score",
    "macs_mean", "macs_controller_mean", "macs_ratio", "val_score", "val_macs_ratio",
    "reference_macs", "config_hash", "run_dir",
]


# --------------------------------------------------------------------------------------------
# Configs and sweeps
# --------------------------------------------------------------------------------------------


def _set(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: sweep key '{dotted}': '{part}' is not a section")
    node[parts[-1]] = copy.deepcopy(value)


def expand(path: str | os.PathLike, quick: bool = False) -> list[tuple[dict[str, Any], str]]:
    """The runs of one config: (resolved config, point label) per sweep point.

    The sweep is read after the `quick` override (a quick run may sweep fewer values); the
    driver keys `sweep` and `baselines` are removed from each point's config, so a point's run
    folder depends only on what it computes.
    """
    where = str(path)
    data = read_yaml(path)
    merged = deep_merge(data, data.get("quick") or {}) if quick else copy.deepcopy(data)
    merged.pop("quick", None)
    args = merged.get("method_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: key 'method_args' must be a mapping")
    sweep = args.pop("sweep", None) or {}
    args.pop("baselines", None)
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise ConfigError(
            f"{where}: key 'method_args.sweep' must map dotted config keys to non-empty lists "
            f"of values, e.g. {{method_args.lam: [0.5, 0.9]}}; got {sweep!r}"
        )
    keys = list(sweep)
    points = []
    for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        point = copy.deepcopy(merged)
        for key, value in zip(keys, values, strict=True):
            _set(point, key, value, where)
        cfg = resolve_config(point, where=where)
        cfg["quick"] = bool(quick)
        cfg["source"] = where
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values, strict=True))
        points.append((cfg, label or "default"))
    return points


def baselines_of(path: str | os.PathLike) -> list[Path]:
    """The baseline configs a panel names (`method_args.baselines`)."""
    data = read_yaml(path)
    names = (data.get("method_args") or {}).get("baselines") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: key 'method_args.baselines' must be a list of config names")
    return [find_config(n) for n in names]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_point(
    cfg: dict[str, Any],
    seed: int,
    runs_root: Path,
    data_root: str | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> RunFolder:
    """Train (or reuse) one run and have the harness evaluate it on val and test."""
    run = RunFolder.for_config(single_seed_config(cfg, seed), runs_root, device)
    if run.is_complete():
        return run
    Trainer(cfg, seed, runs_root=runs_root, data_root=data_root, device=device, progress=False, log=log).fit()
    finalize_run(run, data_root)
    return run


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


def _split_rows(run: RunFolder) -> dict[str, dict[str, Any]]:
    frame = read_results(run.results_file)
    return {row["split"]: row for row in frame.to_dict("records")}


def _score(row: dict[str, Any], metric: str) -> float:
    return float(row["f1" if metric == "f1" else "accuracy"])


def _point(
    run: RunFolder, cfg: dict[str, Any], panel: str, design: str, kind: str, label: str,
    metric: str, reference: int,
) -> dict[str, Any]:
    rows = _split_rows(run)
    test, val = rows["test"], rows["val"]
    return {
        "panel": panel,
        "dataset": cfg["dataset"]["name"],
        "design": design,
        "kind": kind,
        "model": cfg["model"]["name"],
        "point": label,
        "seed": cfg["seed"] if "seed" in cfg else int(test["seed"]),
        "metric": metric,
        "score": _score(test, metric),
        "macs_mean": float(test["macs_mean"]),
        "macs_controller_mean": float(test["macs_controller_mean"]),
        "macs_ratio": float(test["macs_mean"]) / reference,
        "val_score": _score(val, metric),
        "val_macs_ratio": float(val["macs_mean"]) / reference,
        "reference_macs": reference,
        "config_hash": str(test["config_hash"]),
        "run_dir": str(run.path),
    }


def _options(cfg: dict[str, Any]) -> dict[str, Any] | None:
    return cfg["dataset"].get("options") or None


def _reference_macs(run: RunFolder, cfg: dict[str, Any], data_root: str | None) -> int:
    model = load_selected_model(run)
    if not isinstance(model, D2NN):
        raise ConfigError(f"{cfg['source']}: a panel's own model must be a D2NN (got '{cfg['model']['name']}')")
    sample = load_split(cfg["dataset"]["name"], "test", data_root, options=_options(cfg))[0][0][None]
    return model.reference_macs(sample)


def _confidence_points(
    run: RunFolder, cfg: dict[str, Any], panel: str, design: str, metric: str, reference: int,
    data_root: str | None, points: int,
) -> list[dict[str, Any]]:
    """Tune the confidence cascade's thresholds on val; evaluate each chosen model on test once."""
    from benchmarks.cost import measure_split_costs
    from benchmarks.registry import create_model

    method = get_method(cfg["method"])(cfg)
    trained = load_selected_model(run)
    batch = cfg["train"]["eval_batch_size"]
    dataset = cfg["dataset"]["name"]
    val = load_split(dataset, "val", data_root, options=_options(cfg))
    chosen = tune_thresholds(trained, eval_batches(val, batch), metric, points=points)
    test = load_split(dataset, "test", data_root, options=_options(cfg))
    rows = []
    for op in chosen:
        kwargs = dict(trained.arch_config["kwargs"], thresholds=list(op.thresholds))
        model = create_model(cfg["model"]["name"], **kwargs)
        model.load_state_dict(trained.state_dict())
        metrics = evaluate_split(model, method, test, batch)
        cost = measure_split_costs(model, test, batch_size=batch, engine="sparse").as_result_columns()
        rows.append({
            "panel": panel, "dataset": dataset, "design": design, "kind": "confidence",
            "model": cfg["model"]["name"],
            "point": "t=" + "/".join("never" if t > 1 else f"{t:g}" for t in op.thresholds),
            "seed": cfg["seed"], "metric": metric,
            "score": float(metrics["f1" if metric == "f1" else "accuracy"]),
            "macs_mean": cost["macs_mean"], "macs_controller_mean": cost["macs_controller_mean"],
            "macs_ratio": cost["macs_mean"] / reference, "val_score": op.score,
            "val_macs_ratio": op.macs / reference, "reference_macs": reference,
            "config_hash": "", "run_dir": str(run.path),
        })
    return rows


def run_panel(
    path: str | os.PathLike,
    *,
    runs_root: Path,
    quick: bool = False,
    data_root: str | None = None,
    device: str = "cpu",
    confidence_points: int = 6,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate one design's sweep and its baselines; return one record per point."""
    path = Path(path)
    panel_points = expand(path, quick)
    first = panel_points[0][0]
    panel, design = first["name"], first["model"]["name"]
    metric = get_method(first["method"])(first).metric
    jobs: list[tuple[dict[str, Any], str, str]] = [(cfg, label, "d2nn") for cfg, label in panel_points]
    for baseline in baselines_of(path):
        for cfg, label in expand(baseline, quick):
            kind = "confidence" if cfg["model"]["name"] == "d2nn_cascade_confidence" else "static"
            jobs.append((cfg, label, kind))
    runs = []
    started = time.perf_counter()
    for number, (cfg, label, kind) in enumerate(jobs, start=1):
        for seed in cfg["seeds"]:
            log(f"[{panel} {number}/{len(jobs)} {time.perf_counter() - started:.0f}s] {cfg['name']} {label} seed {seed}")
            run_cfg = single_seed_config(cfg, seed)
            runs.append((train_point(cfg, seed, runs_root, data_root, device, log), run_cfg, label, kind))
    reference = _reference_macs(runs[0][0], runs[0][1], data_root)
    records = []
    for run, cfg, label, kind in runs:
        if kind == "confidence":
            records += _confidence_points(run, cfg, panel, design, metric, reference, data_root, confidence_points)
        else:
            records.append(_point(run, cfg, panel, design, kind, label, metric, reference))
    return records


# --------------------------------------------------------------------------------------------
# Tables and figure
# --------------------------------------------------------------------------------------------


def _front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper-left envelope (MACs up, score up) of (macs, score) points."""
    front: list[tuple[float, float]] = []
    for macs, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((macs, score))
    return front


def interpolate(front: Sequence[tuple[float, float]], macs: float) -> float | None:
    """Score of a front at `macs` (linear between its points; None outside its range)."""
    if not front or macs < front[0][0] - 1e-12 or macs > front[-1][0] + 1e-12:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(front):
        if x0 <= macs <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (macs - x0) / (x1 - x0)
    return front[-1][1] if abs(macs - front[-1][0]) <= 1e-12 else front[0][1]


def comparison(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each static / confidence point: the D2NN front's score at the same MACs, and the
    difference (positive: D2NN above the static point)."""
    out = []
    for panel in dict.fromkeys(r["panel"] for r in records):
        rows = [r for r in records if r["panel"] == panel]
        front = _front([(r["macs_ratio"], r["score"]) for r in rows if r["kind"] == "d2nn"])
        for r in rows:
            if r["kind"] == "d2nn":
                continue
            at = interpolate(front, r["macs_ratio"])
            out.append({
                "panel": panel, "baseline": f"{r['model']} {r['point']}", "kind": r["kind"],
                "macs_ratio": r["macs_ratio"], "baseline_score": r["score"],
                "d2nn_score_at_macs": at, "difference": None if at is None else at - r["score"],
            })
    return out


def _md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(records: Sequence[dict[str, Any]], report: Path, name: str) -> list[Path]:
    import pandas as pd

    report = ensure_dir(report)
    frame = pd.DataFrame(list(records), columns=POINT_COLUMNS)
    shown = frame.copy()
    shown["run_dir"] = shown["run_dir"].map(lambda p: Path(p).name)
    csv = atomic_write_text(report / f"{name}_points.csv", shown.to_csv(index=False, float_format="%.6g"))
    columns = ["panel", "kind", "model", "point", "metric", "score", "macs_mean", "macs_ratio", "val_score", "val_macs_ratio"]
    md_text = (
        f"# D2NN `{name}`: every operating point (test split; val for selection)\n\n"
        "score: F-score of the positive class (%) or top-1 accuracy (%); macs_mean: mean executed "
        "MACs per test sample (controllers included, sparse engine); macs_ratio: macs_mean over "
        "the MACs of the design's reference path (High NN / all stages / full width / every "
        "branch).\n\n" + _md_table(shown.to_dict("records"), columns)
    )
    md = atomic_write_text(report / f"{name}_points.md", md_text)
    rows = comparison(records)
    cmp_text = (
        f"# D2NN `{name}`: D2NN vs static points at equal MACs (test)\n\n"
        "d2nn_score_at_macs: the D2NN λ sweep's upper envelope, linearly interpolated at the "
        "baseline's normalized MACs ('–': outside the sweep's MACs range). difference > 0: the "
        "D2NN curve lies above the baseline point.\n\n"
        + _md_table(rows, ["panel", "baseline", "kind", "macs_ratio", "baseline_score", "d2nn_score_at_macs", "difference"])
    )
    cmp_md = atomic_write_text(report / f"{name}_comparison.md", cmp_text)
    return [csv, md, cmp_md]


def _draw_panel(ax: Any, panel: str, rows: Sequence[dict[str, Any]]) -> None:
    top = max(r["score"] for r in rows)
    shown = [r["score"] for r in rows if r["score"] >= 0.5 * top]
    margin = 0.08 * (top - min(shown) + 1.0)
    low, high = min(shown) - margin, top + margin

    def draw(xs: list[float], scores: list[float], style: str, color: str, **kwargs: Any) -> None:
        ax.plot(xs, [max(v, low) for v in scores], style, color=color, **kwargs)
        for x, score in zip(xs, scores, strict=True):
            if score < low:  # off the axis: pinned to the bottom edge, value printed
                ax.plot(x, low, "v", color=color, markersize=7, clip_on=False)
                ax.annotate(f"{score:.1f}", (x, low), fontsize=6, xytext=(4, 3), textcoords="offset points", color=color)

    d2nn = sorted((r for r in rows if r["kind"] == "d2nn"), key=lambda r: r["macs_ratio"])
    draw([r["macs_ratio"] for r in d2nn], [r["score"] for r in d2nn], "o-", "C0", label="D2NN (λ sweep)", zorder=3)
    for i, r in enumerate(d2nn):
        ax.annotate(r["point"].replace("lam=", "λ="), (r["macs_ratio"], max(r["score"], low)), fontsize=6,
                    xytext=(4, 4 + 7 * (i % 2)), textcoords="offset points", color="C0")
    conf = sorted((r for r in rows if r["kind"] == "confidence"), key=lambda r: r["macs_ratio"])
    if conf:
        draw([r["macs_ratio"] for r in conf], [r["score"] for r in conf], "^--", "C2", label="confidence cascade (val-tuned)")
    for i, r in enumerate(r for r in rows if r["kind"] == "static"):
        label = r["model"].replace("d2nn_", "") + ("" if r["point"] == "default" else f" {r['point']}")
        draw([r["macs_ratio"]], [r["score"]], "s", f"C{3 + i % 7}", label=f"{label} (static)", markersize=7)
    ax.set_ylim(low, high)
    ax.set_xlim(-0.03, max(1.05, max(r["macs_ratio"] for r in rows) + 0.05))
    ax.set_title(panel, fontsize=9)
    ax.set_xlabel("mean executed MACs / reference path")
    ax.set_ylabel("F-score (%)" if rows[0]["metric"] == "f1" else "accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def plot(records: Sequence[dict[str, Any]], report: Path, name: str) -> list[Path]:
    """One panel per design: the D2NN λ sweep as a line, static baselines as points, the
    confidence cascade as a dashed line. The y-axis shows the informative range; points far
    below it (a degenerate operating point, e.g. F-score 0) sit on the bottom edge as ▼ with
    their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r["panel"] for r in records))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 5.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        _draw_panel(ax, panel, [r for r in records if r["panel"] == panel])
    fig.suptitle(f"D2NN accuracy–cost trade-offs ({name}, test split; ▼ = below the axis, value printed)", fontsize=10)
    fig.tight_layout()
    report = ensure_dir(report)
    paths = []
    for ext in ("png", "svg"):
        target = report / f"{name}.{ext}"
        tmp = target.with_suffix(f".tmp.{ext}")
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, target)
        paths.append(target)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# Latency: the cascade at its cheapest point vs its full path
# --------------------------------------------------------------------------------------------


def cascade_latency(
    records: Sequence[dict[str, Any]], report: Path, name: str, data_root: str | None = None,
    batch_sizes: Sequence[int] = (1, 64), threads: int = 1, count: int = 256, config: Any = None,
) -> list[Path]:
    """Time cascade D2NN points against the static full cascade (all four stages, trained
    alone) with `benchmarks.latency.measure_realization` (interleaved rounds, MACs counted on
    the timed images), and write the realization ratios (speed-up over the static network
    divided by the MACs reduction).

    The points: the cascade's cheapest λ point (lowest val MACs) and, if that one is
    degenerate, also the cheapest whose val score is at least half the best D2NN val score.
    `count` test images are timed; `config` (a `LatencyConfig`) replaces the default one built
    from `batch_sizes` and `threads`.
    """
    from benchmarks.latency import LatencyConfig, latency_sample_set, measure_realization

    cascade = [r for r in records if r["model"] == "d2nn_cascade"]
    full = [r for r in records if r["model"] == "d2nn_cascade_static" and r["point"] in ("stages=4", "default")]
    if not cascade or not full:
        raise DynbenchError("latency needs a d2nn_cascade panel with its d2nn_cascade_static stages=4 baseline")
    by_cost = sorted(cascade, key=lambda r: (r["val_macs_ratio"], -r["val_score"]))
    best = max(r["val_score"] for r in cascade)
    chosen = [("cheapest", by_cost[0])]
    useful = next((r for r in by_cost if r["val_score"] >= 0.5 * best), None)
    if useful is not None and useful is not by_cost[0]:
        chosen.append(("cheapest with val score >= half the best", useful))
    static = load_selected_model(RunFolder(Path(full[0]["run_dir"])))
    samples = latency_sample_set(full[0]["dataset"], count=count, data_root=data_root)
    config = config or LatencyConfig(batch_sizes=tuple(batch_sizes), threads=threads)
    measured, rows = [], []
    for why, point in chosen:
        dynamic = load_selected_model(RunFolder(Path(point["run_dir"])))
        result = measure_realization(
            dynamic, static, samples, f"d2nn_cascade {point['point']}", "d2nn_cascade_static stages=4", config
        )
        measured += [m.row for m in result.static + result.dynamic]
        for r in result.rows:
            rows.append(dict(
                r, point=f"{point['point']} ({why})", score=point["score"], baseline_score=full[0]["score"],
                macs_fraction=r["macs"] / r["baseline_macs"], time_fraction=r["latency_ms"] / r["baseline_latency_ms"],
            ))
    import pandas as pd

    report = ensure_dir(report)
    csv = atomic_write_text(report / f"{name}_latency.csv", pd.DataFrame(measured).to_csv(index=False))
    env = measured[0]
    text = (
        f"# D2NN cascade latency ({name})\n\n"
        "Cascade D2NN points against the static full cascade (all four stages, trained alone), "
        f"timed by `benchmarks.latency.measure_realization` on {len(samples)} seeded test images "
        f"(sha256 {samples.sha256[:12]}): CPU, {env['threads']} thread(s), interleaved rounds, "
        "p50 per call. MACs: mean executed MACs on the timed images (controllers included); "
        f"score: test {full[0]['metric']} (%). 1-minute load average at the start: "
        f"{env.get('load_1m_start')} (a shared 2-core machine).\n\n"
        + _md_table(rows, ["point", "batch_size", "engine", "score", "baseline_score", "latency_ms",
                           "baseline_latency_ms", "macs_fraction", "time_fraction", "speedup",
                           "macs_reduction", "realization_ratio"])
    )
    md = atomic_write_text(report / f"{name}_latency.md", text)
    return [csv, md]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_impls.d2nn.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="panel configs (YAML paths or 'd2nn/<name>')")
    parser.add_argument("--name", required=True, help="name of the tables and figure, e.g. fashion-mnist")
    parser.add_argument("--quick", action="store_true", help="apply each config's `quick` override")
    parser.add_argument("--out", default="results", help="runs go to OUT/runs (default: results)")
    parser.add_argument("--report", default="results/d2nn", help="where tables and figures go")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--confidence-points", type=int, default=6)
    parser.add_argument("--latency", action="store_true", help="also time the cascade (needs a cascade panel)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        runs_root = ensure_dir(Path(args.out) / "runs")
        records = []
        for config in args.configs:
            records += run_panel(
                find_config(config), runs_root=runs_root, quick=args.quick, data_root=args.data_root,
                device=args.device, confidence_points=args.confidence_points, log=log,
            )
        report = Path(args.report)
        paths = write_tables(records, report, args.name) + plot(records, report, args.name)
        if args.latency:
            paths += cascade_latency(records, report, args.name, args.data_root, threads=args.threads)
    except DynbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
