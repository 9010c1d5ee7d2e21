"""Paper tables: reproduced numbers beside published ones, with a status per row (DESIGN §7).

    from benchmarks.tables import build_tables
    report = build_tables("baselines")     # writes results/tables/baselines_vs_published.{csv,md,tex}
    report.failures                        # the rows that drifted (what `--check` fails on)

Which registered model reproduces which published number is data, not code:
`benchmarks/published_map.yaml` (see its header). For every published row an entry claims,
the reproduced value comes from

* **counting** (MACs, params and the reductions / speed-ups they imply, for static and pruned
  models): the registered architecture is built and counted with `benchmarks.cost` at the
  dataset's input resolution, so no training and no data are needed;
* **runs** (accuracy, and the MACs of dynamic models, whose cost depends on what they learned):
  the test-split result rows of the experiment the entry names, averaged over seeds.

Each row gets a status: ``within tolerance``, ``drift`` (what `dynbench tables --check` fails
on), ``known deviation`` (a documented difference between the paper's number and the
architecture, see the mapping's `deviations`) or ``not reproduced yet``. Tolerances are per
metric (`DEFAULT_TOLERANCES`), widened to half a unit of the last printed digit: "1.7M" params
only says 1.65M–1.75M.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.errors import ConfigError
from benchmarks.io import atomic_write_text, ensure_dir
from benchmarks.results import RESULT_COLUMNS, collect_results, read_results

DEFAULT_MAPPING = Path(__file__).with_name("published_map.yaml")

STATUS_OK = "within tolerance"
STATUS_DRIFT = "drift"
STATUS_KNOWN = "known deviation"
STATUS_MISSING = "not reproduced yet"
STATUSES = (STATUS_OK, STATUS_DRIFT, STATUS_KNOWN, STATUS_MISSING)


@dataclass(frozen=True)
class Tolerance:
    """How far a reproduced number may be from the published one: absolute (in the metric's
    unit: points for percentages) or relative (a fraction of the published value)."""

    kind: str  # "abs" | "rel"
    value: float

    def allowed(self, published: float) -> float:
        return self.value if self.kind == "abs" else self.value * abs(published)

    def describe(self) -> str:
        return f"±{self.value:g} pt" if self.kind == "abs" else f"±{self.value * 100:g}%"


#: metric -> tolerance. Accuracy: 0.5 points for a 3-seed mean (`--tolerance-acc` changes it);
#: architecture counts: 1% relative; reductions: 1 point.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "top1_acc": Tolerance("abs", 0.5),
    "top1_err": Tolerance("abs", 0.5),
    "top5_acc": Tolerance("abs", 0.5),
    "macs": Tolerance("rel", 0.01),
    "params": Tolerance("rel", 0.01),
    "macs_reduction": Tolerance("abs", 1.0),
    "params_reduction": Tolerance("abs", 1.0),
    "speedup": Tolerance("rel", 0.01),
}
ACCURACY_METRICS = ("top1_acc", "top1_err", "top5_acc")
COMPARED_METRICS = tuple(DEFAULT_TOLERANCES)

COMPARISON_COLUMNS: dict[str, str] = {
    "paper": "string",
    "table_figure": "string",
    "dataset": "string",
    "backbone": "string",
    "method": "string",
    "variant": "string",
    "metric": "string",
    "published": "string",  # as printed
    "published_value": "float64",  # canonical unit (MACs for cost)
    "published_status": "string",  # exact / exact-secondary / derived / approximate
    "model": "string",
    "source": "string",  # count | runs: <experiments> | ""
    "reproduced_value": "float64",
    "reproduced_std": "float64",
    "seeds": "Int64",
    "delta": "float64",  # reproduced - published
    "delta_pct": "float64",  # relative, for counts
    "allowed": "float64",  # |delta| allowed, after widening to the printed precision
    "status": "string",
    "note": "string",
    "published_id": "string",
}

_MAPPING_KEYS = {"match", "suites", "model", "reason", "experiment", "deviations", "cost"}
_TEMPLATE_FIELDS = ("paper", "dataset", "backbone", "method", "variant")


# --------------------------------------------------------------------------------------------
# The mapping: published rows -> registered models and experiments


@dataclass(frozen=True)
class MappingEntry:
    """One entry of the published-numbers mapping (see benchmarks/published_map.yaml)."""

    index: int
    match: dict[str, tuple[str, ...]]
    suites: tuple[str, ...]
    model: str | None
    reason: str = ""
    experiment: tuple[str, ...] = ()
    deviations: dict[str, str] = field(default_factory=dict)
    cost: str | None = None  # "count" | "runs" | None (count static and pruned, runs for dynamic)

    def matches(self, row: dict[str, Any]) -> bool:
        return all(str(row.get(col, "")) in values for col, values in self.match.items())

    def model_for(self, row: dict[str, Any], where: str = "") -> str | None:
        if self.model is None:
            return None
        fields = {k: str(row.get(k, "")) for k in _TEMPLATE_FIELDS}
        try:
            return self.model.format(**fields)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"{where}: entry {self.index + 1}: model template '{self.model}' may only use "
                f"{', '.join('{' + f + '}' for f in _TEMPLATE_FIELDS)}"
            ) from None

    def experiment_matches(self, name: str, row: dict[str, Any] | None = None) -> bool:
        """`experiment` patterns (templates like `model`) in order; a leading '!' excludes."""
        chosen = False
        fields = {k: str((row or {}).get(k, "")) for k in _TEMPLATE_FIELDS}
        for pattern in self.experiment:
            pattern = pattern.format(**fields)
            if pattern.startswith("!"):
                if fnmatch.fnmatchcase(name, pattern[1:]):
                    chosen = False
            elif fnmatch.fnmatchcase(name, pattern):
                chosen = True
        return chosen


def _strings(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def load_mapping(path: str | os.PathLike | None = None) -> list[MappingEntry]:
    """Read and validate the mapping file; every problem names the file, entry and field."""
    from benchmarks.paper import COLUMNS as PUBLISHED_COLUMNS

    path = Path(path) if path is not None else DEFAULT_MAPPING
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"published-numbers mapping '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ConfigError(f"{path}: expected a mapping with an 'entries' list")
    entries = []
    for i, raw in enumerate(data["entries"]):
        where = f"{path}: entry {i + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - _MAPPING_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(_MAPPING_KEYS))}")
        match = raw.get("match")
        if not isinstance(match, dict) or not match:
            raise ConfigError(f"{where}: 'match' must be a non-empty mapping of published.csv columns")
        parsed_match = {}
        for column, value in match.items():
            if column not in PUBLISHED_COLUMNS:
                raise ConfigError(f"{where}: 'match' names unknown published column '{column}'")
            values = _strings(value)
            if values is None:
                raise ConfigError(f"{where}: match.{column} must be a string or a list of strings")
            parsed_match[column] = values
        suites = _strings(raw.get("suites"))
        if suites is None:
            raise ConfigError(f"{where}: 'suites' must be a non-empty list of suite names")
        if "model" not in raw:
            raise ConfigError(f"{where}: missing 'model' (a registry id, or null with a 'reason')")
        model = raw["model"]
        if model is not None and not (isinstance(model, str) and model):
            raise ConfigError(f"{where}: 'model' must be a registry id or null, got {model!r}")
        reason = raw.get("reason", "")
        if model is None and not (isinstance(reason, str) and reason.strip()):
            raise ConfigError(f"{where}: 'model' is null, so 'reason' must say why")
        experiment = ()
        if raw.get("experiment") is not None:
            experiment = _strings(raw["experiment"])
            if experiment is None:
                raise ConfigError(f"{where}: 'experiment' must be a name/pattern or a list of them")
        deviations = raw.get("deviations") or {}
        if not isinstance(deviations, dict) or not all(
            isinstance(v, str) and v.strip() for v in deviations.values()
        ):
            raise ConfigError(f"{where}: 'deviations' must map metrics to non-empty reasons")
        for metric in deviations:
            if metric not in COMPARED_METRICS:
                raise ConfigError(
                    f"{where}: deviation for '{metric}', which is not compared "
                    f"(compared metrics: {', '.join(COMPARED_METRICS)})"
                )
        cost = raw.get("cost")
        if cost not in (None, "count", "runs"):
            raise ConfigError(f"{where}: 'cost' must be 'count' or 'runs', got {cost!r}")
        if cost == "runs" and not experiment:
            raise ConfigError(f"{where}: 'cost: runs' needs an 'experiment' whose runs give the cost")
        entry = MappingEntry(i, parsed_match, suites, model, reason.strip(), experiment, dict(deviations), cost)
        if model is not None:
            entry.model_for({}, where=str(path))  # validates the template's fields
        try:
            entry.experiment_matches("")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"{where}: 'experiment' templates may only use "
                              f"{', '.join('{' + f + '}' for f in _TEMPLATE_FIELDS)}") from None  # fmt: skip
        entries.append(entry)
    return entries


def claim_rows(published: pd.DataFrame, entries: Sequence[MappingEntry]) -> pd.Series:
    """For each published row, the index of the first entry that matches it (or -1)."""
    records = published.to_dict("records")
    claimed = []
    for row in records:
        claimed.append(next((e.index for e in entries if e.matches(row)), -1))
    return pd.Series(claimed, index=published.index, dtype="int64")


# --------------------------------------------------------------------------------------------
# Reproduced values


def count_architecture(model: str, dataset: str) -> tuple[int, int]:
    """(MACs, params) of a registered static/pruned architecture at the dataset's resolution
    and class count, counted with `benchmarks.cost` (batch 1, conv + linear + matmul).

    The model is built on the `meta` device: a static model's cost follows from shapes alone,
    so nothing is computed or allocated. A model that cannot run on `meta` is built on the CPU.
    """
    import torch

    from benchmarks.cost import count_macs
    from benchmarks.data import dataset_info
    from benchmarks.registry import create_model

    info = dataset_info(dataset)
    try:
        with torch.device("meta"):
            net = create_model(model, num_classes=info.num_classes)
        count = count_macs(net, info.input_shape)
    except (NotImplementedError, RuntimeError):  # e.g. a builder that reads tensor values
        count = count_macs(create_model(model, num_classes=info.num_classes), info.input_shape)
    return count.macs, count.params


#: `count_architecture`, memoized: one table counts a backbone once for all its rows
architecture_cost = functools.cache(count_architecture)


_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:E([+-]?\d+))?([KMG]?)")
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def printed_resolution(printed: str, value: float) -> float:
    """One unit of the last printed digit, in the unit of `value` ("1.7M" -> 1e5; "7.97E8"
    FLOPs stored as 3.985e8 MACs -> 5e5). 0 when the printed text cannot be related to it."""
    if not printed or value is None or not math.isfinite(value) or value == 0:
        return 0.0
    for m in _NUMBER.finditer(printed):
        mantissa, exponent, scale = m.group(1), m.group(2), m.group(3)
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        unit = 10.0 ** int(exponent or 0) * _SCALE[scale]
        number = float(mantissa.replace(",", "")) * unit
        if number == 0:
            continue
        for factor in (1.0, 0.5, 2.0):  # FLOPs ÷ 2 conversions
            if math.isclose(value / number, factor, rel_tol=1e-6):
                return 10.0 ** (-digits) * unit * factor
    return 0.0


@dataclass
class _Reproduced:
    value: float | None = None
    std: float | None = None
    seeds: int | None = None
    source: str = ""
    note: str = ""


def _test_rows(rows: pd.DataFrame, entry: MappingEntry, row: dict[str, Any]) -> pd.DataFrame:
    """Test rows of the entry's experiment on the row's dataset. The experiment names the
    recipe; its rows' model id may differ from the entry's (a pruning run starts from the
    base model and ends with the pruned one)."""
    if rows.empty or not entry.experiment:
        return rows.iloc[0:0]
    sel = rows[(rows["split"] == "test") & (rows["dataset"] == row["dataset"])]
    keep = [entry.experiment_matches(str(e), row) for e in sel["experiment"]]
    return sel.loc[pd.Series(keep, index=sel.index, dtype=bool)]


def _from_runs(rows: pd.DataFrame, entry: MappingEntry, row: dict[str, Any], column: str) -> _Reproduced:
    if not entry.experiment:
        return _Reproduced(note="no experiment is mapped to this recipe")
    sel = _test_rows(rows, entry, row)
    sel = sel.loc[sel[column].notna()]
    if sel.empty:
        wanted = ", ".join(p.format(**{k: str(row.get(k, "")) for k in _TEMPLATE_FIELDS}) for p in entry.experiment)
        return _Reproduced(note=f"no {row['dataset']} test rows of experiment {wanted} yet")
    experiments = sorted(set(sel["experiment"].astype(str)))
    if len(experiments) > 1:
        return _Reproduced(note=f"ambiguous: experiments {', '.join(experiments)} all match; narrow 'experiment'")
    values = sel[column].astype(float)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return _Reproduced(float(values.mean()), std, len(values), f"runs: {experiments[0]}")


def _reproduce(row: dict[str, Any], entry: MappingEntry, rows: pd.DataFrame) -> tuple[str, _Reproduced]:
    """The model id and reproduced value for one published row."""
    from benchmarks.registry import get_model_spec, is_model

    model = entry.model_for(row)
    if model is None:
        return "", _Reproduced(note=entry.reason)
    if not is_model(model):
        return model, _Reproduced(note=f"model '{model}' is not registered")
    spec = get_model_spec(model)
    metric, dataset = row["metric"], row["dataset"]
    if metric in ACCURACY_METRICS:
        column = "accuracy" if metric != "top5_acc" else None
        if column is None:
            return model, _Reproduced(note="result rows hold top-1 accuracy only")
        result = _from_runs(rows, entry, row, column)
        if metric == "top1_err" and result.value is not None:
            result.value = 100.0 - result.value
        return model, result
    # cost: counted on the architecture, or (dynamic models, architectures found by
    # training such as network slimming) taken from the runs of the mapped experiment
    counted = (entry.cost or ("runs" if spec.kind == "dynamic" else "count")) == "count"
    base = spec.base or (None if counted or spec.kind == "dynamic" else model)
    try:
        seeds = None
        if counted:
            macs, params = (float(v) for v in architecture_cost(model, dataset))
            source = "count"
        else:
            column = "params" if metric in ("params", "params_reduction") else "macs_mean"
            result = _from_runs(rows, entry, row, column)
            if result.value is None or metric in ("macs", "params"):
                return model, result
            macs = params = result.value
            source, seeds = result.source, result.seeds
        if metric in ("macs", "params"):
            return model, _Reproduced(macs if metric == "macs" else params, source=source)
        if base is None:
            return model, _Reproduced(note=f"'{model}' names no base model (tag 'base:<id>'), so no reduction")
        base_macs, base_params = architecture_cost(base, dataset)
        versus = f"{source} vs {base}"
        if metric == "macs_reduction":
            return model, _Reproduced(100.0 * (1.0 - macs / base_macs), seeds=seeds, source=versus)
        if metric == "speedup":
            return model, _Reproduced(base_macs / macs, seeds=seeds, source=versus)
        if metric == "params_reduction":
            return model, _Reproduced(100.0 * (1.0 - params / base_params), seeds=seeds, source=versus)
    except Exception as exc:  # a model that cannot be built or counted is reported, not fatal
        return model, _Reproduced(note=f"cannot count {model} on {dataset}: {type(exc).__name__}: {exc}")
    return model, _Reproduced(note=f"metric '{metric}' is not compared")


def _published_value(row: dict[str, Any]) -> float:
    if row["metric"] == "macs" and not _missing(row.get("value_macs")):
        return float(row["value_macs"])
    return float(row["value"])


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _comparable_rows(published: pd.DataFrame) -> pd.DataFrame:
    """Rows of compared metrics; an error rate only where the accuracy is not printed."""
    rows = published[published["metric"].isin(COMPARED_METRICS)]
    key = ["paper", "table_figure", "dataset", "backbone", "method", "variant", "eval_protocol"]
    with_acc = set(map(tuple, rows.loc[rows["metric"] == "top1_acc", key].astype(str).values))
    keep = [
        m != "top1_err" or tuple(str(v) for v in k) not in with_acc
        for m, k in zip(rows["metric"], rows[key].values, strict=True)
    ]
    return rows[keep]


def scoped_published(
    published: pd.DataFrame, entries: Sequence[MappingEntry], suites: Iterable[str] | None = None
) -> pd.DataFrame:
    """The published rows claimed by an entry of one of `suites` (None: by any entry), with
    the claiming entry's index in a `mapping_entry` column."""
    wanted = None if suites is None else set(suites)
    claimed = claim_rows(published, entries)
    by_index = {e.index: e for e in entries}
    keep = [
        c >= 0 and (wanted is None or bool(wanted & set(by_index[c].suites))) for c in claimed
    ]
    scoped = published[keep].copy()
    scoped["mapping_entry"] = claimed[keep].values
    return scoped


