"""Comparisons with verdicts (PROTOCOL.md §3): is a method above, below, or within noise of
another at equal MACs?

A suite declares its comparisons in `suites.yaml`:

    comparisons:
      - {candidate: digits_resnet20_lc, baseline: digits_resnet20_l1}

`candidate` is an experiment, or a swept experiment whose points (`<name>--...`) form a curve.
A swept `baseline` is compared point by point (`compare_each`: one comparison per point, by
MACs): a curve against a set of static points, or against another curve's points. For each
seed, the curve is the upper envelope of its operating points selected on `val`
(the points no other point beats on val with fewer MACs), evaluated on `test` and linearly
interpolated at the baseline's MACs; more than 5% outside the curve's MACs range there is no
verdict. The
difference (candidate − baseline, in the protocol's score: accuracy, or F-score) gets a 95%
Welch interval over seeds and one verdict: above, below, or within noise. One seed on either
side gives no verdict, and neither do two protocols (refused) or two points whose MACs differ
by more than 5% when the candidate is a single point. Unequal training budgets are flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from benchmarks.errors import ConfigError
from benchmarks.protocol import check_same_protocol

LEVEL = 0.95
EQUAL_MACS = 0.05  # relative: two single points are "at equal MACs" within this
EQUAL_BUDGET = 0.05  # relative (PROTOCOL.md §2)


@dataclass
class Comparison:
    protocol: str
    candidate: str
    baseline: str
    metric: str
    baseline_macs: float
    candidate_score: float
    baseline_score: float
    difference: float
    low: float
    high: float
    seeds_candidate: int
    seeds_baseline: int
    budget_candidate: float
    budget_baseline: float
    equal_budget: bool
    verdict: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high): the Welch two-sample interval at `level`."""
    from scipy import stats

    a, b = [float(x) for x in a], [float(x) for x in b]
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / ((va**2) / (len(a) - 1) + (vb**2) / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return diff, diff - half, diff + half


def verdict(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "no verdict: one seed"
    if low > 0:
        return "above"
    if high < 0:
        return "below"
    return "within noise"


def val_front(points: pd.DataFrame) -> pd.DataFrame:
    """Operating points no other point beats on val with no more MACs (selected on val)."""
    ordered = points.sort_values(["macs", "val"], ascending=[True, False])
    keep, best = [], -math.inf
    for index, row in ordered.iterrows():
        if row["val"] > best:
            keep.append(index)
            best = row["val"]
    return ordered.loc[keep]


def envelope_at(front: pd.DataFrame, macs: float, tolerance: float = EQUAL_MACS) -> float | None:
    """The front's test score linearly interpolated at `macs`; within `tolerance` (relative)
    beyond either end, that end's score (a controller makes a dynamic model's cheapest path
    cost a little more than the static network it matches); None further out."""
    xs, ys = front["macs"].tolist(), front["test"].tolist()
    if not xs or macs < xs[0] * (1 - tolerance) or macs > xs[-1] * (1 + tolerance):
        return None
    if macs <= xs[0]:
        return ys[0]
    if macs >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if x0 <= macs <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (macs - x0) / (x1 - x0)
    return ys[-1]


def _score(rows: pd.DataFrame) -> tuple[str, pd.Series]:
    use_f1 = rows["f1"].notna().all() and not rows.empty
    return ("f1", rows["f1"].astype(float)) if use_f1 else ("accuracy", rows["accuracy"].astype(float))


def _members(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    experiments = rows["experiment"].astype(str)
    return rows[(experiments == name) | experiments.str.startswith(f"{name}--")]


def _points(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment × seed: test MACs, val score, test score, budget, protocol."""
    metric, _ = _score(rows)
    table = rows.pivot_table(index=["experiment", "seed"], columns="split", values=metric, aggfunc="first")
    macs = rows[rows["split"] == "test"].set_index(["experiment", "seed"])["macs_mean"]
    out = pd.DataFrame({"val": table.get("val"), "test": table.get("test"), "macs": macs}).dropna(subset=["test", "macs"])
    meta = rows[rows["split"] == "test"].set_index(["experiment", "seed"])
    out["budget"] = meta["budget_images"].astype(float)
    out["protocol"] = meta["protocol"].astype(str)
    if out["val"].isna().any():
        out["val"] = out["val"].fillna(out["test"])
    return out.reset_index()


def compare(rows: pd.DataFrame, candidate: str, baseline: str) -> Comparison:
    """The comparison of `candidate` (a point or a swept curve) with `baseline` on test."""
    cand_rows, base_rows = _members(rows, candidate), _members(rows, baseline)
    if cand_rows.empty or base_rows.empty:
        missing = candidate if cand_rows.empty else baseline
        raise ConfigError(f"comparison {candidate} vs {baseline}: no result rows of '{missing}'")
    metric, _ = _score(pd.concat([cand_rows, base_rows]))
    cand, base = _points(cand_rows), _points(base_rows)
    protocol = check_same_protocol({candidate: cand["protocol"].iloc[0], baseline: base["protocol"].iloc[0],
                                    **{f"{candidate} ({p})": p for p in cand["protocol"]},
                                    **{f"{baseline} ({p})": p for p in base["protocol"]}})  # fmt: skip
    base_macs = float(base["macs"].mean())
    base_scores = base.groupby("seed")["test"].mean()
    curve = cand["experiment"].nunique() > 1
    cand_scores: dict[int, float] = {}
    reason = ""
    for seed, points in cand.groupby("seed"):
        if curve:
            value = envelope_at(val_front(points), base_macs)
        else:
            close = abs(float(points["macs"].iloc[0]) - base_macs) <= EQUAL_MACS * base_macs
            value = float(points["test"].iloc[0]) if close else None
            if not close:
                reason = f"no verdict: MACs differ ({points['macs'].iloc[0]:,.0f} vs {base_macs:,.0f})"
        if value is not None:
            cand_scores[int(seed)] = value
    if curve and not cand_scores:
        reason = f"no verdict: {base_macs:,.0f} MACs lies outside the curve's MACs range"
    budgets = (float(cand["budget"].max()), float(base["budget"].max()))
    equal_budget = not any(math.isnan(b) for b in budgets) and abs(budgets[0] - budgets[1]) <= EQUAL_BUDGET * max(budgets)
    if cand_scores:
        diff, low, high = welch(list(cand_scores.values()), base_scores.tolist())
        said = reason or verdict(low, high)
    else:
        diff = low = high = math.nan
        said = reason
    return Comparison(
        protocol=protocol, candidate=candidate, baseline=baseline, metric=metric, baseline_macs=base_macs,
        candidate_score=(sum(cand_scores.values()) / len(cand_scores)) if cand_scores else math.nan,
        baseline_score=float(base_scores.mean()), difference=diff, low=low, high=high,
        seeds_candidate=len(cand_scores), seeds_baseline=int(base_scores.size),
        budget_candidate=budgets[0], budget_baseline=budgets[1], equal_budget=equal_budget, verdict=said,
    )  # fmt: skip


def compare_each(rows: pd.DataFrame, candidate: str, baseline: str) -> list[Comparison]:
    """`compare` against `baseline`, or against each of its sweep points when it is swept
    (ordered by MACs)."""
    members = _members(rows, baseline)
    names = members["experiment"].astype(str).unique().tolist()
    if len(names) <= 1:
        return [compare(rows, candidate, baseline)]
    macs = members[members["split"] == "test"].groupby("experiment")["macs_mean"].mean()
    return [compare(rows, candidate, name) for name in sorted(names, key=lambda n: (macs.get(n, math.inf), n))]


def comparisons_markdown(found: Sequence[Comparison], suite: str) -> str:
    lines = [
        f"# Suite `{suite}`: comparisons at equal MACs",
        "",
        "Candidate minus baseline on test, in the protocol's score, with a 95% Welch interval over "
        "seeds; a curve is its val-selected upper envelope interpolated at the baseline's MACs "
        "(PROTOCOL.md §3). Budgets are training images, parents included (§2).",
        "",
        "| protocol | candidate | baseline | baseline MACs | candidate | baseline | difference (95% CI) | seeds | budgets | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in found:
        interval = "–" if math.isnan(c.low) else f"{c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"
        if math.isnan(c.low) and not math.isnan(c.difference):
            interval = f"{c.difference:+.2f}"
        budgets = f"{c.budget_candidate:,.0f} / {c.budget_baseline:,.0f}" + ("" if c.equal_budget else " (unequal)")
        lines.append(
            f"| {c.protocol} | {c.candidate} | {c.baseline} | {c.baseline_macs:,.0f} | "
            f"{'–' if math.isnan(c.candidate_score) else f'{c.candidate_score:.2f}'} | {c.baseline_score:.2f} | {interval} | "
            f"{c.seeds_candidate} / {c.seeds_baseline} | {budgets} | {c.verdict} |"
        )
    return "\n".join(lines) + "\n"
