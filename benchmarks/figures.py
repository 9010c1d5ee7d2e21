"""Trade-off figures (DESIGN §7): accuracy vs mean executed MACs, and vs measured latency.

    from benchmarks.figures import make_figures
    paths = make_figures("quick", rows, "results/figures")     # PNG + SVG per dataset

One figure per dataset. Each method's operating points (its experiments: one point per
experiment, mean over seeds, error bars = std over seeds) are joined into a curve sorted by
MACs; static models are single squares on the same axes. Published numbers the suite maps
(`benchmarks/tables.py`) are drawn hollow, so a reader sees at a glance where a reproduction
sits relative to the paper. Latency figures use the `latency_summary.csv` files written by
`dynbench latency` (`benchmarks/latency.py`), joined to result rows by model and dataset (or by
run folder when the latency row names one).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.io import atomic_path, ensure_dir

FORMATS = ("png", "svg")
#: test protocols of published accuracies drawn beside the suite's (single center crop)
COMPARABLE_PROTOCOLS = ("", "center-crop", "center-crop-224")
#: switch the x axis to log scale when the largest value is this many times the smallest
LOG_SPAN = 8.0


@dataclass
class Series:
    """One legend entry: points (x, y, y_err, label) drawn as a curve or as separate markers."""

    label: str
    kind: str  # static | pruned | dynamic | published
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    y_err: list[float] = field(default_factory=list)
    point_labels: list[str] = field(default_factory=list)

    def add(self, x: float, y: float, err: float = float("nan"), label: str = "") -> None:
        self.x.append(float(x))
        self.y.append(float(y))
        self.y_err.append(float(err))
        self.point_labels.append(label)

    def sorted(self) -> Series:
        order = sorted(range(len(self.x)), key=lambda i: self.x[i])
        pick = lambda values: [values[i] for i in order]  # noqa: E731
        return Series(self.label, self.kind, pick(self.x), pick(self.y), pick(self.y_err), pick(self.point_labels))


# --------------------------------------------------------------------------------------------
# Points from result rows and from published numbers


def dataset_metric(dataset: str) -> str:
    """The score a dataset is reported in: `accuracy`, or `f1` (LFW-B, as in D2NN)."""
    try:
        from benchmarks.data import dataset_info

        return dataset_info(dataset).metric
    except Exception:  # a dataset unknown to this install: plot accuracy
        return "accuracy"


def _plain_protocol(protocol: str, dataset: str) -> bool:
    """Whether `protocol` is the dataset's own inputs (no dataset options): the protocol its
    published numbers were measured under, as far as this suite can tell."""
    if not protocol:
        return True
    from benchmarks.protocol import protocol_of

    try:
        return protocol_of(dataset).id == protocol
    except Exception:  # a dataset without a manifest here: nothing to match
        return False


def operating_points(rows: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per experiment on `split`: mean executed MACs and the dataset's score (`score`:
    top-1 accuracy, or the F-score where the dataset reports one), mean and std over seeds."""
    columns = ["experiment", "model", "kind", "method", "dataset", "protocol", "metric", "run_dirs", "seeds",
               "score", "score_std", "accuracy", "macs"]  # fmt: skip
    if rows is None or rows.empty:
        return pd.DataFrame(columns=columns)
    sel = rows[rows["split"] == split].copy()
    sel["metric"] = sel["dataset"].map(lambda d: dataset_metric(str(d)))
    # a task scored by F-score: the dataset's own (LFW-B), or one made binary by dataset
    # options (Fashion-MNIST bag vs rest), whose rows carry an F-score
    use_f1 = sel["f1"].notna()
    sel["metric"] = use_f1.map({True: "f1", False: "accuracy"})
    sel["score"] = sel["f1"].where(use_f1, sel["accuracy"]).astype(float)
    sel = sel[sel["score"].notna()]
    if sel.empty:
        return pd.DataFrame(columns=columns)
    keys = ["experiment", "model", "kind", "method", "dataset", "protocol", "metric"]
    if "protocol" not in sel:
        sel["protocol"] = ""
    for k in keys:
        sel[k] = sel[k].astype("string").fillna("")

    def std(values: pd.Series) -> float:
        return float(values.astype(float).std(ddof=1)) if len(values) > 1 else float("nan")

    out = sel.groupby(keys, sort=False).agg(
        run_dirs=("run_dir", lambda v: tuple(str(x) for x in v.dropna())),
        seeds=("seed", "nunique"),
        score=("score", "mean"),
        score_std=("score", std),
        accuracy=("accuracy", "mean"),
        macs=("macs_mean", "mean"),
    ).reset_index()
    return out[columns]