def compare(
    published: pd.DataFrame,
    entries: Sequence[MappingEntry],
    rows: pd.DataFrame | None = None,
    *,
    suites: Iterable[str] | None = None,
    tolerances: dict[str, Tolerance] | None = None,
) -> pd.DataFrame:
    """Reproduced beside published, one row per published number an in-scope entry claims.

    `suites` selects the entries whose `suites` name one of them (None: every entry).
    `rows` are tidy result rows (`benchmarks.results`); accuracy and dynamic MACs come from
    their `test` split.
    """
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    rows = rows if rows is not None else pd.DataFrame(columns=list(RESULT_COLUMNS))
    scoped = scoped_published(published, entries, suites)
    by_index = {e.index: e for e in entries}
    out = []
    comparable = _comparable_rows(scoped)
    for row in comparable.to_dict("records"):
        entry = by_index[int(row["mapping_entry"])]
        model, rep = _reproduce(row, entry, rows)
        pub = _published_value(row)
        record = {
            "paper": row["paper"], "table_figure": row["table_figure"], "dataset": row["dataset"],
            "backbone": row["backbone"], "method": row["method"], "variant": row["variant"],
            "metric": row["metric"],
            "published": (f"{row['qualifier']} " if row["qualifier"] else "") + str(row["value_as_printed"]),
            "published_value": pub, "published_status": row["status"], "model": model,
            "source": rep.source, "reproduced_value": rep.value, "reproduced_std": rep.std,
            "seeds": rep.seeds, "published_id": row["id"], "note": rep.note,
        }  # fmt: skip
        if rep.value is None or row["qualifier"]:
            if row["qualifier"] and rep.value is not None:
                record["note"] = f"'{row['qualifier']}' claim: not comparable row by row"
            record["status"] = STATUS_MISSING
        else:
            tol = tolerances[row["metric"]]
            allowed = max(tol.allowed(pub), printed_resolution(str(row["value_as_printed"]), pub) / 2)
            delta = rep.value - pub
            record.update(delta=delta, allowed=allowed)
            if tol.kind == "rel" and pub:
                record["delta_pct"] = 100.0 * delta / pub
            within = abs(delta) <= allowed * (1 + 1e-9)
            deviation = entry.deviations.get(row["metric"])
            if within:
                record["status"] = STATUS_OK
            elif deviation:
                record["status"], record["note"] = STATUS_KNOWN, deviation
            else:
                record["status"] = STATUS_DRIFT
        out.append(record)
    frame = pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))
    return frame.astype(COMPARISON_COLUMNS)


