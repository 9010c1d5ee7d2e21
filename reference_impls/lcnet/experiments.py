"""The CPU-sized LC-Net experiment (Fashion-MNIST padded to 32×32, ResNet-20), end to end.

    python -m reference_impls.lcnet.experiments fmnist [--rhos 0.9 0.7 0.5 0.3 0.2 0.1]

trains (or reuses) the static backbone `baselines/fmnist_resnet20`, a control fine-tuned with
the same budget as LC-Net (`lcnet/fmnist_resnet20_static_ft`), the L1-filter-pruned
baselines `lcnet/fmnist_resnet20_l1_p{30,50,70}` and the L-, C- and LC-Net ρ sweep
(`lcnet/fmnist_resnet20_{l,c,lc}` with `method_args.rho` set per run), every run through the
engine's `Trainer` (padding and the training subset are the data layer's `dataset.options`);
then evaluates every selected model once on the test split, measures batch-1 CPU latency of
the chosen operating point, and writes tables and the figure under results/lcnet/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import config_hash, find_config, load_config
from benchmarks.data import load_split
from benchmarks.engine import Trainer
from benchmarks.engine.checkpoint import build_from_checkpoint
from benchmarks.io import atomic_write_json, atomic_write_text, ensure_dir
from benchmarks.runs import RunFolder

__all__ = ["evaluate_test", "main", "run_sweep", "train"]

DEFAULT_RHOS = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(cfg: dict[str, Any], seed: int, *, runs_root: str | Path, data_root: str | Path | None = None) -> RunFolder:
    """Train (or resume, or reuse) one run with the engine; its run folder."""
    trainer = Trainer(cfg, seed, runs_root=runs_root, data_root=data_root, device="cpu", progress=False, log=_log)
    if (trainer.run.checkpoint_dir / "best.safetensors").is_file() and (trainer.run.path / "done").is_file():
        return trainer.run
    trainer.fit()
    atomic_write_text(trainer.run.path / "done", "")
    return trainer.run


def evaluate_test(
    run: RunFolder,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 500,
    check_samples: int = 100,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate a run's selected model once on the test split (its first `limit` images in
    split order, when given): accuracy and per-sample MACs.

    Dynamic models are counted in the masked engine at batch `batch_size` (its theoretical
    MACs are what the sparse engine executes; fast on a CPU), then the first `check_samples`
    test images are run again in the sparse engine at batch 1, and their predictions and
    executed MACs must equal the masked run's (an error otherwise). Cached in the run folder.
    """
    from benchmarks.cost import measure_cost
    from benchmarks.routing import is_dynamic

    out = run.path / f"test_eval{'' if limit is None else f'_first{limit}'}.json"
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    cfg = run.load_config()
    model, meta = build_from_checkpoint(run.checkpoint_dir / "best")
    test = load_split(cfg["dataset"]["name"], "test", data_root, options=cfg["dataset"].get("options") or None)
    dynamic = is_dynamic(model)
    cost = measure_cost(model, test, engine="masked" if dynamic else None, batch_size=batch_size, limit=limit)
    per = cost.per_sample
    macs = per["macs_theoretical"]
    record: dict[str, Any] = {
        "run": run.path.name,
        "experiment": cfg["name"],
        "model": model.arch_config["name"],
        "config_hash": config_hash(cfg),
        "selected": meta,
        "test_samples": len(per),
        "test_subset": "all" if limit is None or limit >= len(test) else f"first {limit} in split order",
        "accuracy": float(per["correct"].mean() * 100.0),
        "macs_mean": float(macs.mean()),
        "macs_std": float(macs.std(ddof=0)),
        "macs_p50": float(macs.quantile(0.5)),
        "macs_min": float(macs.min()),
        "macs_max": float(macs.max()),
        "macs_controller_mean": float(per["macs_controller"].mean()),
        "params": cost.params,
        "unit_rates": cost.summary.get("unit_rates", {}),
    }
    if dynamic and check_samples:
        sparse = measure_cost(model, test, engine="sparse", batch_size=1, limit=check_samples).per_sample
        head = per.iloc[: len(sparse)]
        same_pred = bool((sparse["prediction"].to_numpy() == head["prediction"].to_numpy()).all())
        same_macs = bool((sparse["macs_executed"].to_numpy() == head["macs_theoretical"].to_numpy()).all())
        if not (same_pred and same_macs):
            raise AssertionError(f"{run.path.name}: sparse and masked engines disagree (predictions {same_pred}, MACs {same_macs})")
        record["sparse_check_samples"] = len(sparse)
    atomic_write_json(out, record)
    return record