def _base_of(model: str) -> str:
    try:
        from benchmarks.registry import get_model_spec

        return get_model_spec(model).base or model
    except Exception:  # an unregistered id in old rows: keep the figure
        return model


def series_key(point: dict[str, Any]) -> tuple[str, str]:
    """(legend label, kind): a dynamic method's points per model form one curve, a pruning
    method's per base architecture; every static model is its own point."""
    kind = str(point.get("kind") or "static")
    method, model = str(point.get("method") or ""), str(point["model"])
    if kind == "dynamic":
        return (model if model.startswith(method) else f"{method} ({model})"), kind
    if kind == "pruned":
        return f"{method} ({_base_of(model)})", kind
    return model, "static"


def reproduced_series(points: pd.DataFrame, x_column: str = "macs") -> list[Series]:
    series: dict[str, Series] = {}
    bases: dict[str, str] = {}  # pruned series label -> its base model
    for point in points.to_dict("records"):
        x = point.get(x_column)
        if x is None or pd.isna(x) or pd.isna(point["score"]):
            continue
        label, kind = series_key(point)
        s = series.setdefault(label, Series(label, kind))
        s.add(x, point["score"], point.get("score_std", float("nan")), point["experiment"])
        if kind == "pruned":
            bases[label] = _base_of(str(point["model"]))
    # a pruning curve starts at its trained base model (also drawn as its own square)
    for label, base in bases.items():
        static = series.get(base)
        if static is not None and static.kind == "static":
            for x, y, err, name in zip(static.x, static.y, static.y_err, static.point_labels, strict=True):
                series[label].add(x, y, err, name)
    return [s.sorted() for s in series.values()]


_FAMILY = re.compile(r"(preact_resnet|resnet|vgg|densenet)(\d+)")


def _family(backbone: str) -> tuple[str, str]:
    """('resnet', '56') for resnet56; (backbone, '') for names without a depth."""
    m = _FAMILY.fullmatch(backbone)
    return (m.group(1), m.group(2)) if m else (backbone, "")


def published_points(published: pd.DataFrame | None) -> pd.DataFrame:
    """(accuracy, MACs) of every published model that has both printed (the accuracy may sit
    in another table of the same paper, as in He et al.). Claims ("up to", ranges) are left out."""
    columns = ["paper", "dataset", "backbone", "method", "variant", "accuracy", "macs"]
    if published is None or published.empty:
        return pd.DataFrame(columns=columns)
    frame = published[published["qualifier"].fillna("") == ""].copy()
    # accuracies under other test protocols (10-crop, multi-scale, larger crops) would sit
    # above the single-center-crop numbers the suite measures
    protocol = frame["eval_protocol"].fillna("")
    frame = frame[~frame["metric"].isin(["top1_acc", "top1_err"]) | protocol.isin(COMPARABLE_PROTOCOLS)]
    join = ["paper", "dataset", "backbone", "method", "variant"]
    for k in join:
        frame[k] = frame[k].astype("string").fillna("")
    acc = frame[frame["metric"] == "top1_acc"][join + ["value"]].rename(columns={"value": "accuracy"})
    err = frame[frame["metric"] == "top1_err"][join + ["value"]]
    err = err.assign(accuracy=100.0 - err["value"])[join + ["accuracy"]]
    acc = pd.concat([acc, err]).drop_duplicates(subset=join, keep="first")
    macs = frame[(frame["metric"] == "macs") & frame["value_macs"].notna()][join + ["value_macs"]]
    merged = acc.merge(macs.rename(columns={"value_macs": "macs"}), on=join)
    merged = merged.drop_duplicates(subset=join)
    # the same printed model under two method names (Li et al.'s static VGG-16 and the
    # "baseline" of their L1 rows): keep the method's, so its curve starts at its baseline
    merged["_static"] = merged["method"] == "static"
    merged = merged.sort_values("_static", kind="stable")
    merged = merged.drop_duplicates(subset=["paper", "dataset", "backbone", "accuracy", "macs"])
    merged = merged.sort_index()
    return merged[columns].reset_index(drop=True)