# --------------------------------------------------------------------------------------------
# Reproduced rows of a suite


def suite_rows(
    suite: str,
    tables_dir: str | os.PathLike = "results/tables",
    runs_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The tidy result rows of `suite`: its `<suite>.csv` (and those of the suites it
    includes) under `tables_dir`; where none exists, the run folders under `runs_root`
    (default: `<tables_dir>/../runs`) whose rows name one of those suites."""
    from benchmarks.suites import suite_members

    tables_dir = Path(tables_dir)
    members = suite_members(suite)
    files = [tables_dir / f"{name}.csv" for name in members if (tables_dir / f"{name}.csv").is_file()]
    if files:
        frame = collect_results(files)
    else:
        runs_root = Path(runs_root) if runs_root is not None else tables_dir.parent / "runs"
        frame = collect_results(sorted(runs_root.glob("*/results.csv"))) if runs_root.is_dir() else collect_results([])
        frame = frame[frame["suite"].isin(members)]
    key = ["experiment", "model", "dataset", "split", "seed", "config_hash"]
    return frame.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def summarize_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment × split: mean ± std (over seeds) of accuracy and cost."""
    keys = ["protocol", "experiment", "model", "kind", "method", "dataset", "split"]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["seeds", "budget_images", "accuracy", "accuracy_std", "macs_mean"])
    frame = rows.copy()
    for k in keys:
        frame[k] = frame[k].astype("string").fillna("")

    def std(values: pd.Series) -> float:
        values = values.dropna().astype(float)
        return float(values.std(ddof=1)) if len(values) > 1 else float("nan")

    grouped = frame.groupby(keys, sort=False, dropna=False)
    summary = grouped.agg(
        seeds=("seed", "nunique"),
        budget_images=("budget_images", "max"),
        accuracy=("accuracy", "mean"),
        accuracy_std=("accuracy", std),
        f1=("f1", "mean"),
        f1_std=("f1", std),
        macs_mean=("macs_mean", "mean"),
        macs_theoretical_mean=("macs_theoretical_mean", "mean"),
        macs_controller_mean=("macs_controller_mean", "mean"),
        params=("params", "max"),
    ).reset_index()
    order = {"val": 0, "test": 1}
    summary["_split"] = summary["split"].map(lambda s: order.get(s, 2))
    return summary.sort_values(["protocol", "experiment", "_split"], kind="stable").drop(columns="_split").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Rendering