# --------------------------------------------------------------------------------------------
# The Fashion-MNIST sweep
# --------------------------------------------------------------------------------------------

FMNIST_STATIC = "baselines/fmnist_resnet20"
FMNIST_VARIANTS = {"l": "lcnet/fmnist_resnet20_l", "c": "lcnet/fmnist_resnet20_c", "lc": "lcnet/fmnist_resnet20_lc"}
FMNIST_CONTROL = "lcnet/fmnist_resnet20_static_ft"
FMNIST_PRUNED = {0.3: "lcnet/fmnist_resnet20_l1_p30", 0.5: "lcnet/fmnist_resnet20_l1_p50", 0.7: "lcnet/fmnist_resnet20_l1_p70"}
VARIANT_LABELS = {
    "static": "static ResNet-20",
    "static_ft": "static, fine-tuned with LC-Net's budget",
    "l1": "L1-filter pruned (Li et al.)",
    "l": "L-Net only",
    "c": "C-Net only",
    "lc": "LC-Net",
}


def _rho_tag(rho: float) -> str:
    return f"rho{int(round(rho * 100)):02d}"


def variant_config(name: str, rho: float) -> dict[str, Any]:
    """An L/C/LC experiment at target `rho` (its own run: the name and the hash say so)."""
    base = load_config(find_config(name))
    return load_config(
        find_config(name),
        overrides=[f"method_args.rho={rho}", f"name={base['name']}_{_rho_tag(rho)}"],
    )


def _job(job: tuple) -> dict[str, Any]:
    """One sweep job in a worker process: train (or reuse) and evaluate on test."""
    kind, arg, seed, runs_root, data_root, threads, test_limit = job
    torch.set_num_threads(threads)
    if kind == "variant":
        name, rho = arg
        cfg = variant_config(name, rho)
        extra = {"variant": cfg["model"]["name"].split("_")[1], "rho": rho}
    elif kind == "control":
        cfg = load_config(find_config(FMNIST_CONTROL))
        extra = {"variant": "static_ft", "rho": None}
    else:
        cfg = load_config(find_config(FMNIST_PRUNED[arg]))
        extra = {"variant": "l1", "rho": None, "prune_ratio": arg}
    run = train(cfg, seed, runs_root=runs_root, data_root=data_root)
    record = evaluate_test(run, data_root=data_root, limit=test_limit)
    record.update(extra)
    return record


