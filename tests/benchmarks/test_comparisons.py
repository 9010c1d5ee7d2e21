"""Comparisons with verdicts (PROTOCOL.md §3): Welch intervals, val-selected envelopes,
no verdict outside a curve's range or from one seed, and no comparison across protocols."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from benchmarks.comparisons import compare, compare_each, envelope_at, val_front, verdict, welch
from benchmarks.errors import ConfigError
from benchmarks.results import results_frame

P = "digits-8px-a826"


def _rows(points, protocol=P, budget=1000):
    """points: (experiment, seed, macs, val, test) -> val and test result rows."""
    rows = []
    for experiment, seed, macs, val, test in points:
        for split, score in (("val", val), ("test", test)):
            rows.append({"experiment": experiment, "model": "m", "dataset": "digits", "protocol": protocol,
                         "budget_images": budget, "split": split, "seed": seed, "accuracy": score, "macs_mean": macs})  # fmt: skip
    return results_frame(rows)


def test_welch_interval_matches_scipy():
    a, b = [91.0, 92.5, 90.8, 93.1], [89.0, 90.2, 91.1]
    diff, low, high = welch(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert math.isnan(welch([1.0], [1.0, 2.0])[1])


def test_verdicts():
    assert verdict(0.1, 2.0) == "above" and verdict(-2.0, -0.1) == "below" and verdict(-1.0, 1.0) == "within noise"
    assert verdict(math.nan, math.nan) == "no verdict: one seed"


def test_the_envelope_is_selected_on_val_and_interpolated_on_test():
    points = pd.DataFrame({"macs": [100, 200, 300, 250], "val": [90, 95, 97, 94], "test": [89, 94, 96, 99]})
    front = val_front(points)
    assert front["macs"].tolist() == [100, 200, 300]  # 250 loses on val to 200: not selected
    assert envelope_at(front, 150) == pytest.approx(91.5) and envelope_at(front, 300) == 96
    assert envelope_at(front, 94) is None and envelope_at(front, 316) is None  # > 5% beyond the ends
    # within 5% of an end (a controller's few MACs): that end's score
    assert envelope_at(front, 99) == 89 and envelope_at(front, 310) == 96


def test_a_curve_against_a_point_over_seeds():
    points = []
    for seed, shift in enumerate((0.0, 0.5, -0.4)):
        points += [("dyn--rho0.2", seed, 100, 90 + shift, 90 + shift), ("dyn--rho0.5", seed, 200, 95 + shift, 95 + shift)]
        points += [("static", seed, 150, 90 + shift, 90.0 + shift)]
    c = compare(_rows(points), "dyn", "static")
    assert c.candidate_score == pytest.approx(92.5 + (0.5 - 0.4) / 3) and c.seeds_candidate == 3
    assert c.difference == pytest.approx(2.5) and c.verdict == "above" and c.equal_budget


def test_no_verdict_outside_the_curve_from_one_seed_or_at_other_macs():
    curve = [("dyn--a", 0, 100, 90, 90), ("dyn--b", 0, 200, 95, 95)]
    assert "outside the curve's MACs range" in compare(_rows(curve + [("static", 0, 400, 96, 96)]), "dyn", "static").verdict
    assert compare(_rows(curve + [("static", 0, 150, 90, 90)]), "dyn", "static").verdict == "no verdict: one seed"
    single = [("point", 0, 100, 90, 90), ("static", 0, 300, 92, 92)]
    assert "MACs differ" in compare(_rows(single), "point", "static").verdict


def test_a_comparison_across_protocols_is_refused():
    rows = pd.concat([_rows([("dyn", 0, 100, 90, 90)]), _rows([("static", 0, 100, 91, 91)], protocol="digits-32px-051b")])
    with pytest.raises(ConfigError, match="across protocols is refused: static is measured under digits-32px-051b, dyn under digits-8px-a826"):
        compare(rows, "dyn", "static")


def test_unequal_budgets_are_flagged():
    rows = pd.concat([_rows([("dyn", 0, 100, 90, 90)], budget=1000), _rows([("static", 0, 100, 91, 91)], budget=2000)])
    assert not compare(rows, "dyn", "static").equal_budget


def test_suite_comparisons_are_declared_as_data():
    from benchmarks.suites import suite_comparisons

    assert {"candidate": "digits_resnet20_lc", "baseline": "digits_resnet20_l1"} in suite_comparisons("quick")


def test_a_swept_baseline_is_compared_point_by_point_in_order_of_macs():
    points = []
    for seed in range(3):
        points += [("dyn--lam0.5", seed, 100, 90 + seed, 90 + seed), ("dyn--lam0.9", seed, 400, 95 + seed, 95 + seed)]
        points += [("static--stages4", seed, 400, 94, 94 + seed / 10), ("static--stages2", seed, 100, 80, 80 + seed / 10)]
    found = compare_each(_rows(points), "dyn", "static")
    assert [c.baseline for c in found] == ["static--stages2", "static--stages4"]
    assert [c.verdict for c in found] == ["above", "within noise"]
    assert len(compare_each(_rows(points), "dyn", "static--stages4")) == 1