def _none(value: Any) -> bool:
    return _missing(value) or value == ""


def format_value(metric: str, value: Any) -> str:
    """A number in the metric's display unit: MACs/params in M or G, percentages, ratios."""
    if _none(value):
        return "–"
    value = float(value)
    if metric in ("macs", "macs_mean", "params"):
        if abs(value) >= 1e9:
            return f"{value / 1e9:.3f}G"
        if abs(value) >= 1e5:
            return f"{value / 1e6:.3f}M"
        return f"{value:,.0f}"
    if metric == "speedup":
        return f"{value:.2f}x"
    if metric.endswith("_reduction"):
        return f"{value:.1f}%"
    return f"{value:.2f}"


def _reproduced_cell(row: dict[str, Any]) -> str:
    text = format_value(row["metric"], row["reproduced_value"])
    if _none(row["reproduced_value"]):
        return text
    if not _none(row["reproduced_std"]):
        text += f" ± {format_value(row['metric'], row['reproduced_std'])}"
    if not _none(row["seeds"]):
        text += f" ({int(row['seeds'])} seed{'s' if int(row['seeds']) != 1 else ''})"
    return text


def _delta_cell(row: dict[str, Any]) -> str:
    if _none(row["delta"]):
        return "–"
    if not _none(row["delta_pct"]):
        return f"{row['delta_pct']:+.2f}%"
    return f"{row['delta']:+.2f}"