def _short_variant(variant: str) -> str:
    m = re.fullmatch(r"pruned-([a-c])(.*)", variant)
    if m:
        return m.group(1).upper() + m.group(2)
    m = re.fullmatch(r"pruned-(\d+)pct", variant)
    if m:
        return f"{m.group(1)}% pruned"
    return "base" if variant in ("baseline", "") else variant


def published_series(points: pd.DataFrame) -> list[Series]:
    """Published points as hollow curves: a static family per paper and variant (ResNet-20 ...
    110, labelled by depth), a method's variants per paper and backbone (baseline, A, B)."""
    series: dict[str, Series] = {}
    for p in points.to_dict("records"):
        family, depth = _family(p["backbone"])
        if p["method"] == "static":
            label = f"{p['paper']} {family}" + (f" {p['variant']}" if p["variant"] else "")
            point_label = depth or p["backbone"]
        else:
            label = f"{p['paper']} {p['method']} {p['backbone']}"
            point_label = _short_variant(p["variant"])
        s = series.setdefault(label, Series(label, "published"))
        s.add(p["macs"], p["accuracy"], float("nan"), point_label)
    return [s.sorted() for s in series.values()]


# --------------------------------------------------------------------------------------------
# Latency rows


def load_latency(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate `latency_summary.csv` files (benchmarks.latency's summary rows)."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            print(f"figures: skipping unreadable latency file {path}: {exc}", file=sys.stderr)
            continue
        needed = {"model", "engine", "device", "batch_size", "p50_ms", "dataset"}
        if needed - set(frame.columns):
            print(f"figures: skipping {path}: lacks {', '.join(sorted(needed - set(frame.columns)))}", file=sys.stderr)
            continue
        frame["latency_file"] = str(path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def join_latency(points: pd.DataFrame, latency: pd.DataFrame, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Operating points with a measured latency: one row per point × engine × device × batch.

    A latency row that names a `run_dir` joins that run's point. Otherwise it joins by model
    and dataset, and only when that model has a single operating point on that dataset: a
    dynamic model's latency depends on its weights, so an ambiguous join would be a guess.
    """
    if points.empty or latency.empty:
        return pd.DataFrame()
    out = []
    for lat in latency.to_dict("records"):
        run_dir = lat.get("run_dir")
        if isinstance(run_dir, str) and run_dir:
            match = points[points["run_dirs"].map(lambda dirs, r=run_dir: r in dirs)]
        else:
            match = points[(points["model"] == lat["model"]) & (points["dataset"] == lat["dataset"])]
            if len(match) > 1:
                log(f"figures: latency of {lat['model']} on {lat['dataset']} ({lat['latency_file']}) "
                    f"fits {len(match)} operating points; skipped (record run_dir to join it)")  # fmt: skip
                continue
        for point in match.to_dict("records"):
            out.append({**point, "engine": lat["engine"], "device": lat["device"],
                        "batch_size": int(lat["batch_size"]), "latency_ms": float(lat["p50_ms"]),
                        "threads": lat.get("threads")})  # fmt: skip
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Drawing


def _format_count(value: float, _pos: Any = None) -> str:
    if value >= 1e9:
        return f"{value / 1e9:g}G"
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}K"
    return f"{value:g}"


_STYLE = {  # kind -> (marker, line style)
    "dynamic": ("o", "-"),
    "pruned": ("^", "-"),
    "static": ("s", ""),
    "published": ("D", ":"),
}


def draw(
    series: Sequence[Series],
    path_stem: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    count_axis: bool,
    annotate: bool = True,
) -> list[Path]:
    """Draw the series on one axes and save PNG and SVG (atomically, reproducible bytes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    reproduced = [s for s in series if s.kind != "published"]
    published = [s for s in series if s.kind == "published"]
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20b").colors[0::4])
    hollow = ("D", "o", "v", "^", "s", "P", "X", "<", ">", "h")
    # svg.fonttype none: text stays text (searchable, editable in a paper's figure)
    with plt.rc_context({"svg.hashsalt": "dynbench", "svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(9.0, 5.2), layout="constrained")
        for i, s in enumerate(reproduced):
            marker, line = _STYLE[s.kind]
            color = palette[i % len(palette)]
            errs = [e if math.isfinite(e) else 0.0 for e in s.y_err]
            ax.errorbar(s.x, s.y, yerr=errs if any(errs) else None, marker=marker, linestyle=line or "none",
                        color=color, markersize=7, capsize=3, linewidth=1.6, label=s.label, zorder=3)  # fmt: skip
        for i, s in enumerate(published):
            color = palette[(len(reproduced) + i) % len(palette)]
            ax.plot(s.x, s.y, marker=hollow[i % len(hollow)], linestyle=":" if len(s.x) > 1 else "none",
                    color=color, markerfacecolor="none", markersize=6, markeredgewidth=1.2,
                    linewidth=1.0, label=s.label + " (published)", zorder=2)  # fmt: skip
            if annotate:
                for x, y, text in zip(s.x, s.y, s.point_labels, strict=True):
                    if text:
                        ax.annotate(text, (x, y), xytext=(4, -3), textcoords="offset points",
                                    fontsize=6.5, color=color, va="top")  # fmt: skip
        xs = [x for s in series for x in s.x if x > 0]
        if xs and max(xs) / min(xs) > LOG_SPAN:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            xlabel += " (log scale)"
        else:
            ax.set_xlim(0, max(xs) * 1.08 if xs else None)  # a linear cost axis starts at zero
        top = max((y for s in series for y in s.y if math.isfinite(y)), default=0.0)
        floor = 0.5 * top  # a degenerate point (e.g. F-score 0) would squash the informative range
        ys = [y + sign * (e if math.isfinite(e) else 0.0) for s in series
              for y, e in zip(s.y, s.y_err, strict=True) for sign in (-1, 1) if math.isfinite(y) and y >= floor]  # fmt: skip
        if ys:  # accuracy axis: a margin around the points, never above 100%
            margin = max(1.0, 0.08 * (max(ys) - min(ys)))
            low = max(0.0, min(ys) - margin)
            ax.set_ylim(low, min(100.0, max(ys) + margin))
            for i, s in enumerate(reproduced):  # points below the axis: on its edge, value printed
                for x, y in zip(s.x, s.y, strict=True):
                    if math.isfinite(y) and y < low:
                        color = palette[i % len(palette)]
                        ax.plot(x, low, "v", color=color, markersize=7, clip_on=False, zorder=4)
                        ax.annotate(f"{y:.1f}", (x, low), xytext=(4, 3), textcoords="offset points", fontsize=6.5, color=color)
        if count_axis:
            ax.xaxis.set_major_formatter(FuncFormatter(_format_count))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        if series:
            title = None
            if published:
                title = "filled: this suite's runs, hollow: published" if reproduced else "hollow: published numbers"
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False,
                      title=title, title_fontsize=7.5, alignment="left")  # fmt: skip
        paths = []
        ensure_dir(path_stem.parent)
        for fmt in FORMATS:
            target = path_stem.with_suffix(f".{fmt}")
            with atomic_path(target) as tmp:
                metadata = {"Date": None} if fmt == "svg" else {"Software": None}
                fig.savefig(tmp, format=fmt, dpi=150, metadata=metadata)
            paths.append(target)
        plt.close(fig)
    return paths


def comparison_groups(comparisons: Iterable[dict[str, str]]) -> list[list[str]]:
    """Experiments linked by declared comparisons (candidate - baseline), as connected groups
    in declaration order: e.g. one group per D2NN design with its static baselines."""
    groups: list[list[str]] = []
    for item in comparisons:
        pair = [item["candidate"], item["baseline"]]
        touching = [g for g in groups if set(g) & set(pair)]
        merged = [name for g in touching for name in g]
        merged += [name for name in pair if name not in merged]
        groups = [g for g in groups if g not in touching] + [merged]
    return groups


def _split_by_groups(points: pd.DataFrame, groups: Sequence[Sequence[str]] | None) -> list[tuple[str, pd.DataFrame]]:
    """(group name, its points) per group with points; ("", points) when there are no groups.
    A sweep point `<name>--...` belongs to its experiment's group."""
    if not groups:
        return [("", points)]
    base = points["experiment"].astype(str).str.split("--").str[0]
    out, placed = [], pd.Series(False, index=points.index)
    for group in groups:
        inside = base.isin(list(group))
        if inside.any():
            out.append((str(group[0]), points[inside]))
        placed |= inside
    if (~placed).any():
        out.append(("other", points[~placed]))
    return out


def _score_names(points: pd.DataFrame) -> tuple[str, str]:
    """(title word, y label) for the score plotted: F-score only if every point is one."""
    if len(points) and (points["metric"] == "f1").all():
        return "F-score", "F-score on test (%)"
    return "top-1 accuracy", "top-1 accuracy on test (%)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def make_figures(
    suite: str,
    rows: pd.DataFrame,
    out: str | os.PathLike = "results/figures",
    *,
    published: pd.DataFrame | None = None,
    latency_files: Iterable[str | os.PathLike] | None = None,
    log: Callable[[str], None] | None = None,
    groups: Sequence[Sequence[str]] | None = None,
) -> list[Path]:
    """Write the suite's figures under `out` and return their paths.

    `rows` are tidy result rows; `published` (rows of published.csv, e.g. the suite's scope
    from `benchmarks.tables.suite_published`) supplies the hollow published points; `latency_files` default to every `latency_summary.csv` under
    `<out>/../latency` (where `dynbench latency` writes by default). `groups` (lists of
    experiment names, e.g. `comparison_groups` of the suite's declared comparisons) split a
    protocol's figure into one figure per group, named after its first experiment; experiments
    in no group share one more figure.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    points = operating_points(rows)
    published = published_points(published)
    paths: list[Path] = []
    # One figure per protocol (PROTOCOL.md §1): rows of two protocols never share axes. Published
    # points join the figure of their dataset's protocol without options (the papers' inputs),
    # or a figure of their own when no reproduced row is measured that way.
    panels: list[tuple[str, str, pd.DataFrame, pd.DataFrame]] = []
    for dataset in sorted(set(points["dataset"]) | set(published["dataset"])):
        mine = points[points["dataset"] == dataset]
        theirs = published[published["dataset"] == dataset]
        protocols = sorted(set(mine["protocol"]))
        plain = next((p for p in protocols if _plain_protocol(p, dataset)), None)
        for protocol in protocols:
            panels.append((dataset, protocol, mine[mine["protocol"] == protocol], theirs if protocol == plain else theirs.iloc[0:0]))
        if plain is None and not theirs.empty:
            panels.append((dataset, "", mine.iloc[0:0], theirs))
    for dataset, protocol, mine, theirs in panels:
        for group, members in _split_by_groups(mine, groups):
            series = reproduced_series(members) + published_series(theirs if not group else theirs.iloc[0:0])
            if not series:
                continue
            only_published = all(s.kind == "published" for s in series)
            score, ylabel = _score_names(members)
            label = protocol or dataset
            paths += draw(
                series,
                out / (f"{_slug(suite)}_accuracy_vs_macs_{_slug(label)}" + (f"_{_slug(group)}" if group else "")),
                title=f"{score} vs MACs per image: {label}" + (f", {group}" if group else "")
                + f"\n(suite '{suite}', test split, mean ± std over seeds)"
                + ("\npublished numbers only: no reproduced accuracy yet" if only_published else ""),
                xlabel="MACs per image (mean executed, batch 1)",
                ylabel=ylabel,
                count_axis=True,
            )
    if latency_files is None:
        root = out.parent / "latency"
        latency_files = sorted(root.rglob("latency_summary.csv")) if root.is_dir() else []
    latency = load_latency(latency_files)
    joined = join_latency(points, latency, log=log)
    if not joined.empty:
        if "protocol" not in joined:
            joined["protocol"] = ""
        joined["protocol"] = joined["protocol"].astype("string").fillna("")
        for (dataset, protocol, device), group in joined.groupby(["dataset", "protocol", "device"], sort=True):
            label = protocol or dataset
            batch = 1 if (group["batch_size"] == 1).any() else int(group["batch_size"].min())
            group = group[group["batch_size"] == batch]
            counts = set(group["threads"].dropna().astype(int)) if "threads" in group else set()
            threads = counts.pop() if len(counts) == 1 else None
            series = []
            for engine, part in group.groupby("engine", sort=True):
                for s in reproduced_series(part, x_column="latency_ms"):
                    if engine not in ("none", ""):
                        s.label += f" [{engine}]"
                    series.append(s)
            paths += draw(
                series,
                out / f"{_slug(suite)}_accuracy_vs_latency_{_slug(label)}_{_slug(device)}_b{batch}",
                title=f"{label}: {_score_names(group)[0]} vs measured latency ({device}, batch {batch}"
                + (f", {threads} thread{'s' if threads != 1 else ''})" if threads else ")"),
                xlabel=f"median latency per batch of {batch} (ms)",
                ylabel=_score_names(group)[1],
                count_axis=False,
            )
    return paths