def run_sweep(
    rhos: Sequence[float] = DEFAULT_RHOS,
    variants: Sequence[str] = ("l", "c", "lc"),
    *,
    seed: int = 0,
    runs_root: str | Path = "results/runs",
    data_root: str | Path | None = None,
    workers: int = 1,
    l1_ratios: Sequence[float] = tuple(FMNIST_PRUNED),
    test_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Static backbone first, then every (variant, ρ) and pruned run; their test records."""
    static_run = train(load_config(find_config(FMNIST_STATIC)), seed, runs_root=runs_root, data_root=data_root)
    static = evaluate_test(static_run, data_root=data_root, limit=test_limit)
    static.update(variant="static", rho=None)
    threads = max(1, torch.get_num_threads() // max(1, workers))
    jobs = [("variant", (FMNIST_VARIANTS[v], rho), seed, runs_root, data_root, threads, test_limit) for v in variants for rho in rhos]
    jobs += [("l1", ratio, seed, runs_root, data_root, threads, test_limit) for ratio in l1_ratios]
    jobs.append(("control", None, seed, runs_root, data_root, threads, test_limit))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            records = list(pool.map(_job, jobs))
    else:
        records = [_job(job) for job in jobs]
    return [static, *records]


# --------------------------------------------------------------------------------------------
# Tables, figure, latency
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = ["method", "rho", "accuracy", "delta_vs_static", "macs_mean_M", "macs_reduction", "macs_controller_mean", "test_samples", "run"]


def sweep_frame(records: Sequence[dict[str, Any]]):
    """One row per operating point, static first; MACs reduction relative to the static model."""
    import pandas as pd

    frame = pd.DataFrame(list(records))
    static = frame[frame["variant"] == "static"].iloc[0]
    frame["method"] = frame["variant"].map(VARIANT_LABELS)
    frame["macs_mean_M"] = frame["macs_mean"] / 1e6
    frame["macs_reduction"] = static["macs_mean"] / frame["macs_mean"]
    frame["delta_vs_static"] = frame["accuracy"] - static["accuracy"]
    order = {k: i for i, k in enumerate(VARIANT_LABELS)}
    frame["_order"] = frame["variant"].map(order)
    frame = frame.sort_values(["_order", "macs_mean"], ascending=[True, False]).drop(columns="_order")
    return frame.reset_index(drop=True)


def best_within(frame, variant: str = "lc", tolerance: float = 0.5) -> dict[str, Any] | None:
    """The largest MACs reduction at which `variant` stays within `tolerance` accuracy points
    of the static model (None if no point does)."""
    rows = frame[(frame["variant"] == variant) & (frame["delta_vs_static"] >= -tolerance)]
    if rows.empty:
        return None
    return rows.sort_values("macs_reduction", ascending=False).iloc[0].to_dict()


def write_tables(frame, out_dir: str | Path, stem: str = "fmnist_resnet20") -> list[Path]:
    from benchmarks.results import to_markdown

    out_dir = ensure_dir(out_dir)
    csv_path = out_dir / f"{stem}_sweep.csv"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    shown = frame[[c for c in TABLE_COLUMNS if c in frame.columns]].copy()
    shown["rho"] = shown["rho"].map(lambda r: "" if r is None or (isinstance(r, float) and math.isnan(r)) else f"{r:g}")
    for column, digits in (("accuracy", 2), ("delta_vs_static", 2), ("macs_mean_M", 2), ("macs_reduction", 2), ("macs_controller_mean", 0)):
        shown[column] = shown[column].map(lambda v, d=digits: f"{v:.{d}f}")
    md_path = out_dir / f"{stem}_sweep.md"
    atomic_write_text(md_path, to_markdown(shown))
    return [csv_path, md_path]


def plot(frame, out_dir: str | Path, stem: str = "fmnist_resnet20", title: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = ensure_dir(out_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"l": ("tab:blue", "o"), "c": ("tab:orange", "s"), "lc": ("tab:green", "^"), "l1": ("tab:gray", "D")}
    for variant, (color, marker) in styles.items():
        rows = frame[frame["variant"] == variant].sort_values("macs_mean")
        if rows.empty:
            continue
        ax.plot(rows["macs_mean"] / 1e6, rows["accuracy"], marker=marker, color=color, label=VARIANT_LABELS[variant])
        if variant != "l1":
            for _, r in rows.iterrows():
                ax.annotate(f"ρ={r['rho']:g}", (r["macs_mean"] / 1e6, r["accuracy"]), textcoords="offset points", xytext=(3, -9), fontsize=6, color=color)
    static = frame[frame["variant"] == "static"].iloc[0]
    ax.scatter([static["macs_mean"] / 1e6], [static["accuracy"]], marker="*", s=160, color="black", zorder=5, label=VARIANT_LABELS["static"])
    control = frame[frame["variant"] == "static_ft"]
    if not control.empty:
        c = control.iloc[0]
        ax.scatter([c["macs_mean"] / 1e6], [c["accuracy"]], marker="P", s=90, color="dimgray", zorder=5, label=VARIANT_LABELS["static_ft"])
    ax.axhline(static["accuracy"] - 0.5, color="black", lw=0.6, ls=":", label="static − 0.5 points")
    ax.set_xlabel("mean executed MACs per test image (millions, gate heads included)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Fashion-MNIST (32×32), ResNet-20: accuracy vs executed MACs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths = [out_dir / f"{stem}_acc_vs_macs.png", out_dir / f"{stem}_acc_vs_macs.svg"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def measure_latency(
    rhos: Sequence[float],
    frame,
    out_dir: str | Path,
    *,
    runs_root: str | Path | None = None,
    data_root: str | Path | None = None,
    count: int = 128,
) -> Any:
    """Batch-1 CPU latency (sparse engine) of the LC-, L- and C-Net points at each target in
    `rhos`, each against the static backbone (interleaved rounds; the latency harness's
    realization ratio = speed-up / MACs reduction, on the very images timed)."""
    import pandas as pd

    from benchmarks.latency import LatencyConfig, measure_realization, sample_set_from_images

    options = load_config(find_config(FMNIST_STATIC))["dataset"]["options"]
    test = load_split("fashion-mnist", "test", data_root, options=options)  # padded to 32x32
    samples = sample_set_from_images(test.images, "fashion-mnist", count=count)
    static_row = frame[frame["variant"] == "static"].iloc[0]
    static_model, _ = build_from_checkpoint(Path(runs_root or "results/runs") / static_row["run"] / "checkpoints" / "best")
    config = LatencyConfig(batch_sizes=(1,), threads=1, repeats=count, min_time_s=2.0)
    rows = []
    for rho in rhos:
        for variant in ("lc", "l", "c"):
            match = frame[(frame["variant"] == variant) & (frame["rho"] == rho)]
            if match.empty:
                continue
            row = match.iloc[0]
            model, _ = build_from_checkpoint(Path(runs_root or "results/runs") / row["run"] / "checkpoints" / "best")
            result = measure_realization(model, static_model, samples, row["model"], static_row["model"], config, engines=("sparse",))
            for r in result.rows:
                rows.append({"variant": variant, "rho": rho, "inputs": f"test split, dataset.options {options}", **r})
            _log(f"latency {variant} rho={rho}: " + ", ".join(f"{k} {r[k]:.3g}" for r in result.rows for k in ("latency_ms", "baseline_latency_ms", "speedup", "macs_reduction", "realization_ratio")))
    frame_out = pd.DataFrame(rows)
    out_dir = ensure_dir(out_dir)
    atomic_write_text(out_dir / "fmnist_resnet20_latency_b1.csv", frame_out.to_csv(index=False))
    return frame_out


def _json_safe(value: Any) -> Any:
    """NaN (pandas' missing value) becomes null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_impls.lcnet.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=["fmnist"])
    parser.add_argument("--rhos", type=float, nargs="+", default=list(DEFAULT_RHOS))
    parser.add_argument("--l1-ratios", type=float, nargs="*", default=list(FMNIST_PRUNED), choices=list(FMNIST_PRUNED))
    parser.add_argument("--variants", nargs="+", default=["l", "c", "lc"], choices=["l", "c", "lc"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-root", default="results/runs")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default="results/lcnet")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only (CPU budget)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-rho", type=float, nargs="*", default=None,
                        help="targets whose L/C/LC points are timed (default: the chosen LC-Net point's)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    records = run_sweep(args.rhos, args.variants, seed=args.seed, runs_root=args.runs_root, data_root=args.data_root, workers=args.workers, l1_ratios=args.l1_ratios, test_limit=args.test_limit)
    frame = sweep_frame(records)
    paths = write_tables(frame, args.out) + plot(frame, args.out)
    point = best_within(frame, "lc")
    summary: dict[str, Any] = {
        "static_accuracy": float(frame.iloc[0]["accuracy"]),
        "best_lc_within_0.5": point,
        "best_within_0.5": {v: best_within(frame, v) for v in ("l", "c", "lc", "l1")},
    }
    if point is None:  # no LC point is within 0.5 points: time the most accurate one instead
        lc = frame[frame["variant"] == "lc"]
        point = lc.sort_values("accuracy", ascending=False).iloc[0].to_dict() if not lc.empty else None
    rhos = args.latency_rho or ([point["rho"]] if point is not None else [])
    if rhos and not args.no_latency:
        summary["latency_rhos"] = list(rhos)
        latency = measure_latency(rhos, frame, args.out, runs_root=args.runs_root, data_root=args.data_root)
        summary["latency_b1"] = latency.to_dict(orient="records")
        paths.append(Path(args.out) / "fmnist_resnet20_latency_b1.csv")
    latency_csv = Path(args.out) / "fmnist_resnet20_latency_b1.csv"
    if "latency_b1" not in summary and latency_csv.is_file():
        summary["latency_b1_csv"] = str(latency_csv)
    atomic_write_json(Path(args.out) / "fmnist_resnet20_summary.json", _json_safe(summary))
    _log(f"done in {time.perf_counter() - started:.0f}s; tables and figures: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