def _allowed_cell(row: dict[str, Any]) -> str:
    if _none(row["allowed"]):
        return "–"
    if row["metric"] in ("macs", "params", "speedup"):
        pub = row["published_value"]
        return f"±{100 * row['allowed'] / pub:.2f}%" if pub else "–"
    return f"±{row['allowed']:.2f}"


def _method_cell(row: dict[str, Any]) -> str:
    return row["method"] + (f" / {row['variant']}" if row["variant"] else "")


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["status"].value_counts() if not frame.empty else {}
    return {s: int(counts.get(s, 0)) for s in STATUSES}


_DISPLAY = [
    ("Paper", lambda r: r["paper"]),
    ("Table", lambda r: r["table_figure"]),
    ("Dataset", lambda r: r["dataset"]),
    ("Backbone", lambda r: r["backbone"] or "–"),
    ("Method / variant", _method_cell),
    ("Metric", lambda r: r["metric"]),
    ("Published", lambda r: r["published"]),
    ("Published (canonical)", lambda r: format_value(r["metric"], r["published_value"])),
    ("Model", lambda r: r["model"] or "–"),
    ("Reproduced", _reproduced_cell),
    ("Δ", _delta_cell),
    ("Allowed", _allowed_cell),
    ("Status", lambda r: r["status"]),
    ("Note", lambda r: r["note"] or ""),
]


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_markdown(frame: pd.DataFrame, suite: str, tolerances: dict[str, Tolerance]) -> str:
    counts = status_counts(frame)
    lines = [
        f"# Suite `{suite}`: reproduced vs published",
        "",
        "Generated by `dynbench tables`; published numbers from `results/paper/published.csv`, "
        "mapped to registered models by `benchmarks/published_map.yaml`. MACs and params are "
        "counted on the registered architecture with `benchmarks.cost`; accuracy comes from the "
        "test rows of the mapped experiment (mean ± std over seeds).",
        "",
        "Status: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(frame)} published numbers).",
        "",
        "Tolerances: " + ", ".join(f"{m} {t.describe()}" for m, t in tolerances.items())
        + "; each widened to half a unit of the last printed digit.",
        "",
    ]
    if frame.empty:
        lines.append(f"No published number is mapped to suite `{suite}`.")
        return "\n".join(lines) + "\n"
    names = [name for name, _ in _DISPLAY]
    lines += ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for row in frame.to_dict("records"):
        lines.append("| " + " | ".join(_md_escape(fn(row)) for _, fn in _DISPLAY) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    text = str(text)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                 ("^", r"\textasciicircum{}"), ("–", "--"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"),
                 ("×", r"$\times$"), ("−", "-"), ("≈", r"$\approx$")):  # fmt: skip
        text = text.replace(a, b)
    return text


def comparison_latex(frame: pd.DataFrame, suite: str) -> str:
    """A longtable (needs \\usepackage{booktabs,longtable}); notes are left to the Markdown."""
    shown = [(n, fn) for n, fn in _DISPLAY if n not in ("Note", "Published (canonical)", "Table")]
    header = " & ".join(_tex_escape(n) for n, _ in shown) + r" \\"
    lines = [
        f"% Suite {suite}: reproduced vs published (generated by `dynbench tables`).",
        r"% Needs \usepackage{booktabs,longtable}.",
        r"\begin{longtable}{" + "l" * len(shown) + "}",
        r"\toprule", header, r"\midrule", r"\endhead",
    ]
    for row in frame.to_dict("records"):
        lines.append(" & ".join(_tex_escape(fn(row)) for _, fn in shown) + r" \\")
    lines += [r"\bottomrule", r"\end{longtable}"]
    return "\n".join(lines) + "\n"


_SUMMARY_DISPLAY = [
    ("experiment", lambda r: r["experiment"]),
    ("model", lambda r: r["model"]),
    ("kind", lambda r: r["kind"]),
    ("method", lambda r: r["method"]),
    ("protocol", lambda r: r["protocol"] or "–"),
    ("split", lambda r: r["split"]),
    ("seeds", lambda r: str(int(r["seeds"]))),
    ("budget (images)", lambda r: "–" if _none(r.get("budget_images")) else f"{int(r['budget_images']):,}"),
    ("accuracy (%)", lambda r: format_value("acc", r["accuracy"])
        + ("" if _none(r["accuracy_std"]) else f" ± {r['accuracy_std']:.2f}")),
    ("MACs executed (mean)", lambda r: format_value("macs", r["macs_mean"])),
    ("MACs theoretical", lambda r: format_value("macs", r["macs_theoretical_mean"])),
    ("MACs controller", lambda r: format_value("macs", r["macs_controller_mean"])),
    ("params", lambda r: format_value("params", r["params"])),
]  # fmt: skip


def _summary_display(summary: pd.DataFrame) -> list:
    """The summary columns; an F-score column where some dataset reports one (LFW-B); latency
    columns where the suite was timed."""
    display = list(_SUMMARY_DISPLAY)
    for column in summary.columns:
        if column.startswith("p50_b"):
            batch = column[len("p50_b"):]
            display.append((f"p50 b{batch} (ms, CPU 1 thread)", lambda r, c=column: "–" if _none(r.get(c)) else f"{r[c]:.3g}"))
            ratio = f"realization_b{batch}"
            if ratio in summary:
                display.append((f"realization b{batch}", lambda r, c=ratio: "–" if _none(r.get(c)) else f"{r[c]:.2f}"))
    if "f1" in summary and summary["f1"].notna().any():
        f1 = ("F-score (%)", lambda r: format_value("f1", r["f1"])
              + ("" if _none(r.get("f1_std")) else f" ± {r['f1_std']:.2f}"))  # fmt: skip
        display.insert(9, f1)
    return display


def summary_markdown(summary: pd.DataFrame, suite: str) -> str:
    lines = [
        f"# Suite `{suite}`",
        "",
        "One row per experiment and split: accuracy as mean ± std over seeds (std shown from two "
        "seeds on), MACs per sample (executed, with perfect skipping, and of the controller).",
        "",
    ]
    if summary.empty:
        return "\n".join(lines + [f"Suite `{suite}` has no result rows yet."]) + "\n"
    display = _summary_display(summary)
    names = [n for n, _ in display]
    for protocol, rows in summary.groupby("protocol", sort=True, dropna=False):
        lines += [f"## Protocol `{protocol if isinstance(protocol, str) and protocol else 'unknown'}`", ""]
        lines.append(_protocol_note(protocol, rows))
        lines += ["", "| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
        for row in rows.to_dict("records"):
            lines.append("| " + " | ".join(_md_escape(fn(row)) for _, fn in display) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _protocol_note(protocol: Any, rows: pd.DataFrame) -> str:
    """What a protocol section holds, and whether its rows share one training budget."""
    if not isinstance(protocol, str) or not protocol:
        return "Rows written before protocols were recorded: compare them with nothing."
    budgets = sorted({int(b) for b in rows["budget_images"].dropna()})
    if not budgets:
        return "Training budgets unknown."
    if budgets[-1] <= 1.05 * budgets[0]:
        return f"Every row here trained on about {budgets[0]:,} images (equal budget, PROTOCOL.md §2)."
    return (f"Budgets differ ({budgets[0]:,} to {budgets[-1]:,} training images): a difference between "
            "these rows is not a comparison at equal budget (PROTOCOL.md §2).")  # fmt: skip


def summary_latex(summary: pd.DataFrame, suite: str) -> str:
    display = _summary_display(summary)
    names = [n for n, _ in display]
    lines = [
        f"% Suite {suite} (generated by dynbench). Needs \\usepackage{{booktabs}}.",
        r"\begin{tabular}{" + "l" * len(names) + "}",
        r"\toprule",
        " & ".join(_tex_escape(n) for n in names) + r" \\",
        r"\midrule",
    ]
    for row in summary.to_dict("records"):
        lines.append(" & ".join(_tex_escape(fn(row)) for _, fn in display) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_summary_tables(suite: str, rows: pd.DataFrame, tables_dir: str | os.PathLike) -> list[Path]:
    """`<suite>.md` and `<suite>.tex`: the suite's rows with seeds folded into mean ± std."""
    tables_dir = ensure_dir(tables_dir)
    summary = summarize_runs(rows)
    latency_file = Path(tables_dir) / f"{suite}_latency.csv"
    if latency_file.is_file():  # written by `dynbench reproduce`
        from benchmarks.suite_latency import latency_columns

        summary = latency_columns(summary, pd.read_csv(latency_file))
    return [
        atomic_write_text(tables_dir / f"{suite}.md", summary_markdown(summary, suite)),
        atomic_write_text(tables_dir / f"{suite}.tex", summary_latex(summary, suite)),
    ]


# --------------------------------------------------------------------------------------------
# Entry point


@dataclass
class TablesReport:
    suite: str
    comparison: pd.DataFrame
    files: list[Path]
    unmapped: dict[str, int]
    rows: int = 0
    published: pd.DataFrame | None = None  # the published rows in the suite's scope

    @property
    def failures(self) -> pd.DataFrame:
        return self.comparison[self.comparison["status"] == STATUS_DRIFT]

    def counts(self) -> dict[str, int]:
        return status_counts(self.comparison)

    def reproduced(self) -> int:
        """Published numbers with a reproduced value (within tolerance, drift or deviation)."""
        return int((self.comparison["status"] != STATUS_MISSING).sum())


def describe_row(row: dict[str, Any]) -> str:
    """One line naming a compared row: for --check output and logs."""
    what = f"{row['paper']} {row['table_figure']}: {row['dataset']} {row['backbone'] or '-'} {_method_cell(row)} {row['metric']}"
    return (
        f"{what}: published {row['published']} ({format_value(row['metric'], row['published_value'])}), "
        f"reproduced {_reproduced_cell(row)} [{row['model']}], Δ {_delta_cell(row)}, allowed {_allowed_cell(row)}"
    )


def suite_published(
    suite: str,
    published: str | os.PathLike | None = None,
    mapping: str | os.PathLike | None = None,
) -> pd.DataFrame | None:
    """The published rows mapped to `suite` (None when no entry belongs to it)."""
    from benchmarks.paper import load_published
    from benchmarks.suites import suite_members

    members = suite_members(suite)
    entries = load_mapping(mapping)
    scope = None if suite == "all" else members
    if not any(scope is None or set(e.suites) & set(scope) for e in entries):
        return None
    path = _resolve_published(published)
    return scoped_published(load_published(path) if path is not None else load_published(), entries, scope)


def _resolve_published(path: str | os.PathLike | None) -> Path | None:
    from benchmarks.paper import DEFAULT_PUBLISHED

    if path is not None:
        return Path(path)
    for candidate in (DEFAULT_PUBLISHED, Path.cwd() / "results" / "paper" / "published.csv"):
        if candidate.is_file():
            return candidate
    return None


def build_tables(
    suite: str = "all",
    out: str | os.PathLike = "results/tables",
    *,
    rows: pd.DataFrame | str | os.PathLike | None = None,
    runs_root: str | os.PathLike | None = None,
    published: str | os.PathLike | pd.DataFrame | None = None,
    mapping: str | os.PathLike | Sequence[MappingEntry] | None = None,
    tolerance_acc: float | None = None,
) -> TablesReport:
    """Compare suite `suite` with the published numbers and write its tables under `out`:
    `<suite>_vs_published.{csv,md,tex}`, and `<suite>.{md,tex}` (seed means) when it has rows.
    Everything is computed before anything is written."""
    from benchmarks.paper import load_published
    from benchmarks.suites import suite_members

    members = suite_members(suite)  # validates the suite name first
    out = Path(out)
    tolerances = dict(DEFAULT_TOLERANCES)
    if tolerance_acc is not None:
        if not (tolerance_acc >= 0 and math.isfinite(tolerance_acc)):
            raise ConfigError(f"--tolerance-acc must be a non-negative number of points, got {tolerance_acc}")
        for metric in ACCURACY_METRICS:
            tolerances[metric] = Tolerance("abs", float(tolerance_acc))
    if isinstance(rows, (str, os.PathLike)):
        rows = read_results(rows)
    elif rows is None:
        rows = suite_rows(suite, out, runs_root)
    entries = list(mapping) if isinstance(mapping, Sequence) and not isinstance(mapping, str) else load_mapping(mapping)
    in_scope = [e for e in entries if suite == "all" or set(e.suites) & set(members)]
    unmapped: dict[str, int] = {}
    if isinstance(published, pd.DataFrame):
        pub = published
    elif in_scope:
        path = _resolve_published(published)
        pub = load_published(path) if path is not None else load_published()
    else:
        pub = None
    scope = None if suite == "all" else members
    if pub is not None:
        comparison = compare(pub, entries, rows, suites=scope, tolerances=tolerances)
        scoped = scoped_published(pub, entries, scope)
        claimed = claim_rows(pub, entries)
        counts = pub.loc[claimed < 0, "paper"].value_counts()
        unmapped = {str(k): int(v) for k, v in counts.items()}
    else:
        comparison = pd.DataFrame(columns=list(COMPARISON_COLUMNS)).astype(COMPARISON_COLUMNS)
        scoped = None
    ensure_dir(out)
    files = []
    if in_scope:  # a suite without published numbers (quick) gets no comparison table
        stem = out / f"{suite}_vs_published"
        files += [
            atomic_write_text(stem.with_suffix(".csv"), comparison.to_csv(index=False, float_format="%.10g")),
            atomic_write_text(stem.with_suffix(".md"), comparison_markdown(comparison, suite, tolerances)),
            atomic_write_text(stem.with_suffix(".tex"), comparison_latex(comparison, suite)),
        ]
    if not rows.empty:
        files += write_summary_tables(suite, rows, out)
        files += write_comparison_tables(suite, rows, out)
    return TablesReport(suite, comparison, files, unmapped, rows=len(rows), published=scoped)


def write_comparison_tables(suite: str, rows: pd.DataFrame, tables_dir: str | os.PathLike) -> list[Path]:
    """`<suite>_comparisons.{csv,md}`: the suite's declared comparisons with their verdicts."""
    from benchmarks.comparisons import compare_each, comparisons_markdown
    from benchmarks.suites import suite_comparisons

    experiments = rows["experiment"].astype(str)

    def has_rows(name: str) -> bool:
        return bool(((experiments == name) | experiments.str.startswith(f"{name}--")).any())

    # a declared comparison whose rows do not exist yet (a partial suite) is left out
    declared = [c for c in suite_comparisons(suite) if has_rows(c["candidate"]) and has_rows(c["baseline"])]
    if not declared:
        return []
    found = [found for c in declared for found in compare_each(rows, c["candidate"], c["baseline"])]
    frame = pd.DataFrame([c.row() for c in found])
    stem = Path(tables_dir) / f"{suite}_comparisons"
    return [
        atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False, float_format="%.10g")),
        atomic_write_text(stem.with_suffix(".md"), comparisons_markdown(found, suite)),
    ]
